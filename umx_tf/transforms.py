"""STFT, inverse STFT and magnitude with the ``torch.stft`` conventions of Open-Unmix, in TensorFlow.

Conventions (``core_spec.reference.transforms`` is the spec):

- periodic Hann window of length ``n_fft``, computed in float64 and cast to the signal's dtype;
- reflect centring by ``n_fft // 2`` samples (``tf.pad(mode="REFLECT")``: the edge sample is not repeated, as
  torch), one-sided, unnormalised (``normalized=True`` scales by ``1 / sqrt(n_fft)``);
- framing with ``tf.signal.frame`` and ``tf.signal.rfft``; the inverse is ``tf.signal.irfft`` of every frame,
  times the window, ``tf.signal.overlap_and_add``, divided by the **exact** overlap-added squared window
  (``sum_t w[n - t n_hop]^2``, as ``torch.istft``), then cropped or zero-padded to ``length``.
  ``tf.signal.inverse_stft`` is not used: its window correction is a constant steady-state factor, wrong in the
  first and last ``n_fft - n_hop`` samples of a centred signal.

Complex spectrograms are complex tensors ``(..., nb_bins, nb_frames)`` (complex64 for float32 signals,
complex128 for float64). Signals shorter than reflect centring allows raise the spec's :class:`ShortSignalError`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from core_spec.reference import transforms as spec
from core_spec.reference.transforms import ShortSignalError, check_length, check_nola, istft_envelope, istft_span

__all__ = ["ShortSignalError", "complex_norm", "hann_window", "istft", "stft"]


def hann_window(n_fft: int, dtype: tf.DType | str = tf.float32) -> tf.Tensor:
    """Periodic Hann window ``(n_fft,)`` (``torch.hann_window(n_fft)``): the spec's float64 one, cast to ``dtype``."""
    return tf.constant(spec.hann_window(n_fft), dtype=dtype)


def _real_dtype(x: tf.Tensor) -> tf.DType:
    return x.dtype.real_dtype if x.dtype.is_complex else x.dtype


def _window(window, n_fft: int, dtype: tf.DType) -> tf.Tensor:
    if window is None:
        return hann_window(n_fft, dtype)
    window = tf.cast(window, dtype)
    if window.shape != (n_fft,):
        raise ValueError(f"window must have shape ({n_fft},), got {tuple(window.shape)}")
    return window


def stft(
    x,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    window=None,
) -> tf.Tensor:
    """Short-time Fourier transform.

    Args:
        x: real signal ``(..., nb_timesteps)``, e.g. ``(nb_samples, nb_channels, nb_timesteps)``; float32 or
            float64 (other dtypes are cast to float32).
        n_fft, n_hop: frame length and hop in samples.
        center: reflect-pad ``n_fft // 2`` samples on both sides.
        normalized: scale by ``1 / sqrt(n_fft)``.
        window: ``(n_fft,)`` analysis window; ``None`` is the periodic Hann window.

    Returns:
        complex ``(..., nb_bins, nb_frames)``, ``nb_bins = n_fft // 2 + 1``, ``nb_frames = 1 + nb_timesteps //
        n_hop`` when centred.

    Raises:
        ShortSignalError: the signal is shorter than :func:`core_spec.reference.transforms.min_length`
            (:func:`~core_spec.reference.transforms.check_length`).
    """
    x = tf.convert_to_tensor(x)
    if x.dtype not in (tf.float32, tf.float64):
        x = tf.cast(x, tf.float32)
    if x.shape[-1] is not None:  # a dynamic length is checked by the framing itself
        check_length(x.shape[-1], n_fft, center)
    if center:
        pad = n_fft // 2
        x = tf.pad(x, [[0, 0]] * (x.shape.rank - 1) + [[pad, pad]], mode="REFLECT")
    frames = tf.signal.frame(x, n_fft, n_hop, axis=-1)  # (..., nb_frames, n_fft)
    spec = tf.signal.rfft(frames * _window(window, n_fft, x.dtype), fft_length=[n_fft])  # (..., T, F)
    if normalized:
        spec = spec * tf.cast(1.0 / np.sqrt(n_fft), spec.dtype)
    return tf.linalg.matrix_transpose(spec)


def _envelope(window, n_fft: int, n_hop: int, nb_frames: int, dtype: tf.DType) -> np.ndarray | tf.Tensor:
    """Overlap-added squared window ``(n_fft + n_hop * (nb_frames - 1),)``: the spec's float64 NumPy array
    (:func:`~core_spec.reference.transforms.istft_envelope`, a constant of the graph) unless the window is a tensor."""
    if window is None or isinstance(window, np.ndarray):
        return istft_envelope(n_fft, n_hop, nb_frames, window)
    w2 = tf.square(_window(window, n_fft, dtype))
    return tf.signal.overlap_and_add(tf.tile(w2[None], [nb_frames, 1]), n_hop)


def istft(
    X,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    length: int | None = None,
    window=None,
) -> tf.Tensor:
    """Inverse STFT with ``torch.istft`` semantics (exact squared-window envelope).

    Args:
        X: complex ``(..., nb_bins, nb_frames)``; the imaginary parts of the DC and Nyquist bins are ignored.
        length: output length; ``None`` gives ``n_hop * (nb_frames - 1)`` when centred.
        window: ``(n_fft,)`` synthesis window; ``None`` is the periodic Hann window.

    Returns:
        real ``(..., length)`` (float32 for complex64, float64 for complex128).
    """
    X = tf.convert_to_tensor(X)
    if not X.dtype.is_complex:
        raise TypeError(f"istft: X must be complex, got {X.dtype.name}")
    if X.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} bins for n_fft={n_fft}, got {X.shape[-2]}")
    dtype = _real_dtype(X)
    nb_frames = X.shape[-1]
    if nb_frames is None:
        raise ValueError("istft: the number of frames must be static (known when the function is traced)")
    frames = tf.signal.irfft(tf.linalg.matrix_transpose(X), fft_length=[n_fft])  # (..., nb_frames, n_fft)
    if normalized:
        frames = frames * tf.cast(np.sqrt(n_fft), dtype)
    y = tf.signal.overlap_and_add(frames * _window(window, n_fft, dtype), n_hop)  # (..., full)
    envelope = _envelope(window, n_fft, n_hop, nb_frames, dtype)

    start, stop, pad = istft_span(n_fft, n_hop, nb_frames, center, length)
    envelope = envelope[start:stop]
    if isinstance(envelope, np.ndarray):
        check_nola(envelope)
        envelope = tf.constant(envelope, dtype=dtype)
    y = y[..., start:stop] / envelope
    if pad:
        y = tf.pad(y, [[0, 0]] * (y.shape.rank - 1) + [[0, pad]])
    return y


def complex_norm(X, mono: bool = False) -> tf.Tensor:
    """Magnitude of a complex spectrogram.

    Args:
        X: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        mono: average the channel magnitudes (``umxse``): output ``(nb_samples, 1, nb_bins, nb_frames)``.

    Returns:
        real ``(nb_samples, nb_channels or 1, nb_bins, nb_frames)``.
    """
    mag = tf.abs(tf.convert_to_tensor(X))
    if mono:
        mag = tf.reduce_mean(mag, axis=1, keepdims=True)
    return mag
