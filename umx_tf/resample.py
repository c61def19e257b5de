"""Windowed-sinc resampling by a rational factor (``julius.resample_frac`` semantics), as one strided convolution.

For ``old -> new`` (reduced by their gcd) there are ``new`` filters of ``2 * width + old`` taps
(:func:`core_spec.reference.resample.checked_kernels`, computed in float64 and cast to the signal's dtype). The
signal is padded by replicating its edge samples (``width`` left, ``width + old`` right) and correlated with the
filters at stride ``old`` by ``tf.nn.conv1d`` in channels-last layout: output channel ``i`` of step ``t`` is
output sample ``t * new + i``, so a reshape interleaves the phases. The output is cut to
``floor(new * length / old)`` samples.

julius builds its filters in float32 even for a float64 signal; pass ``kernels=`` to use other filters (e.g.
julius's own, in a float64 parity test).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from core_spec.reference.resample import checked_kernels

__all__ = ["resample_frac"]


def resample_frac(
    x,
    old_sr: int,
    new_sr: int,
    zeros: int = 24,
    rolloff: float = 0.945,
    kernels: np.ndarray | None = None,
) -> tf.Tensor:
    """Resample the last axis of ``x`` from rate ``old_sr`` to ``new_sr``.

    Args:
        x: ``(..., length)``, float32 or float64, static ``length``.
        old_sr, new_sr: the two rates (integers, reduced by their gcd).
        zeros, rolloff: julius's filter parameters.
        kernels: ``(new, 2 * width + old)`` filters to use instead of the spec's float64 ones.

    Returns:
        ``(..., floor(new * length / old))`` in ``x``'s dtype.
    """
    old, new, width, kernels = checked_kernels(old_sr, new_sr, zeros, rolloff, kernels)
    x = tf.convert_to_tensor(x)
    if kernels is None:  # equal rates
        return x

    length = x.shape[-1]
    if length is None:
        raise ValueError("resample_frac: the signal length must be static (known when the function is traced)")
    out_length = (new * length) // old
    lead = x.shape[:-1].as_list() if x.shape[:-1].is_fully_defined() else tf.shape(x)[:-1]
    rows = tf.reshape(x, [-1, length])  # (N, length)
    left = tf.repeat(rows[:, :1], width, axis=1)
    right = tf.repeat(rows[:, -1:], width + old, axis=1)
    padded = tf.concat([left, rows, right], axis=1)[:, :, None]  # (N, length + 2 width + old, 1)
    filters = tf.constant(kernels.T[:, None, :], dtype=x.dtype)  # (taps, 1 in-channel, new out-channels)
    y = tf.nn.conv1d(padded, filters, stride=old, padding="VALID")  # (N, nb_out, new)
    y = tf.reshape(y, [tf.shape(y)[0], -1])[:, :out_length]
    if isinstance(lead, list):
        return tf.reshape(y, [*lead, out_length])
    return tf.reshape(y, tf.concat([lead, [out_length]], axis=0))
