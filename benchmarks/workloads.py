"""The inference workloads every ``bench_<port>.py`` times, defined once: the input music, the seeded models, and
upstream's side of each case.

- ``umx_separator_niter0`` / ``umx_separator_niter1``: the Open-Unmix separator, umxhq shapes (4 targets, seeded
  weights), ``seconds`` of stereo music, upstream ``openunmix.model.Separator``;
- ``demucs_apply``: Demucs v2 at the pretrained size (channels 64, 265.7 M parameters, seeded weights),
  ``demucs.utils.apply_model(split=True, shifts=0)`` on the normalised track.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["demucs_config", "demucs_weights", "music", "normalised", "setup_upstream", "umx_config", "umx_weights"]


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


def normalised(wav: np.ndarray) -> np.ndarray:
    """demucs's ``separate.py`` normalisation: by the mono mixture's mean and (unbiased) standard deviation."""
    ref = wav.mean(0)
    return ((wav - ref.mean()) / ref.std(ddof=1)).astype(np.float32)


def setup_upstream(case: str, seconds: float, threads: int) -> Callable[[], np.ndarray]:
    """Upstream's side of ``case``: a call returning its output (torch with ``threads`` threads)."""
    import torch

    from parity_tests import oracle

    torch.set_num_threads(threads)
    if case.startswith("umx_separator"):
        cfg = umx_config(int(case[-1]))
        model = oracle.umx_separator(cfg, umx_weights(cfg), torch.float32)
        audio = torch.from_numpy(music(seconds)[None])

        def call() -> np.ndarray:
            with torch.no_grad():
                return model(audio).numpy()

        return call
    from demucs.utils import apply_model

    cfg = demucs_config()
    model = oracle.demucs_model(cfg, demucs_weights(cfg), torch.float32)
    wav = torch.from_numpy(normalised(music(seconds)))

    def demucs_call() -> np.ndarray:
        with torch.no_grad():
            return apply_model(model, wav, shifts=0, split=True).numpy()

    return demucs_call
