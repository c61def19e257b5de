"""The spectrogram side of HTDemucs (demucs 4.x) in TensorFlow: its STFT wrapper, complex-as-channels packing and
the input normalisation of its forward.

The spec is :mod:`core_spec.reference.htdemucs_spec` (its docstring has the framing); the functions here have its
names, order and (channel-first) layouts:

- :func:`pad1d`: reflect padding that accepts pads as long as the signal (zero-extended first);
- :func:`spec` / :func:`ispec`: ``HTDemucs._spec`` / ``_ispec``, the STFT of :mod:`umx_tf.transforms` with
  ``normalized=True``, reflect pads of ``3 hop / 2`` (plus the rest of a hop on the right), the frames
  ``[2, 2 + ceil(L / hop))`` and no Nyquist bin;
- :func:`magnitude` / :func:`mask_cac`: complex as channels, ``[c0.re, c0.im, c1.re, ...]``;
- :func:`normalise_input` / :func:`denormalise_output`: ``(x - mean) / (1e-5 + std)`` per item with the unbiased
  std computed in two passes (the mean, then the mean of the squared deviations), and ``y * std + mean``.

Every length is static (known when traced), so the functions run under ``tf.function(jit_compile=True)``. Unlike
the spec, :func:`pad1d` cannot refuse NaN inside a compiled graph (upstream fails an assertion there): NaN
propagates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from core_spec.reference.htdemucs_spec import NORM_EPS, spec_padding

from .transforms import istft, stft

__all__ = [
    "NORM_EPS",
    "denormalise_output",
    "ispec",
    "magnitude",
    "mask_cac",
    "normalise_input",
    "pad1d",
    "spec",
    "spec_padding",
]


def _pad_last(x: tf.Tensor, left: int, right: int, mode: str = "CONSTANT") -> tf.Tensor:
    return tf.pad(x, [[0, 0]] * (x.shape.rank - 1) + [[left, right]], mode=mode)


def pad1d(x: tf.Tensor, pad_left: int, pad_right: int) -> tf.Tensor:
    """Reflect padding of the last axis, ``(..., L) -> (..., pad_left + L + pad_right)``; when
    ``L <= max(pad_left, pad_right)`` the signal is zero-extended first (on the right as far as ``pad_right``
    allows, the rest on the left) and those zeros count towards the pads (demucs's ``pad1d``)."""
    length = x.shape[-1]
    if length is None or length < 1 or pad_left < 0 or pad_right < 0:
        pads = (pad_left, pad_right)
        raise ValueError(f"pad1d: needs a non-empty static signal and pads >= 0, got L={length}, pads={pads}")
    max_pad = max(pad_left, pad_right)
    if length <= max_pad:
        extra = max_pad - length + 1
        extra_right = min(pad_right, extra)
        extra_left = extra - extra_right
        x = _pad_last(x, extra_left, extra_right)
        pad_left, pad_right = pad_left - extra_left, pad_right - extra_right
    return _pad_last(x, pad_left, pad_right, "REFLECT")


def spec(x: tf.Tensor, nfft: int = 4096, hop: int = 1024, window: Any = None) -> tf.Tensor:
    """HTDemucs's spectrogram: real ``(..., L)`` -> complex ``(..., nfft // 2, ceil(L / hop))`` (no Nyquist bin).

    ``window``: ``(nfft,)``; ``None`` is the periodic Hann window in ``x``'s dtype.
    """
    if hop != nfft // 4:
        raise ValueError(f"spec: HTDemucs frames with hop = nfft // 4 = {nfft // 4}, got hop={hop}")
    nb_frames, pad_left, pad_right = spec_padding(x.shape[-1], hop)
    z = stft(pad1d(x, pad_left, pad_right), n_fft=nfft, n_hop=hop, center=True, normalized=True, window=window)
    return z[..., :-1, 2 : 2 + nb_frames]


def ispec(z: tf.Tensor, length: int, nfft: int = 4096, hop: int = 1024, window: Any = None) -> tf.Tensor:
    """The inverse of :func:`spec`: complex ``(..., nfft // 2, nb_frames)`` -> real ``(..., length)``."""
    if z.shape[-2] != nfft // 2:
        raise ValueError(f"ispec: expected {nfft // 2} bins (no Nyquist bin) for nfft={nfft}, got {z.shape[-2]}")
    lead = [[0, 0]] * (z.shape.rank - 2)
    z = tf.pad(z, lead + [[0, 1], [2, 2]])  # a zero Nyquist bin, two zero frames on either side
    pad = hop // 2 * 3
    full = hop * -(-length // hop) + 2 * pad
    x = istft(z, n_fft=nfft, n_hop=hop, center=True, normalized=True, length=full, window=window)
    return x[..., pad : pad + length]


def magnitude(z: tf.Tensor, cac: bool = True) -> tf.Tensor:
    """The frequency branch's input: complex ``(B, C, F, T)`` -> real ``(B, 2C, F, T)``, channels
    ``[c0.re, c0.im, c1.re, ...]`` (``cac``); else ``|z|``."""
    if not cac:
        return tf.abs(z)
    b, c, f, t = z.shape
    return tf.reshape(tf.stack([tf.math.real(z), tf.math.imag(z)], axis=2), [b, 2 * c, f, t])


def mask_cac(m: tf.Tensor) -> tf.Tensor:
    """The frequency decoder's output as complex spectrograms: real ``(B, S, 2C, F, T)`` with channels
    ``[c0.re, c0.im, c1.re, ...]`` -> complex ``(B, S, C, F, T)``."""
    b, s, c2, f, t = m.shape
    if c2 % 2:
        raise ValueError(f"mask_cac: the channel axis must hold (re, im) pairs, got {c2} channels")
    pairs = tf.reshape(m, [b, s, c2 // 2, 2, f, t])
    return tf.complex(pairs[:, :, :, 0], pairs[:, :, :, 1])


def normalise_input(x: tf.Tensor, stats: Sequence[Any] | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Standardise a branch's input per batch item: ``(x - mean) / (1e-5 + std)``.

    Args:
        x: ``(nb_samples, ...)``: the CaC spectrogram ``(B, 2C, F, T)`` or the mixture ``(B, C, L)``.
        stats: ``(mean, std)``, one value per item, to use instead of computing them (parity tests inject
            upstream's at the released length).

    Returns:
        ``(normalised, mean, std)``; ``mean`` and ``std`` ``(nb_samples, 1, ..., 1)``. The std is unbiased
        (``N - 1``), in two passes.
    """
    axes = list(range(1, x.shape.rank))
    shape = [-1] + [1] * (x.shape.rank - 1)
    if stats is None:
        mean = tf.reduce_mean(x, axis=axes, keepdims=True)
        n = float(np.prod(x.shape[1:]))
        std = tf.sqrt(tf.reduce_sum(tf.square(x - mean), axis=axes, keepdims=True) / (n - 1.0))
    else:
        mean, std = (tf.reshape(tf.cast(s, x.dtype), shape) for s in stats)
    return (x - mean) / (NORM_EPS + std), mean, std


def denormalise_output(y: tf.Tensor, mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
    """``y * std + mean`` for ``y (nb_samples, nb_sources, ...)``, the stats of :func:`normalise_input` broadcast
    over the sources axis (no ``1e-5`` added)."""
    return y * std[:, None] + mean[:, None]
