"""The spectrogram side of HTDemucs (demucs 4.x): its STFT wrapper, complex-as-channels packing and the input
normalisation of its forward, in float64 NumPy.

``spec`` / ``ispec`` are HTDemucs's ``_spec`` / ``_ispec``: the STFT of :mod:`core_spec.reference.transforms`
with ``normalized=True`` (a factor ``1 / sqrt(n_fft)`` forward, ``sqrt(n_fft)`` inverse), a periodic Hann window of
``n_fft`` samples, reflect centring, and around it a framing that makes ``nb_frames = ceil(L / hop)``:

- the signal is first reflect-padded by ``pad = hop // 2 * 3`` on the left and ``pad + le * hop - L`` on the
  right, ``le = ceil(L / hop)`` (:func:`pad1d`; a signal too short to reflect is zero-padded first);
- the STFT of that gives ``le + 4`` frames; the top (Nyquist) bin is dropped, leaving ``n_fft // 2`` bins, and
  the frames ``[2, 2 + le)`` are kept;
- the inverse re-adds a zero top bin and two zero frames on either side, inverts to
  ``hop * ceil(L / hop) + 2 * pad`` samples and keeps ``[pad, pad + L)``.

Upstream requires ``hop == n_fft // 4`` in ``_spec`` (the model's ``hop_length``). Its window is
``torch.hann_window`` in float32 cast to the input's dtype; as in :mod:`~core_spec.reference.transforms`, the
window here is float64 unless one is passed (the parity suite passes upstream's).

Complex as channels (``cac=True``, every released model): the complex spectrogram ``(B, C, F, T)`` enters the
network as the real ``(B, 2C, F, T)`` with channels ``[ch0.re, ch0.im, ch1.re, ch1.im, ...]``
(:func:`magnitude`); the frequency decoder's output ``(B, S, 2C, F, T)`` is read back the same way as a complex
``(B, S, C, F, T)`` (:func:`mask_cac`); the mixture's spectrogram is not used.

Input normalisation: each branch's input is standardised per batch item over all its other axes with torch's
``std``, which is the unbiased (``N - 1``) estimate: ``(x - mean) / (1e-5 + std)``; the branch's output is
de-normalised with ``y * std + mean`` (no ``1e-5`` there).
"""

from __future__ import annotations

import math

import numpy as np

from core_spec.reference.transforms import istft, stft

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

# added to the standard deviation when normalising the input (not when de-normalising)
NORM_EPS = 1e-5


def pad1d(x: np.ndarray, pad_left: int, pad_right: int) -> np.ndarray:
    """Reflect padding of the last axis that accepts pads as long as the signal (demucs's ``pad1d``, reflect mode).

    A reflect pad must be shorter than the signal. When ``L <= max(pad_left, pad_right)`` the signal is first
    zero-padded by ``extra = max(pad_left, pad_right) - L + 1`` samples, on the right as far as ``pad_right``
    allows and the rest on the left, and those zeros count towards the pads; the reflection then runs over the
    zero-padded signal. The original samples stay at ``[pad_left, pad_left + L)``.

    Args:
        x: float ``(..., L)``, ``L >= 1``.

    Returns:
        ``(..., pad_left + L + pad_right)``.

    Raises:
        ValueError: an empty signal or negative pads, or NaN in ``x`` (upstream then fails its own check that the
        middle of the result equals the input, with a bare ``AssertionError``).
    """
    x = np.asarray(x)
    length = x.shape[-1]
    if length < 1 or pad_left < 0 or pad_right < 0:
        raise ValueError(
            f"pad1d: needs a non-empty signal and pads >= 0, got L={length}, pads=({pad_left}, {pad_right})"
        )
    if np.isnan(x).any():
        raise ValueError("pad1d: the signal holds NaN (upstream's pad1d fails its assertion on it)")
    lead = [(0, 0)] * (x.ndim - 1)
    max_pad = max(pad_left, pad_right)
    if length <= max_pad:
        extra = max_pad - length + 1
        extra_right = min(pad_right, extra)
        extra_left = extra - extra_right
        x = np.pad(x, lead + [(extra_left, extra_right)], mode="constant")
        pad_left, pad_right = pad_left - extra_left, pad_right - extra_right
    return np.pad(x, lead + [(pad_left, pad_right)], mode="reflect")


def spec_padding(length: int, hop: int) -> tuple[int, int, int]:
    """The framing of :func:`spec` for a signal of ``length`` samples.

    Returns:
        ``(nb_frames, pad_left, pad_right)``: ``nb_frames = ceil(length / hop)``, ``pad_left = hop // 2 * 3``,
        ``pad_right = pad_left + nb_frames * hop - length``.
    """
    nb_frames = math.ceil(length / hop)
    pad = hop // 2 * 3
    return nb_frames, pad, pad + nb_frames * hop - length


def spec(x: np.ndarray, nfft: int = 4096, hop: int = 1024, window: np.ndarray | None = None) -> np.ndarray:
    """HTDemucs's spectrogram (``HTDemucs._spec``).

    Args:
        x: real ``(..., L)``, e.g. the mixture ``(nb_samples, nb_channels, L)``.
        nfft: FFT size (the model's ``nfft``); ``hop`` must be ``nfft // 4`` as upstream asserts.
        window: ``(nfft,)`` analysis window; ``None`` is the float64 periodic Hann window.

    Returns:
        complex128 ``(..., nfft // 2, ceil(L / hop))``: bins ``0 .. nfft/2 - 1`` (no Nyquist bin).
    """
    if hop != nfft // 4:
        raise ValueError(f"spec: HTDemucs frames with hop = nfft // 4 = {nfft // 4}, got hop={hop}")
    x = np.asarray(x, dtype=np.float64)
    nb_frames, pad_left, pad_right = spec_padding(x.shape[-1], hop)
    z = stft(pad1d(x, pad_left, pad_right), n_fft=nfft, n_hop=hop, center=True, normalized=True, window=window)
    assert z.shape[-1] == nb_frames + 4, (z.shape, nb_frames)
    return z[..., :-1, 2 : 2 + nb_frames]


def ispec(
    z: np.ndarray, length: int, nfft: int = 4096, hop: int = 1024, window: np.ndarray | None = None
) -> np.ndarray:
    """HTDemucs's inverse spectrogram (``HTDemucs._ispec``), the inverse of :func:`spec`.

    Args:
        z: complex ``(..., nfft // 2, nb_frames)``, as :func:`spec` returns (any ``nb_frames``).
        length: output length ``L``.
        window: ``(nfft,)`` synthesis window; ``None`` is the float64 periodic Hann window.

    Returns:
        float64 ``(..., L)``.
    """
    z = np.asarray(z)
    if z.shape[-2] != nfft // 2:
        raise ValueError(f"ispec: expected {nfft // 2} bins (no Nyquist bin) for nfft={nfft}, got {z.shape[-2]}")
    lead = [(0, 0)] * (z.ndim - 2)
    z = np.pad(z, lead + [(0, 1), (2, 2)])  # a zero Nyquist bin, two zero frames on either side
    pad = hop // 2 * 3
    full = hop * math.ceil(length / hop) + 2 * pad
    x = istft(z, n_fft=nfft, n_hop=hop, center=True, normalized=True, length=full, window=window)
    return x[..., pad : pad + length]


def magnitude(z: np.ndarray, cac: bool = True) -> np.ndarray:
    """The frequency branch's input (``HTDemucs._magnitude``).

    Args:
        z: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        cac: complex as channels; ``False`` gives ``|z|``.

    Returns:
        float64 ``(nb_samples, 2 * nb_channels, nb_bins, nb_frames)``, channels ``[c0.re, c0.im, c1.re, ...]``
        (``cac``); else ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
    """
    z = np.asarray(z)
    if not cac:
        return np.abs(z)
    B, C, F, T = z.shape
    return np.stack([z.real, z.imag], axis=2).reshape(B, 2 * C, F, T).astype(np.float64)


def mask_cac(m: np.ndarray) -> np.ndarray:
    """The frequency decoder's output read as complex spectrograms (``HTDemucs._mask`` with ``cac=True``; the
    inverse of :func:`magnitude` per source).

    Args:
        m: real ``(nb_samples, nb_sources, 2 * nb_channels, nb_bins, nb_frames)``, channels
            ``[c0.re, c0.im, c1.re, ...]``.

    Returns:
        complex128 ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``.
    """
    m = np.asarray(m, dtype=np.float64)
    B, S, C2, F, T = m.shape
    if C2 % 2:
        raise ValueError(f"mask_cac: the channel axis must hold (re, im) pairs, got {C2} channels")
    pairs = m.reshape(B, S, C2 // 2, 2, F, T)
    return pairs[:, :, :, 0] + 1j * pairs[:, :, :, 1]


def normalise_input(
    x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise a branch's input per batch item, as HTDemucs's forward does.

    ``mean`` and ``std`` run over every axis but the first; ``std`` is the unbiased estimate (``N - 1``, torch's
    default); the result is ``(x - mean) / (1e-5 + std)``.

    Args:
        x: float ``(nb_samples, ...)``: the CaC spectrogram ``(B, 2C, F, T)`` or the mixture ``(B, C, L)``.
        stats: ``(mean, std)`` to use instead of computing them (parity tests inject upstream's: torch's float64
            ``std`` is not correctly rounded on long inputs, see :func:`core_spec.reference.htdemucs.htdemucs`).

    Returns:
        ``(normalised, mean, std)``: ``normalised`` shaped like ``x``; ``mean`` and ``std``
        ``(nb_samples, 1, ..., 1)`` (as many axes as ``x``), for :func:`denormalise_output`.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(1, x.ndim))
    if stats is None:
        mean = np.mean(x, axis=axes, keepdims=True)
        std = np.std(x, axis=axes, keepdims=True, ddof=1)
    else:
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mean, std = (np.asarray(s, dtype=np.float64).reshape(shape) for s in stats)
    return (x - mean) / (NORM_EPS + std), mean, std


def denormalise_output(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Undo :func:`normalise_input` on a branch's output, which has a sources axis after the batch.

    Args:
        y: ``(nb_samples, nb_sources, ...)``, one axis more than the input the stats came from.
        mean, std: ``(nb_samples, 1, ..., 1)`` from :func:`normalise_input`.

    Returns:
        ``y * std + mean`` with the stats broadcast over the sources axis (no ``1e-5`` added to ``std``).
    """
    mean, std = np.asarray(mean)[:, None], np.asarray(std)[:, None]
    return np.asarray(y, dtype=np.float64) * std + mean
