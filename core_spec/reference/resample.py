"""Windowed-sinc resampling by a rational factor, ``julius.resample_frac`` semantics (julius >= 0.2.2), float64.

For ``old -> new`` (reduced by their gcd), ``sr = min(old, new) * rolloff`` is the cut-off and
``width = ceil(zeros * old / sr)`` the half-width of every filter. Output phase ``i`` (``0 <= i < new``) uses the
kernel, over input offsets ``idx = -width .. width + old - 1``::

    t = clip((-i / new + idx / old) * sr, -zeros, zeros) * pi
    k_i = sinc(t) * cos(t / zeros / 2) ** 2,   normalised so that sum(k_i) = 1   (a constant stays constant)

The signal is padded by replicating its edge samples (``width`` on the left, ``width + old`` on the right), each
kernel is applied as a strided correlation (stride ``old``), the ``new`` phases are interleaved, and the output is
cut to ``floor(new * length / old)`` samples. Up x2: 2 phases of 53 taps; down x2: 1 phase of 104 taps.

The spec computes the kernels in float64. julius computes them in float32 (``torch.arange(...).float()``) and
casts them to the signal's dtype, so even a float64 upstream run uses float32-rounded kernels: that difference
(about 1e-8 relative) is a property of the kernels, not of the resampling. :func:`resample_frac` therefore takes
optional precomputed ``kernels`` so the parity suite can test the two separately.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["checked_kernels", "resample_frac", "resample_kernels", "resample_width"]


def resample_width(old: int, new: int, zeros: int = 24, rolloff: float = 0.945) -> int:
    """Half-width of the filters for ``old -> new`` (already reduced by their gcd)."""
    return math.ceil(zeros * old / (min(old, new) * rolloff))


@lru_cache(maxsize=16)
def _kernels(old: int, new: int, zeros: int, rolloff: float) -> np.ndarray:
    sr = min(old, new) * rolloff
    width = resample_width(old, new, zeros, rolloff)
    idx = np.arange(-width, width + old, dtype=np.float64)
    kernels = []
    for i in range(new):
        t = np.clip((-i / new + idx / old) * sr, -zeros, zeros) * np.pi
        with np.errstate(invalid="ignore", divide="ignore"):
            sinc = np.where(t == 0, 1.0, np.sin(t) / t)
        kernel = sinc * np.cos(t / zeros / 2) ** 2
        kernels.append(kernel / kernel.sum())
    out = np.stack(kernels)
    out.setflags(write=False)
    return out


def resample_kernels(old: int, new: int, zeros: int = 24, rolloff: float = 0.945) -> np.ndarray:
    """Filters ``(new, 2 * width + old)`` for ``old -> new`` (reduced by their gcd), float64, read-only."""
    g = math.gcd(old, new)
    return _kernels(old // g, new // g, zeros, float(rolloff))


def checked_kernels(
    old: int, new: int, zeros: int = 24, rolloff: float = 0.945, kernels: np.ndarray | None = None
) -> tuple[int, int, int, np.ndarray | None]:
    """The resampling ``old -> new`` that every port runs: ``(old, new, width, kernels)``.

    The rates are reduced by their gcd; ``kernels`` are the given filters (checked against the shape
    ``(new, 2 * width + old)``) or the spec's, float64; ``None`` (and width 0) when the rates are equal.

    Raises:
        ValueError: a rate that is not an integer, or kernels of the wrong shape (both named).
    """
    if not isinstance(old, (int, np.integer)) or not isinstance(new, (int, np.integer)):
        raise ValueError(f"old_sr and new_sr must be integers, got {old!r} and {new!r}")
    g = math.gcd(int(old), int(new))
    old, new = int(old) // g, int(new) // g
    if old == new:
        return old, new, 0, None
    width = resample_width(old, new, zeros, rolloff)
    if kernels is None:
        return old, new, width, resample_kernels(old, new, zeros, rolloff)
    kernels = np.asarray(kernels, dtype=np.float64)
    expected = (new, 2 * width + old)
    if kernels.shape != expected:
        raise ValueError(f"kernels for {old} -> {new} must have shape {expected}, got {kernels.shape}")
    return old, new, width, kernels


def resample_frac(
    x: np.ndarray,
    old: int,
    new: int,
    zeros: int = 24,
    rolloff: float = 0.945,
    kernels: np.ndarray | None = None,
) -> np.ndarray:
    """Resample the last axis of ``x`` from rate ``old`` to rate ``new``.

    Args:
        x: ``(..., length)``.
        old, new: the two rates (any integers; reduced by their gcd).
        kernels: filters to use instead of :func:`resample_kernels` (shape ``(new, 2 * width + old)``).

    Returns:
        ``(..., floor(new * length / old))``, float64.
    """
    x = np.asarray(x, dtype=np.float64)
    old, new, width, k = checked_kernels(old, new, zeros, rolloff, kernels)
    if k is None:
        return x
    length = x.shape[-1]
    padded = np.concatenate(
        [np.repeat(x[..., :1], width, axis=-1), x, np.repeat(x[..., -1:], width + old, axis=-1)], axis=-1
    )
    taps = k.shape[-1]
    nb_out = (padded.shape[-1] - taps) // old + 1
    windows = padded[..., np.arange(nb_out)[:, None] * old + np.arange(taps)]  # (..., nb_out, taps)
    y = windows @ k.T  # (..., nb_out, new): phase i of output step t is sample t * new + i
    y = y.reshape(x.shape[:-1] + (nb_out * new,))
    return y[..., : (new * length) // old]
