"""Windowed-sinc resampling by a rational factor (``julius.resample_frac`` semantics), as one strided conv1d.

For ``old -> new`` (reduced by their gcd) there are ``new`` filters of ``2 * width + old`` taps
(:func:`core_spec.reference.resample.resample_kernels`, computed in float64 and cast to the signal's dtype). The
signal is padded by replicating its edge samples (``width`` left, ``width + old`` right), correlated with the
filters at stride ``old`` (one output channel per phase), the phases are interleaved and the output is cut to
``floor(new * length / old)`` samples.

julius builds its filters in float32 even for a float64 signal; pass ``kernels=`` (or set
:attr:`ResampleFrac.kernels`) to use other filters, e.g. julius's own in a float64 parity test.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_spec.reference.resample import checked_kernels

__all__ = ["ResampleFrac", "resample_frac"]


def _resample(x: Tensor, old: int, new: int, width: int, weight: Tensor) -> Tensor:
    length = x.shape[-1]
    y = F.pad(x.reshape(-1, 1, length), (width, width + old), mode="replicate")
    y = F.conv1d(y, weight, stride=old)  # (N, new, nb_out): phase i of step t is output sample t * new + i
    y = y.transpose(1, 2).reshape(x.shape[:-1] + (-1,))
    return y[..., : (new * length) // old]


def resample_frac(
    x: Tensor,
    old_sr: int,
    new_sr: int,
    zeros: int = 24,
    rolloff: float = 0.945,
    kernels: np.ndarray | None = None,
) -> Tensor:
    """Resample the last axis of ``x`` from rate ``old_sr`` to ``new_sr``.

    Args:
        x: ``(..., length)``, float32 or float64.
        old_sr, new_sr: the two rates (integers, reduced by their gcd).
        zeros, rolloff: julius's filter parameters.
        kernels: ``(new, 2 * width + old)`` filters to use instead of the spec's.

    Returns:
        ``(..., floor(new * length / old))``.
    """
    if kernels is not None:
        return ResampleFrac(old_sr, new_sr, zeros, rolloff, kernels)(x)
    return _shared(old_sr, new_sr, zeros, float(rolloff))(x)


@lru_cache(maxsize=16)
def _shared(old_sr: int, new_sr: int, zeros: int, rolloff: float) -> ResampleFrac:
    return ResampleFrac(old_sr, new_sr, zeros, rolloff)


class ResampleFrac(nn.Module):
    """Resampler from ``old_sr`` to ``new_sr``; no parameters or buffers (nothing in the state dict).

    Attributes:
        kernels: the float64 filters ``(new, taps)`` in use (the spec's unless replaced).
    """

    def __init__(
        self, old_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.945, kernels: np.ndarray | None = None
    ):
        super().__init__()
        self.old_sr, self.new_sr, self.width, spec = checked_kernels(old_sr, new_sr, zeros, rolloff, kernels)
        self.zeros, self.rolloff = zeros, rolloff
        self._set(spec)

    @property
    def kernels(self) -> np.ndarray | None:
        return self._kernels

    @kernels.setter
    def kernels(self, value: np.ndarray | None) -> None:
        """Other filters ``(new, taps)`` (checked), or ``None``: the spec's."""
        self._set(checked_kernels(self.old_sr, self.new_sr, self.zeros, self.rolloff, value)[3])

    def _set(self, kernels: np.ndarray | None) -> None:
        if kernels is not None:
            kernels = np.array(kernels, dtype=np.float64)  # our own read-only copy
            kernels.setflags(write=False)
        self._kernels = kernels
        self._weights: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def weight(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The filters as a conv1d weight ``(new, 1, taps)`` in ``dtype`` on ``device`` (cached)."""
        key = (dtype, device)
        weight = self._weights.get(key)
        if weight is None:
            weight = torch.tensor(self._kernels, dtype=dtype, device=device)[:, None, :]
            self._weights[key] = weight
        return weight

    def forward(self, x: Tensor) -> Tensor:
        """``(..., length)`` -> ``(..., floor(new_sr * length / old_sr))``."""
        if self._kernels is None:
            return x
        return _resample(x, self.old_sr, self.new_sr, self.width, self.weight(x.dtype, x.device))

    def extra_repr(self) -> str:
        return f"old_sr={self.old_sr}, new_sr={self.new_sr}, zeros={self.zeros}, rolloff={self.rolloff}"
