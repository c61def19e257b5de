"""The data of every benchmark, defined once: the input music and the seeded models at the released shapes.

- :func:`music`: the stempeg example's four stems summed and tiled to a length (the runner's points,
  ``separate``, ``chunk_snr``);
- :func:`umx_config` / :func:`umx_weights`: the Open-Unmix separator, umxhq shapes (4 targets, seeded weights);
- :func:`demucs_config` / :func:`demucs_weights`: Demucs v2 at the pretrained size (channels 64, 265.7 M
  parameters, seeded weights); :func:`normalised`: the track as demucs's ``separate.py`` normalises it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["demucs_config", "demucs_weights", "music", "normalised", "umx_config", "umx_weights"]


def music(seconds: float, rate: int = 44100) -> np.ndarray:
    """``(2, seconds * rate)`` float32: the stempeg example's four stems summed, tiled to the length."""
    import stempeg

    audio, sr = stempeg.read_stems(stempeg.example_stem_path())
    assert sr == rate
    mix = audio[1:].sum(axis=0).T  # (2, L)
    length = int(seconds * rate)
    reps = math.ceil(length / mix.shape[-1])
    return np.ascontiguousarray(np.tile(mix, (1, reps))[:, :length], dtype=np.float32)


def umx_config(niter: int) -> Any:
    """The umxhq separator preset with ``niter`` EM iterations."""
    from core_spec.configs import umx_preset

    cfg = umx_preset("umxhq")
    wiener = dataclasses.replace(cfg.separator.wiener, niter=niter)
    return dataclasses.replace(cfg, separator=dataclasses.replace(cfg.separator, wiener=wiener))


def umx_weights(cfg: Any) -> dict[str, dict[str, np.ndarray]]:
    """Seeded weights ``{target: {name: array}}`` at the preset's shapes."""
    from core_spec.seeded import random_weights

    return {t: random_weights(cfg.model, seed=100 + i) for i, t in enumerate(cfg.separator.targets)}


def demucs_config() -> Any:
    from core_spec.configs import demucs_preset

    return demucs_preset("demucs")


def demucs_weights(cfg: Any) -> dict[str, np.ndarray]:
    from core_spec.seeded import random_weights

    return random_weights(cfg, seed=0)


def normalised(wav: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """demucs's ``separate.py`` normalisation: by the mono mixture's mean and (unbiased) standard deviation plus
    ``eps`` (demucs 2.0.3: 0; demucs 4's separation: 1e-8)."""
    ref = wav.mean(0)
    return ((wav - ref.mean()) / (ref.std(ddof=1) + eps)).astype(np.float32)
