"""The canonical weight format: one safetensors file of float32 arrays plus a JSON config beside it.

``<stem>.safetensors`` holds the arrays under their upstream PyTorch state-dict names and layouts; ``<stem>.json``
holds the config (``core_spec.configs`` JSON: model kind, constructor arguments, targets/sources, sample rate,
STFT) and provenance (source file, its SHA-256). A copy of the JSON also sits in the safetensors metadata under
``"unmix_ports"``, so a lone ``.safetensors`` file still describes itself.

Layouts:

- a Demucs model, an HTDemucs model or a single UMX target (``UMXConfig``): names exactly as the upstream model's
  ``state_dict()``;
- a UMX separator (``UMXSeparatorConfig``, several targets): one file, names prefixed as in upstream's
  ``Separator.state_dict()``: ``target_models.<target>.<name>`` (e.g. ``target_models.vocals.fc1.weight``);
- a bag of HTDemucs models (``BagConfig``, demucs 4.x ``BagOfModels``, e.g. ``htdemucs_ft``): one file, names as
  upstream's ``BagOfModels.state_dict()``: ``models.<i>.<name>`` (e.g. ``models.3.encoder.0.conv.weight``); the
  JSON config is the ``BagConfig`` (each model's ``HTDemucsConfig``, the per-source ``weights`` rows, the yaml's
  ``segment``); :func:`per_model` gives each model's weights under its own names. A yaml of one model without
  weights or segment (``htdemucs``, ``htdemucs_6s``) is written as that model, not as a bag of one.

All are checked against :func:`core_spec.params.parameter_inventory` on write and on read (a bag: every model's
inventory under its ``models.<i>.`` prefix).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .configs import (
    BagConfig,
    DemucsConfig,
    HTDemucsConfig,
    UMXConfig,
    UMXSeparatorConfig,
    config_from_json,
    config_to_json,
)
from .files import atomic_write, default_file_mode, paired_paths, refuse_overwrite
from .params import check_weights

__all__ = [
    "FORMAT",
    "CanonicalModel",
    "atomic_write",
    "canonical_paths",
    "check_canonical",
    "default_file_mode",
    "join_targets",
    "load_canonical",
    "per_model",
    "per_target",
    "read_arrays",
    "save_canonical",
    "split_targets",
]

FORMAT = "unmix-ports/canonical/1"
TARGET_PREFIX = "target_models."
MODEL_PREFIX = "models."

ModelConfig = UMXConfig | UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig
CanonicalModel = tuple[dict[str, np.ndarray], ModelConfig, dict[str, Any]]


def canonical_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` for a path given with either suffix or none (other dots stay:
    ``umx.v1`` -> ``umx.v1.json``)."""
    return paired_paths(path, ".safetensors")


def split_targets(weights: Mapping[str, np.ndarray], targets: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """``target_models.<t>.<name>`` -> ``{t: {name: array}}``; unknown prefixes are an error."""
    out: dict[str, dict[str, np.ndarray]] = {t: {} for t in targets}
    for key, value in weights.items():
        if not key.startswith(TARGET_PREFIX):
            raise KeyError(f"separator weights: key {key!r} lacks the '{TARGET_PREFIX}<target>.' prefix")
        target, name = key[len(TARGET_PREFIX) :].split(".", 1)
        if target not in out:
            raise KeyError(f"separator weights: key {key!r} names target {target!r}, not one of {targets}")
        out[target][name] = value
    return out


def join_targets(per_target: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Inverse of :func:`split_targets`."""
    return {f"{TARGET_PREFIX}{t}.{k}": v for t, w in per_target.items() for k, v in w.items()}


def per_target(
    weights: Mapping[str, Any], targets: Sequence[str], source: str = "separator weights"
) -> dict[str, dict[str, Any]]:
    """A separator's weights as ``{target: {name: array}}``, from that nested form or the flat
    ``target_models.<target>.<name>`` one; the targets must be exactly ``targets`` (a ``KeyError`` names the
    missing and the unexpected ones)."""
    targets = tuple(targets)
    if weights and all(isinstance(v, Mapping) for v in weights.values()):
        missing = [t for t in targets if t not in weights]
        extra = [t for t in weights if t not in targets]
        if missing or extra:
            raise KeyError(f"{source}: targets {sorted(weights)} given, expected {list(targets)} "
                           f"(missing {missing}, unexpected {extra})")  # fmt: skip
        return {t: dict(weights[t]) for t in targets}
    return split_targets(weights, targets)


def per_model(weights: Mapping[str, Any], config: BagConfig, source: str = "bag weights") -> list[dict[str, Any]]:
    """A bag's flat weights (``models.<i>.<name>``) as one dict per model (``{name: array}``, in bag order), each
    checked against that model's inventory (:class:`core_spec.params.WeightsMismatchError`); a key without a
    ``models.<i>.`` prefix of this bag is a ``KeyError``."""
    out: list[dict[str, Any]] = [{} for _ in config.models]
    for key, value in weights.items():
        index, _, name = key[len(MODEL_PREFIX) :].partition(".") if key.startswith(MODEL_PREFIX) else ("", "", "")
        if not index.isdigit() or int(index) >= len(out) or not name:
            raise KeyError(f"{source}: key {key!r} lacks a '{MODEL_PREFIX}<i>.' prefix, i < {len(out)}")
        out[int(index)][name] = value
    return [
        check_weights(w, m, f"{source} [model {i}]") for i, (w, m) in enumerate(zip(out, config.models, strict=True))
    ]


def check_canonical(weights: Mapping[str, Any], config: Any, source: str = "canonical weights") -> dict[str, Any]:
    """Canonical weights checked against the inventory of ``config`` (every target of a separator, every model of a
    bag); flat names (``target_models.<t>.<name>`` for a separator, ``models.<i>.<name>`` for a bag). Raises
    :class:`core_spec.params.WeightsMismatchError`."""
    if isinstance(config, UMXSeparatorConfig):
        nested = per_target(weights, config.separator.targets, source)
        checked = {t: check_weights(w, config.model, f"{source} [target {t}]") for t, w in nested.items()}
        return join_targets(checked)
    return check_weights(weights, config, source)


def save_canonical(
    path: str | os.PathLike,
    weights: Mapping[str, np.ndarray],
    config: ModelConfig,
    provenance: Mapping[str, Any] | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` atomically; refuse to overwrite unless ``force``.

    Arrays are checked against the inventory and stored as float32 (exact for float16/float32 sources).
    """
    from safetensors.numpy import save_file

    st_path, json_path = canonical_paths(path)
    refuse_overwrite(st_path, json_path, force=force)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    checked = check_canonical(weights, config, "weights")
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in checked.items()}
    header = {
        "format": FORMAT,
        "config": json.loads(config_to_json(config)),
        "provenance": dict(provenance or {}),
    }
    text = json.dumps(header, indent=2, sort_keys=True)
    atomic_write(st_path, lambda tmp: save_file(arrays, tmp, metadata={"unmix_ports": text}))
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return st_path, json_path


def load_canonical(path: str | os.PathLike) -> CanonicalModel:
    """Read a canonical model: ``(weights, config, provenance)``; the weights are checked against the inventory.

    The JSON beside the safetensors file is read if present, else the copy in the safetensors metadata.
    """
    from safetensors import safe_open

    st_path, json_path = canonical_paths(path)
    if not st_path.exists():
        raise FileNotFoundError(f"canonical weights {st_path} not found")
    if json_path.exists():
        text = json_path.read_text()
    else:
        with safe_open(str(st_path), framework="numpy") as f:
            text = (f.metadata() or {}).get("unmix_ports", "")
        if not text:
            raise ValueError(f"{st_path} carries no unmix-ports config and {json_path} does not exist")
    header = json.loads(text)
    if header.get("format") != FORMAT:
        raise ValueError(f"{json_path}: format {header.get('format')!r}, expected {FORMAT!r}")
    config = config_from_json(json.dumps(header["config"]))
    weights = check_canonical(read_arrays(st_path), config, str(st_path))
    return weights, config, header.get("provenance", {})


def read_arrays(st_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a safetensors file, each read under its own ``safe_open``.

    ``safetensors.numpy.load_file`` reads the whole file into one buffer before copying the arrays out, and one
    ``safe_open`` keeps the file mapped (its pages resident) until it closes: either doubles the peak memory of
    loading (Demucs channels 64, 1013 MiB of arrays: peak 2055 MiB). Opening the mapping per array keeps the peak
    at the arrays plus one array (1170 MiB), and is no slower.
    """
    from safetensors import safe_open

    with safe_open(str(st_path), framework="numpy") as f:
        names = list(f.keys())
    arrays = {}
    for name in names:
        with safe_open(str(st_path), framework="numpy") as f:
            arrays[name] = f.get_tensor(name)
    return arrays
