"""Shared helpers of the PyTorch port's parity tests: devices, dtypes, upstream's kernels and random draws."""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import pytest

from parity_tests import oracle  # inserts the empty torchaudio module before openunmix is imported
from parity_tests.oracle import torch
from unmix.parity.adapters import DeviceUnavailable
from unmix.parity.adapters import torch as adapter
from unmix.parity.adapters.torch import TORCH_DTYPES, np_of

DTYPES = ("float64", "float32")

__all__ = [
    "DTYPES",
    "TORCH_DTYPES",
    "Replay",
    "julius_kernels",
    "np_of",
    "oracle",
    "real_clip",
    "torch",
    "torch_device",
]


def torch_device(device: str) -> torch.device:
    """The torch device of the ``--device`` option; CUDA runs with TF32 off (skips without CUDA)."""
    try:
        return adapter.torch_device(device)
    except DeviceUnavailable as e:
        pytest.skip(str(e))


@lru_cache(maxsize=4)
def julius_kernels(old: int, new: int) -> np.ndarray:
    """julius's own filters for ``old -> new`` (built in float32), as float64 ``(new, taps)``."""
    import julius

    return julius.ResampleFrac(old, new).kernel[:, 0, :].double().numpy()


def demucs_julius_kernels() -> dict[str, np.ndarray]:
    """``{"up", "down"}`` kernels of demucs's two resamplings, as julius builds them."""
    return {"up": julius_kernels(1, 2), "down": julius_kernels(2, 1)}


class Replay:
    """Draws like upstream's ``random.randint(0, max_shift)`` from a seeded ``random.Random``: with
    ``random.seed(seed)`` before an upstream call, both draw the same shifts."""

    def __init__(self, seed: int):
        self._random = random.Random(seed)

    def integers(self, low: int, high: int) -> int:
        return self._random.randint(low, high - 1)


@lru_cache(maxsize=1)
def real_clip() -> np.ndarray:
    """The stempeg example as a linear mixture: the sum of its four stems, ``(2, 268288)`` float64 at 44.1 kHz."""
    from parity_tests.real_clip import load_clip

    clip = load_clip()  # a clear error without ffmpeg
    assert clip.rate == 44100
    return np.ascontiguousarray(clip.mixture)
