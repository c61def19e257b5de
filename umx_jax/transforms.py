"""STFT, inverse STFT and magnitude with the ``torch.stft`` conventions, as pure JAX functions.

Conventions (those of ``openunmix.transforms`` with ``center=True``; the spec is
``core_spec.reference.transforms``):

- periodic Hann window ``w[n] = 0.5 - 0.5 cos(2 pi n / n_fft)`` (computed in float64, cast to the signal's dtype);
- centring: reflect padding of ``n_fft // 2`` samples on both sides (the edge sample is not repeated);
- one-sided spectrum, ``X[k, t] = sum_n w[n] x[t n_hop + n] exp(-2 pi i k n / n_fft)``, no scaling
  (``normalized=True`` multiplies by ``1 / sqrt(n_fft)``);
- inverse: ``irfft`` of every frame, times the window, overlap-add, divided by the exact overlap-added squared
  window, the first ``n_fft // 2`` samples dropped when centred, cropped or zero-padded to ``length``.

Framing and overlap-add are written as reshapes when ``n_fft`` is a multiple of ``n_hop`` (every released model):
the signal is cut into hop-sized blocks and a frame is ``n_fft // n_hop`` consecutive blocks, so neither direction
gathers or scatters per frame. Other geometries use one gather (framing) and one scatter-add (overlap-add). The
squared-window envelope depends only on the shapes: it is computed once in float64 NumPy. All shapes are static,
so the functions jit (and the short-input check runs at trace time). :func:`stft_frame_major` and
:func:`istft_frame_major` are the same transforms with frames before bins, ``(..., nb_frames, nb_bins)``: the
layout the FFTs produce and consume, which the separator keeps throughout (it never transposes a spectrogram).

Short inputs: reflect centring needs ``nb_timesteps > n_fft // 2``, as ``torch.stft``; shorter signals raise
:class:`core_spec.reference.transforms.ShortSignalError`.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from core_spec.reference import transforms as spec
from core_spec.reference.transforms import (
    ShortSignalError,
    check_length,
    check_nola,
    istft_envelope,
    istft_span,
    min_length,
)

__all__ = [
    "ShortSignalError",
    "complex_norm",
    "hann_window",
    "istft",
    "istft_frame_major",
    "min_length",
    "stft",
    "stft_frame_major",
]


def hann_window(n_fft: int, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Periodic Hann window ``(n_fft,)`` (``torch.hann_window(n_fft)``): the spec's float64 one, cast."""
    return jnp.asarray(spec.hann_window(n_fft), dtype=dtype)


def _window(window: jax.Array | np.ndarray | None, n_fft: int, dtype: jnp.dtype) -> jax.Array:
    if window is None:
        return hann_window(n_fft, dtype)
    window = jnp.asarray(window, dtype=dtype)
    if window.shape != (n_fft,):
        raise ValueError(f"window must have shape ({n_fft},), got {window.shape}")
    return window


def _reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """Reflect padding of the last axis without repeating the edge sample (``torch`` / NumPy ``"reflect"``)."""
    left = jnp.flip(x[..., 1 : pad + 1], axis=-1)
    right = jnp.flip(x[..., -pad - 1 : -1], axis=-1)
    return jnp.concatenate([left, x, right], axis=-1)


def _frames(x: jax.Array, n_fft: int, n_hop: int) -> jax.Array:
    """``(..., L)`` -> ``(..., nb_frames, n_fft)`` with ``nb_frames = 1 + (L - n_fft) // n_hop``."""
    nb_frames = 1 + (x.shape[-1] - n_fft) // n_hop
    if n_fft % n_hop == 0:
        ratio = n_fft // n_hop
        nb_blocks = nb_frames - 1 + ratio
        blocks = x[..., : nb_blocks * n_hop].reshape(x.shape[:-1] + (nb_blocks, n_hop))
        # frame t is blocks t, t+1, ..., t+ratio-1
        return jnp.concatenate([blocks[..., k : k + nb_frames, :] for k in range(ratio)], axis=-1)
    idx = np.arange(nb_frames)[:, None] * n_hop + np.arange(n_fft)
    return x[..., idx]


def _overlap_add(frames: jax.Array, n_hop: int) -> jax.Array:
    """``(..., nb_frames, n_fft)`` -> ``(..., n_fft + n_hop (nb_frames - 1))``: frame ``t`` added at ``t n_hop``."""
    nb_frames, n_fft = frames.shape[-2:]
    full = n_fft + n_hop * (nb_frames - 1)
    lead = frames.shape[:-2]
    if n_fft % n_hop == 0:
        ratio = n_fft // n_hop
        blocks = frames.reshape(lead + (nb_frames, ratio, n_hop))
        pad = [(0, 0)] * len(lead)
        out = sum(
            jnp.pad(blocks[..., k, :], pad + [(k, ratio - 1 - k), (0, 0)])  # block k of frame t lands on t + k
            for k in range(ratio)
        )
        return out.reshape(lead + (full,))
    idx = np.arange(nb_frames)[:, None] * n_hop + np.arange(n_fft)
    return jnp.zeros(lead + (full,), frames.dtype).at[..., idx].add(frames)


@lru_cache(maxsize=16)
def _envelope(n_fft: int, n_hop: int, nb_frames: int, start: int, stop: int) -> np.ndarray:
    """The spec's overlap-added squared Hann window over ``[start, stop)``, float64, NOLA-checked (cached: it
    depends on the shapes only)."""
    envelope = istft_envelope(n_fft, n_hop, nb_frames)[start:stop]
    check_nola(envelope)
    envelope.setflags(write=False)
    return envelope


def stft(
    x: jax.Array,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    window: jax.Array | np.ndarray | None = None,
) -> jax.Array:
    """Short-time Fourier transform.

    Args:
        x: real signal ``(..., nb_timesteps)``, e.g. ``(nb_samples, nb_channels, nb_timesteps)``.
        n_fft, n_hop: frame length and hop.
        center: reflect-pad ``n_fft // 2`` samples on both sides first.
        normalized: scale by ``1 / sqrt(n_fft)``.
        window: ``(n_fft,)`` analysis window; ``None`` is the periodic Hann window in ``x``'s dtype.

    Returns:
        complex ``(..., nb_bins, nb_frames)``, ``nb_bins = n_fft // 2 + 1``, ``nb_frames = 1 + nb_timesteps //
        n_hop`` when centred (complex64 for float32 input, complex128 for float64).
    """
    return jnp.swapaxes(stft_frame_major(x, n_fft, n_hop, center, normalized, window), -1, -2)


def istft(
    X: jax.Array,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    length: int | None = None,
    window: jax.Array | np.ndarray | None = None,
) -> jax.Array:
    """Inverse STFT (``torch.istft`` semantics: exact squared-window envelope, ``length``).

    Args:
        X: complex ``(..., nb_bins, nb_frames)``.
        length: output length; ``None`` gives ``n_hop * (nb_frames - 1)`` when centred.
        window: ``(n_fft,)`` synthesis window; ``None`` is the periodic Hann window in ``X``'s real dtype.

    Returns:
        real ``(..., length)``.
    """
    X = jnp.asarray(X)
    if X.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} bins for n_fft={n_fft}, got {X.shape[-2]}")
    return istft_frame_major(jnp.swapaxes(X, -1, -2), n_fft, n_hop, center, normalized, length, window)


def complex_norm(X: jax.Array, mono: bool = False) -> jax.Array:
    """Magnitude of a complex spectrogram.

    Args:
        X: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        mono: average the channel magnitudes (``umxse``): output ``(nb_samples, 1, nb_bins, nb_frames)``.
    """
    mag = jnp.abs(X)
    if mono:
        mag = jnp.mean(mag, axis=1, keepdims=True)
    return mag


def stft_frame_major(
    x: jax.Array,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    window: jax.Array | np.ndarray | None = None,
) -> jax.Array:
    """:func:`stft` with frames before bins: complex ``(..., nb_frames, nb_bins)`` (no transpose)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    check_length(x.shape[-1], n_fft, center)
    if center:
        x = _reflect_pad(x, n_fft // 2)
    spec = jnp.fft.rfft(_frames(x, n_fft, n_hop) * _window(window, n_fft, x.dtype), axis=-1)
    if normalized:
        spec = spec / np.sqrt(n_fft).astype(x.dtype)
    return spec


def istft_frame_major(
    X: jax.Array,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    length: int | None = None,
    window: jax.Array | np.ndarray | None = None,
) -> jax.Array:
    """:func:`istft` of frames before bins: ``X`` complex ``(..., nb_frames, nb_bins)`` (no transpose)."""
    X = jnp.asarray(X)
    if X.shape[-1] != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} bins for n_fft={n_fft}, got {X.shape[-1]}")
    real_dtype = jnp.finfo(X.dtype).dtype  # float32 for complex64
    nb_frames = X.shape[-2]
    frames = jnp.fft.irfft(X, n=n_fft, axis=-1)  # (..., nb_frames, n_fft)
    if normalized:
        frames = frames * np.sqrt(n_fft).astype(real_dtype)
    y = _overlap_add(frames * _window(window, n_fft, real_dtype), n_hop)
    start, stop, pad = istft_span(n_fft, n_hop, nb_frames, center, length)
    if window is None:
        envelope = jnp.asarray(_envelope(n_fft, n_hop, nb_frames, start, stop), dtype=real_dtype)
    else:
        w2 = _window(window, n_fft, real_dtype) ** 2
        envelope = _overlap_add(jnp.broadcast_to(w2, (nb_frames, n_fft)), n_hop)[start:stop]
    y = y[..., start:stop] / envelope
    if pad:
        y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, pad)])
    return y
