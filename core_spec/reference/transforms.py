"""STFT, inverse STFT and magnitude with the ``torch.stft`` / ``torch.istft`` conventions, in float64 NumPy.

Conventions (those of ``openunmix.transforms`` with ``center=True``):

- window: periodic Hann ``w[n] = 0.5 - 0.5 cos(2 pi n / n_fft)``, ``win_length = n_fft``;
- centring: reflect padding of ``n_fft // 2`` samples on both sides (the edge sample is not repeated);
- one-sided spectrum, ``X[k, t] = sum_n w[n] x[t n_hop + n] exp(-2 pi i k n / n_fft)``, no scaling
  (``normalized=True`` multiplies by ``1 / sqrt(n_fft)``);
- inverse: inverse real FFT of every frame (imaginary parts of the DC and Nyquist bins are ignored), times the
  window, overlap-add, divided by the exact overlap-added squared window (``sum_t w[n - t n_hop]^2``), the first
  ``n_fft // 2`` samples dropped when centred, then cropped or zero-padded to ``length``.

The window is computed in float64. Upstream makes it once with ``torch.hann_window(n_fft)`` in float32 and casts
the module, so even a float64 upstream run uses a float32-rounded window (about 6e-8 from the true Hann): a
property of that window, not of the transform. ``stft``/``istft`` take an optional ``window`` so that the parity
suite tests the two separately (the fixtures carry upstream's window).

Short inputs: reflect centring needs ``nb_timesteps > n_fft // 2``; ``torch.stft`` raises below that. The spec
raises too, with a :class:`ShortSignalError` that names the length and the minimum, so every port fails the same
way instead of producing a port-specific padding.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ShortSignalError", "complex_norm", "hann_window", "istft", "min_length", "stft"]


class ShortSignalError(ValueError):
    """The signal is too short for reflect-centred framing."""


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window ``(n_fft,)``, float64 (``torch.hann_window(n_fft)``)."""
    n = np.arange(n_fft, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)


def min_length(n_fft: int, center: bool = True) -> int:
    """Shortest signal the STFT accepts: ``n_fft // 2 + 1`` when centred (reflect padding), else ``n_fft``."""
    return n_fft // 2 + 1 if center else n_fft


def _check_length(nb_timesteps: int, n_fft: int, center: bool) -> None:
    need = min_length(n_fft, center)
    if nb_timesteps < need:
        how = "reflect centring pads n_fft // 2 samples" if center else "one frame needs n_fft samples"
        raise ShortSignalError(
            f"signal of {nb_timesteps} samples is too short for n_fft={n_fft} ({how}): needs at least {need} samples"
        )


def stft(
    x: np.ndarray,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    window: np.ndarray | None = None,
) -> np.ndarray:
    """Short-time Fourier transform.

    Args:
        x: real signal ``(..., nb_timesteps)``, e.g. ``(nb_samples, nb_channels, nb_timesteps)``.
        window: ``(n_fft,)`` analysis window; ``None`` is :func:`hann_window` in float64.

    Returns:
        complex128 ``(..., nb_bins, nb_frames)`` with ``nb_bins = n_fft // 2 + 1`` and
        ``nb_frames = 1 + nb_timesteps // n_hop`` when centred.
    """
    x = np.asarray(x, dtype=np.float64)
    _check_length(x.shape[-1], n_fft, center)
    if center:
        pad = n_fft // 2
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    nb_frames = 1 + (x.shape[-1] - n_fft) // n_hop
    starts = np.arange(nb_frames) * n_hop
    frames = x[..., starts[:, None] + np.arange(n_fft)]  # (..., nb_frames, n_fft)
    window = hann_window(n_fft) if window is None else np.asarray(window, dtype=np.float64)
    spec = np.fft.rfft(frames * window, axis=-1)  # (..., nb_frames, nb_bins)
    if normalized:
        spec = spec / np.sqrt(n_fft)
    return np.swapaxes(spec, -1, -2)


def istft(
    X: np.ndarray,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    length: int | None = None,
    window: np.ndarray | None = None,
) -> np.ndarray:
    """Inverse STFT (``torch.istft`` semantics, exact squared-window envelope).

    Args:
        X: complex ``(..., nb_bins, nb_frames)``.
        length: output length; ``None`` gives ``n_hop * (nb_frames - 1)`` when centred.
        window: ``(n_fft,)`` synthesis window; ``None`` is :func:`hann_window` in float64.

    Returns:
        float64 ``(..., length)``.
    """
    X = np.asarray(X)
    if X.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} bins for n_fft={n_fft}, got {X.shape[-2]}")
    nb_frames = X.shape[-1]
    window = hann_window(n_fft) if window is None else np.asarray(window, dtype=np.float64)
    frames = np.fft.irfft(np.swapaxes(X, -1, -2), n=n_fft, axis=-1)  # (..., nb_frames, n_fft)
    if normalized:
        frames = frames * np.sqrt(n_fft)
    frames = frames * window
    full = n_fft + n_hop * (nb_frames - 1)
    y = np.zeros(X.shape[:-2] + (full,))
    envelope = np.zeros(full)
    for t in range(nb_frames):
        y[..., t * n_hop : t * n_hop + n_fft] += frames[..., t, :]
        envelope[t * n_hop : t * n_hop + n_fft] += window**2
    start = n_fft // 2 if center else 0
    end = full - n_fft // 2 if center else full
    if length is not None:
        end = start + length
    y = y[..., start : min(end, full)]
    envelope = envelope[start : min(end, full)]
    if np.any(envelope <= 1e-11):
        raise ValueError("istft: window overlap-add is zero somewhere (NOLA violated); choose n_hop <= n_fft / 2")
    y = y / envelope
    if length is not None and y.shape[-1] < length:
        y = np.concatenate([y, np.zeros(y.shape[:-1] + (length - y.shape[-1],))], axis=-1)
    return y


def complex_norm(X: np.ndarray, mono: bool = False) -> np.ndarray:
    """Magnitude of a complex spectrogram.

    Args:
        X: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        mono: average the channel magnitudes (``umxse``): output ``(nb_samples, 1, nb_bins, nb_frames)``.
    """
    mag = np.abs(X)
    if mono:
        mag = np.mean(mag, axis=1, keepdims=True)
    return mag
