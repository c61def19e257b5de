"""STFT, inverse STFT and magnitude with the ``torch.stft`` conventions of Open-Unmix.

Conventions (``core_spec.reference.transforms`` is the spec):

- periodic Hann window of length ``n_fft`` (``torch.hann_window(n_fft)``), computed in the dtype of the signal
  (upstream computes it once in float32 and casts it: pass ``window=`` to reproduce that exactly);
- reflect centring by ``n_fft // 2`` samples, one-sided, unnormalised (``normalized=True`` scales by
  ``1 / sqrt(n_fft)``);
- inverse: ``torch.istft``, which divides by the exact overlap-added squared window.

Complex spectrograms are complex tensors ``(..., nb_bins, nb_frames)`` (upstream's modules return the real view
``(..., nb_bins, nb_frames, 2)``; :func:`torch.view_as_real` converts).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core_spec.reference.transforms import ShortSignalError, check_length

__all__ = ["ISTFT", "STFT", "ComplexNorm", "ShortSignalError", "complex_norm", "hann_window", "istft", "stft"]

_WINDOWS: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def hann_window(n_fft: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Periodic Hann window ``(n_fft,)`` computed in ``dtype`` on ``device`` (cached; do not modify it)."""
    device = torch.device(device if device is not None else "cpu")
    key = (n_fft, dtype, device)
    window = _WINDOWS.get(key)
    if window is None:
        window = _WINDOWS[key] = torch.hann_window(n_fft, periodic=True, dtype=dtype, device=device)
    return window


def _window_for(window: Tensor | None, n_fft: int, like: Tensor) -> Tensor:
    real = like.real if like.is_complex() else like
    if window is None:
        return hann_window(n_fft, real.dtype, real.device)
    if window.shape != (n_fft,):
        raise ValueError(f"window must have shape ({n_fft},), got {tuple(window.shape)}")
    return window.to(dtype=real.dtype, device=real.device)


def stft(
    x: Tensor,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    window: Tensor | None = None,
) -> Tensor:
    """Short-time Fourier transform.

    Args:
        x: real signal ``(..., nb_timesteps)``, e.g. ``(nb_samples, nb_channels, nb_timesteps)``.
        n_fft, n_hop: frame length and hop in samples.
        center: reflect-pad ``n_fft // 2`` samples on both sides.
        normalized: scale by ``1 / sqrt(n_fft)``.
        window: ``(n_fft,)`` analysis window; ``None`` is the periodic Hann window in ``x``'s dtype.

    Returns:
        complex ``(..., nb_bins, nb_frames)``, ``nb_bins = n_fft // 2 + 1``, ``nb_frames = 1 + nb_timesteps //
        n_hop`` when centred.

    Raises:
        ShortSignalError: the signal is shorter than :func:`core_spec.reference.transforms.min_length`.
    """
    length = x.shape[-1]
    check_length(length, n_fft, center)
    shape = x.shape[:-1]
    spec = torch.stft(
        x.reshape(-1, length),
        n_fft=n_fft,
        hop_length=n_hop,
        window=_window_for(window, n_fft, x),
        center=center,
        normalized=normalized,
        onesided=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(shape + spec.shape[-2:])


def istft(
    X: Tensor,
    n_fft: int = 4096,
    n_hop: int = 1024,
    center: bool = True,
    normalized: bool = False,
    length: int | None = None,
    window: Tensor | None = None,
) -> Tensor:
    """Inverse STFT (``torch.istft``: exact squared-window envelope).

    Args:
        X: complex ``(..., nb_bins, nb_frames)``.
        length: output length; ``None`` gives ``n_hop * (nb_frames - 1)`` when centred.
        window: ``(n_fft,)`` synthesis window; ``None`` is the periodic Hann window in ``X``'s real dtype.

    Returns:
        real ``(..., length)``.
    """
    if X.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} bins for n_fft={n_fft}, got {X.shape[-2]}")
    shape = X.shape[:-2]
    y = torch.istft(
        X.reshape((-1,) + X.shape[-2:]),
        n_fft=n_fft,
        hop_length=n_hop,
        window=_window_for(window, n_fft, X),
        center=center,
        normalized=normalized,
        onesided=True,
        length=length,
    )
    return y.reshape(shape + y.shape[-1:])


def complex_norm(X: Tensor, mono: bool = False) -> Tensor:
    """Magnitude of a complex spectrogram.

    Args:
        X: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        mono: average the channel magnitudes (``umxse``): output ``(nb_samples, 1, nb_bins, nb_frames)``.

    Returns:
        real ``(nb_samples, nb_channels or 1, nb_bins, nb_frames)``.
    """
    mag = X.abs()
    if mono:
        mag = mag.mean(dim=1, keepdim=True)
    return mag


class STFT(nn.Module):
    """:func:`stft` as a module (no parameters; the window is computed per dtype and device)."""

    def __init__(self, n_fft: int = 4096, n_hop: int = 1024, center: bool = True, normalized: bool = False):
        super().__init__()
        self.n_fft, self.n_hop, self.center, self.normalized = n_fft, n_hop, center, normalized

    def forward(self, x: Tensor, window: Tensor | None = None) -> Tensor:
        """``(..., nb_timesteps)`` -> complex ``(..., nb_bins, nb_frames)``."""
        return stft(x, self.n_fft, self.n_hop, self.center, self.normalized, window)


class ISTFT(nn.Module):
    """:func:`istft` as a module."""

    def __init__(self, n_fft: int = 4096, n_hop: int = 1024, center: bool = True, normalized: bool = False):
        super().__init__()
        self.n_fft, self.n_hop, self.center, self.normalized = n_fft, n_hop, center, normalized

    def forward(self, X: Tensor, length: int | None = None, window: Tensor | None = None) -> Tensor:
        """complex ``(..., nb_bins, nb_frames)`` -> ``(..., length)``."""
        return istft(X, self.n_fft, self.n_hop, self.center, self.normalized, length, window)


class ComplexNorm(nn.Module):
    """:func:`complex_norm` as a module."""

    def __init__(self, mono: bool = False):
        super().__init__()
        self.mono = mono

    def forward(self, X: Tensor) -> Tensor:
        """complex ``(B, C, F, T)`` -> ``(B, C or 1, F, T)``."""
        return complex_norm(X, self.mono)
