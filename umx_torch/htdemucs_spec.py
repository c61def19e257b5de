"""The spectrogram side of HTDemucs (demucs 4.x) in PyTorch: its STFT wrapper, complex as channels, and the input
normalisation of its forward.

The spec is :mod:`core_spec.reference.htdemucs_spec` (its docstring has the framing rules). In short:

- :func:`spec` reflect-pads the signal by ``hop // 2 * 3`` on the left and up to ``ceil(L / hop)`` hops plus that
  on the right (:func:`pad1d`, :func:`core_spec.reference.htdemucs_spec.spec_padding`), takes the normalized STFT
  of :mod:`umx_torch.transforms` (periodic Hann window in the signal's dtype unless one is passed), drops the
  Nyquist bin and keeps the frames ``[2, 2 + ceil(L / hop))``; :func:`ispec` undoes it;
- :func:`magnitude` packs a complex ``(B, C, F, T)`` as the real ``(B, 2C, F, T)`` with channels
  ``[c0.re, c0.im, c1.re, ...]``; :func:`mask_cac` reads the decoder's ``(B, S, 2C, F, T)`` back as complex;
- :func:`normalise_input` standardises per batch item with the unbiased std, computed in two passes (the mean,
  then the mean of squared deviations) so that float64 agrees with the spec to round-off (torch's own float64
  ``std`` is 1e-11 off on long inputs); :func:`denormalise_output` undoes it on the output (no epsilon there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

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


def pad1d(x: Tensor, pad_left: int, pad_right: int) -> Tensor:
    """Reflect padding of the last axis that accepts pads as long as the signal (demucs's ``pad1d``): a signal of
    ``L <= max(pads)`` samples is first zero-padded by ``max(pads) - L + 1`` (on the right as far as ``pad_right``
    allows, the rest on the left), and those zeros count towards the pads.

    Args:
        x: ``(..., L)``, ``L >= 1``.

    Returns:
        ``(..., pad_left + L + pad_right)``.

    Raises:
        ValueError: an empty signal, negative pads, or NaN in ``x``.
    """
    length = x.shape[-1]
    if length < 1 or pad_left < 0 or pad_right < 0:
        raise ValueError(
            f"pad1d: needs a non-empty signal and pads >= 0, got L={length}, pads=({pad_left}, {pad_right})"
        )
    if torch.isnan(x).any():
        raise ValueError("pad1d: the signal holds NaN (upstream's pad1d fails its assertion on it)")
    shape = x.shape[:-1]
    x = x.reshape(1, -1, length)  # F.pad's reflect mode takes (N, C, L)
    max_pad = max(pad_left, pad_right)
    if length <= max_pad:
        extra = max_pad - length + 1
        extra_right = min(pad_right, extra)
        extra_left = extra - extra_right
        x = F.pad(x, (extra_left, extra_right))
        pad_left, pad_right = pad_left - extra_left, pad_right - extra_right
    x = F.pad(x, (pad_left, pad_right), mode="reflect")
    return x.reshape(*shape, x.shape[-1])


def spec(x: Tensor, nfft: int = 4096, hop: int = 1024, window: Tensor | None = None) -> Tensor:
    """HTDemucs's spectrogram (``HTDemucs._spec``).

    Args:
        x: real ``(..., L)``.
        nfft: FFT size; ``hop`` must be ``nfft // 4``.
        window: ``(nfft,)``; ``None`` is the periodic Hann window in ``x``'s dtype.

    Returns:
        complex ``(..., nfft // 2, ceil(L / hop))`` (no Nyquist bin).
    """
    if hop != nfft // 4:
        raise ValueError(f"spec: HTDemucs frames with hop = nfft // 4 = {nfft // 4}, got hop={hop}")
    nb_frames, pad_left, pad_right = spec_padding(x.shape[-1], hop)
    z = stft(pad1d(x, pad_left, pad_right), n_fft=nfft, n_hop=hop, center=True, normalized=True, window=window)
    return z[..., :-1, 2 : 2 + nb_frames]


def ispec(z: Tensor, length: int, nfft: int = 4096, hop: int = 1024, window: Tensor | None = None) -> Tensor:
    """HTDemucs's inverse spectrogram (``HTDemucs._ispec``), the inverse of :func:`spec`.

    Args:
        z: complex ``(..., nfft // 2, nb_frames)``.
        length: output length ``L``.
        window: ``(nfft,)``; ``None`` is the periodic Hann window in ``z``'s real dtype.

    Returns:
        real ``(..., L)``.
    """
    if z.shape[-2] != nfft // 2:
        raise ValueError(f"ispec: expected {nfft // 2} bins (no Nyquist bin) for nfft={nfft}, got {z.shape[-2]}")
    z = F.pad(z, (2, 2, 0, 1))  # two zero frames on either side, a zero Nyquist bin
    pad = hop // 2 * 3
    full = hop * math.ceil(length / hop) + 2 * pad
    x = istft(z, n_fft=nfft, n_hop=hop, center=True, normalized=True, length=full, window=window)
    return x[..., pad : pad + length]


def magnitude(z: Tensor, cac: bool = True) -> Tensor:
    """The frequency branch's input (``HTDemucs._magnitude``).

    Args:
        z: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        cac: complex as channels; ``False`` gives ``|z|``.

    Returns:
        real ``(nb_samples, 2 * nb_channels, nb_bins, nb_frames)``, channels ``[c0.re, c0.im, c1.re, ...]``
        (``cac``); else ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
    """
    if not cac:
        return z.abs()
    B, C, Fr, T = z.shape
    return torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(B, 2 * C, Fr, T)


def mask_cac(m: Tensor) -> Tensor:
    """The frequency decoder's output read as complex spectrograms (``HTDemucs._mask`` with ``cac=True``).

    Args:
        m: real ``(nb_samples, nb_sources, 2 * nb_channels, nb_bins, nb_frames)``, channels
            ``[c0.re, c0.im, c1.re, ...]``.

    Returns:
        complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``.
    """
    B, S, C2, Fr, T = m.shape
    if C2 % 2:
        raise ValueError(f"mask_cac: the channel axis must hold (re, im) pairs, got {C2} channels")
    pairs = m.reshape(B, S, C2 // 2, 2, Fr, T).permute(0, 1, 2, 4, 5, 3)
    return torch.view_as_complex(pairs.contiguous())


def normalise_input(x: Tensor, stats: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Standardise a branch's input per batch item: ``(x - mean) / (1e-5 + std)``, ``std`` unbiased (``N - 1``).

    Args:
        x: ``(nb_samples, ...)``: the CaC spectrogram ``(B, 2C, F, T)`` or the mixture ``(B, C, L)``.
        stats: ``(mean, std)``, one value per item (any shape with ``B`` elements), to use instead of computing
            them (the parity tests inject upstream's at the released length).

    Returns:
        ``(normalised, mean, std)``; ``mean`` and ``std`` ``(nb_samples, 1, ..., 1)``.
    """
    dims = tuple(range(1, x.dim()))
    if stats is None:
        mean = x.mean(dim=dims, keepdim=True)
        count = math.prod(x.shape[1:])
        std = ((x - mean).square().sum(dim=dims, keepdim=True) / (count - 1)).sqrt()  # two passes
    else:
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mean, std = (torch.as_tensor(s).to(dtype=x.dtype, device=x.device).reshape(shape) for s in stats)
    return (x - mean) / (NORM_EPS + std), mean, std


def denormalise_output(y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Undo :func:`normalise_input` on a branch's output ``(nb_samples, nb_sources, ...)`` (one axis more than the
    input): ``y * std + mean``, the stats broadcast over the sources axis."""
    return y * std[:, None] + mean[:, None]
