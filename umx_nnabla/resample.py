"""The windowed-sinc resampler Demucs v2 uses (``julius.resample_frac`` semantics), as an NNabla graph.

For ``old -> new`` (reduced by their gcd) the ``new`` filters of ``2 * width + old`` taps come from
:func:`core_spec.reference.resample.checked_kernels` (built in float64, cast to float32; given kernels are checked
against that shape). The signal is padded by repeating its edge samples (``F.pad(mode="repeat")``: ``width`` on
the left, ``width + old`` on the right), the filters run as one strided ``F.convolution`` with ``new`` output
channels, the phases are interleaved by a transpose and a reshape, and the output is cut to
``floor(new * length / old)`` samples. Up x2: 2 phases of 53 taps; down x2: 1 phase of 104 taps.
"""

from __future__ import annotations

import nnabla as nn
import nnabla.functions as F
import numpy as np

from core_spec.reference.resample import checked_kernels

__all__ = ["resample_frac"]


def resample_frac(
    x: nn.Variable,
    old: int,
    new: int,
    zeros: int = 24,
    rolloff: float = 0.945,
    kernels: np.ndarray | None = None,
) -> nn.Variable:
    """Resample the last axis of ``x`` from rate ``old`` to rate ``new``.

    Args:
        x: ``(..., length)``.
        old, new: the two rates (any positive integers; reduced by their gcd).
        zeros, rolloff: julius's filter design.
        kernels: filters ``(new, 2 * width + old)`` to use instead of the spec's (e.g. julius's float32 ones).

    Returns:
        ``(..., floor(new * length / old))``.
    """
    old, new, width, k = checked_kernels(old, new, zeros, rolloff, kernels)
    if k is None:  # equal rates
        return x
    *lead, length = x.shape
    rows = int(np.prod(lead)) if lead else 1
    filters = nn.Variable.from_numpy_array(k.astype(np.float32)[:, None, :], need_grad=False)  # (new, 1, taps)
    y = F.pad(F.reshape(x, (rows, 1, length)), (width, width + old), mode="repeat")
    y = F.convolution(y, filters, stride=(old,))  # (rows, new, nb_out): phase i of output step t
    nb_out = y.shape[-1]
    y = F.reshape(F.transpose(y, (0, 2, 1)), (rows, nb_out * new))  # sample t * new + i
    out_length = (new * length) // old
    y = F.slice(y, (0, 0), (rows, out_length))
    return F.reshape(y, (*lead, out_length))
