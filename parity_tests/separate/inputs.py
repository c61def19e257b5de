"""The inputs of the ``unmix-separate`` tests, made on the fly by the upstream code (main environment only).

- :func:`write_clip`: the stempeg example's mixture (the sum of its four stems, about 6 s, 44.1 kHz stereo) as a
  32-bit float WAV file, whole or an excerpt;
- :func:`write_umxhq_folder`: an Open-Unmix model folder of hub-style files (``<target>-<hash>.pth``), each
  ``openunmix.model.OpenUnmix(...).state_dict()`` at the umxhq shapes (8.9 M parameters a target) with seeded
  weights, saved by ``torch.save`` (:mod:`parity_tests.convert.checkpoints`);
- :func:`write_umx_cli_folder`: the model folder openunmix's own ``umx`` command loads (for the upstream-command
  comparisons);
- :func:`write_demucs_package`: ``demucs.utils.save_model`` of a small seeded Demucs v2 (:data:`DEMUCS`);
- :func:`convert`: ``unmix-convert`` (the command's ``main``) of either, to a canonical file.

Also runs as a script, for the NNabla environment's tests (which cannot run torch nor decode the stem file)::

    .venv/bin/python -m parity_tests.separate.inputs OUT_FOLDER
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import DemucsConfig, umx_preset

__all__ = [
    "DEMUCS",
    "UMX_SEEDS",
    "convert",
    "write_clip",
    "write_demucs_package",
    "write_umx_cli_folder",
    "write_umxhq_folder",
]

# Demucs v2 at small channel counts, 2-s segments so that the 6-s clip is split into overlapping chunks
DEMUCS = DemucsConfig(channels=4, depth=4, segment_length=2 * 44100)
UMX_SEEDS = {"vocals": 11, "drums": 12, "bass": 13, "other": 14}


def write_clip(path: Path, seconds: float | None = None, offset: float = 0.0) -> Path:
    """The stempeg clip's linear mixture (``[offset, offset + seconds)`` seconds) as a float WAV file."""
    import soundfile as sf

    from parity_tests import real_clip

    clip = real_clip.load_clip()
    start = round(offset * clip.rate)
    stop = None if seconds is None else start + round(seconds * clip.rate)
    sf.write(str(path), clip.mixture[:, start:stop].T.astype(np.float32), clip.rate, subtype="FLOAT")
    return path


def write_umxhq_folder(folder: Path) -> Path:
    """Hub-style files ``<target>-<hash>.pth`` written by ``torch.save`` of upstream ``OpenUnmix`` models."""
    from parity_tests.convert.checkpoints import save, umx_state

    folder.mkdir(parents=True, exist_ok=True)
    model = umx_preset("umxhq").model
    for target, seed in UMX_SEEDS.items():
        save(umx_state(model, seed), folder / f"{target}-{seed:08x}.pth", "zip")
    return folder


def write_umx_cli_folder(folder: Path, config: Any, weights: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """The model folder openunmix's ``umx --model FOLDER`` loads: ``separator.json`` (``nfft``, ``nhop``,
    ``sample_rate``, ``nb_channels``), ``<target>.json`` (``args``: ``nfft``, ``nb_channels``, ``hidden_size``) and
    ``<target>.pth`` (``torch.save`` of the state dict) for ``weights`` ``{target: canonical arrays}``."""
    from parity_tests import oracle

    folder.mkdir(parents=True, exist_ok=True)
    sep, model = config.separator, config.model
    for target in sep.targets:
        oracle.torch.save(oracle.to_torch_state(weights[target]), folder / f"{target}.pth")
        args = {"nfft": sep.stft.n_fft, "nb_channels": model.nb_channels, "hidden_size": model.hidden_size}
        (folder / f"{target}.json").write_text(json.dumps({"args": args}))
    encoder = {"nfft": sep.stft.n_fft, "nhop": sep.stft.n_hop, "sample_rate": sep.sample_rate,
               "nb_channels": model.nb_channels}  # fmt: skip
    (folder / "separator.json").write_text(json.dumps(encoder))
    return folder


def write_demucs_package(path: Path, config: DemucsConfig = DEMUCS) -> Path:
    """``demucs.utils.save_model`` of a seeded Demucs (the layout of demucs's own training output)."""
    from parity_tests.convert.checkpoints import write_demucs_package as write

    write(path, dataclasses.replace(config), seed=3)
    return path


def convert(source: Path, out: Path, preset: str | None = None) -> Path:
    """``unmix-convert SOURCE --out OUT [--model PRESET]``; returns ``OUT.safetensors``."""
    from unmix.convert_cli import main

    argv = [str(source), "--out", str(out), "-q", *(["--model", preset] if preset else [])]
    if main(argv) != 0:
        raise RuntimeError(f"unmix-convert {' '.join(argv)} failed")
    return out.with_name(out.name + ".safetensors")


def main(argv: list[str]) -> int:
    """Write ``clip.wav``, ``umxhq/`` (upstream folder), ``umxhq.safetensors`` and ``demucs.th`` into a folder."""
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    write_clip(out / "clip.wav")
    convert(write_umxhq_folder(out / "umxhq"), out / "umxhq", "umxhq")
    write_demucs_package(out / "demucs.th")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
