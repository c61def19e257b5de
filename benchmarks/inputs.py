"""The inputs of a run, written once into a folder that every worker reads: the same arrays for every
implementation, in both environments (the NNabla one cannot decode the stem file, nor draw the weights with the
same NumPy).

Folder layout (``folder`` is a temporary directory of the driver)::

    audio/umx_<seconds>.npy      (2, seconds * 44100) float32: the stempeg example's stems summed, tiled
    audio/demucs_<seconds>.npy   the same, normalised as demucs's separate.py does (also htdemucs_*, with
                                 demucs 4's 1e-8 added to the standard deviation)
    weights/<key>.npz            canonical weights ("<target>/<name>" keys for a separator, "models.<i>.<name>"
                                 for a bag); key: the kind (UMX, Demucs v2) or kind_model (HTDemucs)
    batches/<point>.npz          a training point's seeded batch
    outputs/<point>.npy          upstream's output of an inference point (written by its worker)
    outputs/<point>.json         upstream's first training loss (written by its worker)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import models
from benchmarks.plan import Point, Sizes

__all__ = ["Files", "files", "load_weights", "prepare", "read_reference", "write_reference"]


class Files:
    """The paths of one point's inputs (and upstream's output) in a run's folder."""

    def __init__(self, folder: str | Path, point: Point):
        folder = Path(folder)
        self.folder = folder
        if point.kind == "train":
            self.input = folder / "batches" / f"{point.name}.npz"
            key = f"train_{point.model}"
        else:
            self.input = folder / "audio" / f"{point.model}_{point.seconds:g}.npy"
            key = f"{point.kind}_{point.model}" if point.htdemucs else point.kind
        self.weights = folder / "weights" / f"{key}.npz"
        self.output = folder / "outputs" / f"{point.name}.npy"
        self.loss = folder / "outputs" / f"{point.name}.json"


def files(folder: str | Path, point: Point) -> Files:
    return Files(folder, point)


def _save_weights(path: Path, weights: Mapping[str, Any]) -> None:
    flat: dict[str, np.ndarray] = {}
    for key, value in weights.items():
        if isinstance(value, Mapping):  # a separator: one network per target
            flat.update({f"{key}/{name}": np.asarray(v) for name, v in value.items()})
        else:
            flat[key] = np.asarray(value)
    np.savez(path, **flat)


def load_weights(path: str | Path) -> dict[str, Any]:
    """The canonical weights :func:`prepare` wrote (nested again for a separator)."""
    out: dict[str, Any] = {}
    with np.load(path) as data:
        for key in data.files:
            if "/" in key:
                target, name = key.split("/", 1)
                out.setdefault(target, {})[name] = data[key]
            else:
                out[key] = data[key]
    return out


def prepare(folder: str | Path, points: Iterable[Point], sizes: Sizes) -> None:
    """Write the audio, weights and batches of ``points`` into ``folder`` (main environment: decodes the stem
    file with stempeg)."""
    from benchmarks.workloads import music, normalised
    from core_spec.reference.htdemucs_apply import SEPARATE_EPS

    points = list(points)
    for sub in ("audio", "weights", "batches", "outputs"):
        (Path(folder) / sub).mkdir(parents=True, exist_ok=True)
    lengths = [p.seconds for p in points if p.kind != "train"]
    track = music(max(lengths)) if lengths else None  # music(s) is its first s seconds: decoded once
    eps = {"demucs": 0.0, "htdemucs": SEPARATE_EPS, "htdemucs_ft": SEPARATE_EPS}
    for point in points:
        f = files(folder, point)
        cfg = models.config(point, sizes)
        if not f.weights.exists():
            _save_weights(f.weights, models.weights(point, cfg))
        if f.input.exists():
            continue
        if point.kind == "train":
            np.savez(f.input, **models.train_batch(point, cfg))
        else:
            audio = np.ascontiguousarray(track[:, : point.nb_timesteps])
            np.save(f.input, normalised(audio, eps[point.model]) if point.model in eps else audio)


def write_reference(f: Files, output: Any) -> None:
    """Upstream's result of a point: its output array, or its first training loss (a float)."""
    if isinstance(output, float):
        f.loss.write_text(json.dumps({"loss": output}))
    else:
        np.save(f.output, output)


def read_reference(f: Files, train: bool) -> Any:
    """What :func:`write_reference` wrote, or ``None`` where upstream did not run (or failed)."""
    if train:
        return json.loads(f.loss.read_text())["loss"] if f.loss.exists() else None
    return np.load(f.output) if f.output.exists() else None
