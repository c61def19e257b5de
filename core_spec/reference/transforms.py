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

from functools import lru_cache

import numpy as np

__all__ = [
    "NOLA_FLOOR",
    "ShortSignalError",
    "check_length",
    "check_nola",
    "complex_norm",
    "hann_window",
    "istft",
    "istft_envelope",
    "istft_span",
    "min_length",
    "stft",
]

# the overlap-added squared window must exceed this everywhere it divides (torch.istft's NOLA check)
NOLA_FLOOR = 1e-11


class ShortSignalError(ValueError):
    """The signal is too short for reflect-centred framing."""


@lru_cache(maxsize=8)
def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window ``(n_fft,)``, float64 (``torch.hann_window(n_fft)``); read-only (cached)."""
    n = np.arange(n_fft, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
    window.setflags(write=False)
    return window


def min_length(n_fft: int, center: bool = True) -> int:
    """Shortest signal the STFT accepts: ``n_fft // 2 + 1`` when centred (reflect padding), else ``n_fft``."""
    return n_fft // 2 + 1 if center else n_fft


def check_length(nb_timesteps: int, n_fft: int, center: bool = True) -> None:
    """Raise :class:`ShortSignalError` (naming the length and the minimum) for a signal the STFT cannot frame."""
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
    check_length(x.shape[-1], n_fft, center)
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
    for t in range(nb_frames):  # overlap-add
        y[..., t * n_hop : t * n_hop + n_fft] += frames[..., t, :]
    start, stop, pad = istft_span(n_fft, n_hop, nb_frames, center, length)
    envelope = istft_envelope(n_fft, n_hop, nb_frames, window)[start:stop]
    check_nola(envelope)
    y = y[..., start:stop] / envelope
    return np.concatenate([y, np.zeros(y.shape[:-1] + (pad,))], axis=-1) if pad else y


def istft_span(
    n_fft: int, n_hop: int, nb_frames: int, center: bool = True, length: int | None = None
) -> tuple[int, int, int]:
    """Where the inverse STFT's output lies in the overlap-add of its frames.

    The overlap-add of ``nb_frames`` frames has ``n_fft + n_hop * (nb_frames - 1)`` samples. The output is its
    samples ``[start, stop)`` (``n_fft // 2`` dropped on both sides when centred; ``length`` samples from
    ``start`` when given), followed by ``pad`` zeros when ``length`` asks for more than the frames cover.

    Returns:
        ``(start, stop, pad)``.
    """
    full = n_fft + n_hop * (nb_frames - 1)
    start = n_fft // 2 if center else 0
    end = full - n_fft // 2 if center else full
    if length is not None:
        end = start + length
    stop = min(end, full)
    return start, stop, max(0, end - stop)


def istft_envelope(n_fft: int, n_hop: int, nb_frames: int, window: np.ndarray | None = None) -> np.ndarray:
    """The overlap-added squared window ``sum_t w[n - t n_hop]^2``, float64 ``(n_fft + n_hop (nb_frames - 1),)``:
    what the inverse STFT divides by (``window``: ``None`` is :func:`hann_window`; then the result is cached and
    read-only)."""
    if window is None:
        return _hann_envelope(n_fft, n_hop, nb_frames)
    return _envelope(np.asarray(window, dtype=np.float64), n_hop, nb_frames)


def _envelope(window: np.ndarray, n_hop: int, nb_frames: int) -> np.ndarray:
    n_fft = window.shape[-1]
    envelope = np.zeros(n_fft + n_hop * (nb_frames - 1))
    for t in range(nb_frames):
        envelope[t * n_hop : t * n_hop + n_fft] += window**2
    return envelope


@lru_cache(maxsize=32)
def _hann_envelope(n_fft: int, n_hop: int, nb_frames: int) -> np.ndarray:
    envelope = _envelope(hann_window(n_fft), n_hop, nb_frames)
    envelope.setflags(write=False)
    return envelope


def check_nola(envelope: np.ndarray) -> None:
    """Raise ``ValueError`` where the envelope an inverse STFT divides by is (nearly) zero (NOLA violated)."""
    if np.any(np.asarray(envelope) <= NOLA_FLOOR):
        raise ValueError("istft: window overlap-add is zero somewhere (NOLA violated); choose n_hop <= n_fft / 2")


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
