"""The spectrogram side of HTDemucs (demucs 4.x) in the NNabla port: its STFT wrapper, complex-as-channels packing and
the input normalisation of its forward, on NumPy arrays around the network's graph.

The spec is :mod:`core_spec.reference.htdemucs_spec` (its docstring has the framing); the functions here have its
names, order and (channel-first) layouts:

- :func:`pad1d`: reflect padding that accepts pads as long as the signal (zero-extended first);
- :func:`spec` / :func:`ispec`: ``HTDemucs._spec`` / ``_ispec``, the FFT STFT of :mod:`umx_nnabla.transforms` with
  ``normalized=True``, reflect pads of ``3 hop / 2`` (plus the rest of a hop on the right), the frames
  ``[2, 2 + ceil(L / hop))`` and no Nyquist bin;
- :func:`magnitude` / :func:`mask_cac`: complex as channels, ``[c0.re, c0.im, c1.re, ...]``;
- :func:`normalise_input` / :func:`denormalise_output`: ``(x - mean) / (1e-5 + std)`` per item with the unbiased
  std computed in two passes, and ``y * std + mean``.

Why NumPy: NNabla has no complex dtype, its CPU extension no FFT, and ``F.stft`` / ``F.istft`` are direct DFTs
(seconds per call at ``nfft`` 4096, :mod:`umx_nnabla.transforms`). The network's graph
(:class:`umx_nnabla.htdemucs.HTDemucs`) starts at the normalised complex-as-channels spectrogram and the normalised
waveform and ends before the de-normalisation; these functions run on either side of it, in the arrays' precision
(float32 in the port). For training, :func:`ispec_graph` is the differentiable inverse as an NNabla graph (a
real DFT as a matrix product and an overlap-add by slices), used only at short lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import nnabla as nn
import nnabla.functions as F
import numpy as np

from core_spec.reference.htdemucs_spec import NORM_EPS, spec_padding
from core_spec.reference.transforms import istft_envelope

from .layers import reshape
from .transforms import hann_window, istft, stft

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
    "ispec_graph",
]


def _float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def pad1d(x: np.ndarray, pad_left: int, pad_right: int) -> np.ndarray:
    """Reflect padding of the last axis, ``(..., L) -> (..., pad_left + L + pad_right)``; when
    ``L <= max(pad_left, pad_right)`` the signal is zero-extended first (on the right as far as ``pad_right``
    allows, the rest on the left) and those zeros count towards the pads (demucs's ``pad1d``).

    Raises:
        ValueError: an empty signal or a negative pad; a NaN in the signal (upstream's assertion fails there).
    """
    x = np.asarray(x)
    length = x.shape[-1]
    if length < 1 or pad_left < 0 or pad_right < 0:
        raise ValueError(f"pad1d: needs a non-empty signal and pads >= 0, got L={length}, pads={(pad_left, pad_right)}")
    if np.isnan(x).any():
        raise ValueError("pad1d: the signal holds NaN (upstream's pad1d fails its assertion there)")
    lead = [(0, 0)] * (x.ndim - 1)
    max_pad = max(pad_left, pad_right)
    if length <= max_pad:
        extra = max_pad - length + 1
        extra_right = min(pad_right, extra)
        extra_left = extra - extra_right
        x = np.pad(x, lead + [(extra_left, extra_right)])
        pad_left, pad_right = pad_left - extra_left, pad_right - extra_right
    return np.pad(x, lead + [(pad_left, pad_right)], mode="reflect")


def spec(x: np.ndarray, nfft: int = 4096, hop: int = 1024, window: np.ndarray | None = None) -> np.ndarray:
    """HTDemucs's spectrogram: real ``(..., L)`` -> complex ``(..., nfft // 2, ceil(L / hop))`` (no Nyquist bin),
    complex64 for float32 input.

    ``window``: ``(nfft,)``; ``None`` is the periodic Hann window in ``x``'s precision.
    """
    if hop != nfft // 4:
        raise ValueError(f"spec: HTDemucs frames with hop = nfft // 4 = {nfft // 4}, got hop={hop}")
    x = _float(x)
    nb_frames, pad_left, pad_right = spec_padding(x.shape[-1], hop)
    z = stft(pad1d(x, pad_left, pad_right), n_fft=nfft, n_hop=hop, center=True, normalized=True, window=window)
    return z[..., :-1, 2 : 2 + nb_frames]


def ispec(
    z: np.ndarray, length: int, nfft: int = 4096, hop: int = 1024, window: np.ndarray | None = None
) -> np.ndarray:
    """The inverse of :func:`spec`: complex ``(..., nfft // 2, nb_frames)`` -> real ``(..., length)``."""
    z = np.asarray(z)
    if z.shape[-2] != nfft // 2:
        raise ValueError(f"ispec: expected {nfft // 2} bins (no Nyquist bin) for nfft={nfft}, got {z.shape[-2]}")
    lead = [(0, 0)] * (z.ndim - 2)
    z = np.pad(z, lead + [(0, 1), (2, 2)])  # a zero Nyquist bin, two zero frames on either side
    pad = hop // 2 * 3
    full = hop * -(-length // hop) + 2 * pad
    x = istft(z, n_fft=nfft, n_hop=hop, center=True, normalized=True, length=full, window=window)
    return x[..., pad : pad + length]


def magnitude(z: np.ndarray, cac: bool = True) -> np.ndarray:
    """The frequency branch's input: complex ``(B, C, F, T)`` -> real ``(B, 2C, F, T)``, channels
    ``[c0.re, c0.im, c1.re, ...]`` (``cac``); else ``|z|``."""
    z = np.asarray(z)
    if not cac:
        return np.abs(z)
    b, c, f, t = z.shape
    return np.stack([z.real, z.imag], axis=2).reshape(b, 2 * c, f, t)


def mask_cac(m: np.ndarray) -> np.ndarray:
    """The frequency decoder's output as complex spectrograms: real ``(B, S, 2C, F, T)`` with channels
    ``[c0.re, c0.im, c1.re, ...]`` -> complex ``(B, S, C, F, T)`` (complex64 for float32)."""
    m = _float(m)
    b, s, c2, f, t = m.shape
    if c2 % 2:
        raise ValueError(f"mask_cac: the channel axis must hold (re, im) pairs, got {c2} channels")
    pairs = m.reshape(b, s, c2 // 2, 2, f, t)
    out = np.empty(pairs.shape[:3] + (f, t), dtype=np.complex64 if m.dtype == np.float32 else np.complex128)
    out.real, out.imag = pairs[:, :, :, 0], pairs[:, :, :, 1]
    return out


def normalise_input(
    x: np.ndarray, stats: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise a branch's input per batch item: ``(x - mean) / (1e-5 + std)``.

    Args:
        x: ``(nb_samples, ...)``: the CaC spectrogram ``(B, 2C, F, T)`` or the mixture ``(B, C, L)``.
        stats: ``(mean, std)``, one value per item, to use instead of computing them (parity tests inject
            upstream's at the released length).

    Returns:
        ``(normalised, mean, std)`` in ``x``'s precision; ``mean`` and ``std`` ``(nb_samples, 1, ..., 1)``. The
        std is unbiased (``N - 1``), in two passes (the sums in float64, rounded once).
    """
    x = _float(x)
    axes = tuple(range(1, x.ndim))
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    if stats is None:
        x64 = x.astype(np.float64)
        mean64 = np.mean(x64, axis=axes, keepdims=True)
        std64 = np.std(x64, axis=axes, keepdims=True, ddof=1)
        mean, std = mean64.astype(x.dtype), std64.astype(x.dtype)
    else:
        mean, std = (np.asarray(s, dtype=x.dtype).reshape(shape) for s in stats)
    return (x - mean) / (x.dtype.type(NORM_EPS) + std), mean, std


def denormalise_output(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``y * std + mean`` for ``y (nb_samples, nb_sources, ...)``, the stats of :func:`normalise_input` broadcast
    over the sources axis (no ``1e-5`` added)."""
    return y * std[:, None] + mean[:, None]


# --- NNabla extra: the inverse as a graph (training) -------------------------------------------------------------


@lru_cache(maxsize=4)
def _irdft_basis(nfft: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` ``(nfft // 2, nfft)`` float32: a frame ``sum_k re_k c_k cos(2 pi k n / N) - im_k c_k sin(...)``
    of the inverse real DFT of the bins ``0 .. nfft/2 - 1`` (``c_0 = 1``, ``c_k = 2`` else; the Nyquist bin is zero),
    times ``sqrt(nfft) / nfft`` (``normalized=True``) and the periodic Hann window."""
    k = np.arange(nfft // 2)[:, None]
    n = np.arange(nfft)[None, :]
    coef = np.where(k == 0, 1.0, 2.0) / np.sqrt(nfft)
    window = hann_window(nfft, np.float64)[None, :]
    phase = 2 * np.pi * ((k * n) % nfft) / nfft
    return (coef * np.cos(phase) * window).astype(np.float32), (-coef * np.sin(phase) * window).astype(np.float32)


def ispec_graph(m: nn.Variable, length: int, nfft: int = 4096, hop: int = 1024) -> nn.Variable:
    """:func:`ispec` of :func:`mask_cac` as a differentiable graph: real ``(N, 2C, F, T)`` complex-as-channels
    spectrograms (``F = nfft // 2``) -> ``(N, C, length)`` waveforms (periodic Hann window).

    The frames are one matrix product with the windowed inverse-DFT basis; the overlap-add sums the ``nfft / hop``
    blocks of each frame into place (``hop = nfft / 4``); the squared-window envelope is a constant.
    """
    n, c2, f, t = m.shape
    if f != nfft // 2 or c2 % 2 or nfft % hop:
        raise ValueError(f"ispec_graph: expected (N, 2C, {nfft // 2}, T) with hop dividing nfft, got {m.shape}")
    c = c2 // 2
    cos, sin = _irdft_basis(nfft)
    pairs = reshape(m, (n, c, 2, f, t))
    re = reshape(F.slice(pairs, (0, 0, 0, 0, 0), (n, c, 1, f, t)), (n * c, f, t))
    im = reshape(F.slice(pairs, (0, 0, 1, 0, 0), (n, c, 2, f, t)), (n * c, f, t))
    re, im = F.transpose(re, (0, 2, 1)), F.transpose(im, (0, 2, 1))  # (N C, T, F)
    frames = F.affine(re, nn.Variable.from_numpy_array(cos), base_axis=2) + F.affine(
        im, nn.Variable.from_numpy_array(sin), base_axis=2
    )  # (N C, T, nfft)
    frames = F.pad(frames, (2, 2, 0, 0))  # two zero frames on either side, as ispec
    nb_frames = t + 4
    ratio = nfft // hop
    blocks = reshape(frames, (n * c, nb_frames, ratio, hop))
    total = nb_frames + ratio - 1
    y = None
    for j in range(ratio):
        block = F.slice(blocks, (0, 0, j, 0), (n * c, nb_frames, j + 1, hop))  # frame t's block j at t + j
        block = F.pad(reshape(block, (n * c, nb_frames, hop)), (j, ratio - 1 - j, 0, 0))
        y = block if y is None else y + block
    y = reshape(y, (n * c, total * hop))  # the uncentred signal; centring removes nfft // 2 on the left
    pad = hop // 2 * 3
    full = hop * -(-length // hop) + 2 * pad
    env = istft_envelope(nfft, hop, nb_frames, None)  # float64, the whole overlap-added span
    start = nfft // 2 + pad
    inv = (1.0 / env[start : start + length]).astype(np.float32)
    if start + length > total * hop or full > total * hop:
        raise ValueError(f"ispec_graph: {t} frames are too few for {length} samples")
    y = F.slice(y, (0, start), (n * c, start + length)) * nn.Variable.from_numpy_array(inv[None, :])
    return reshape(y, (n, c, length))
