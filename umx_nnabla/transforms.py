"""STFT, inverse STFT and magnitude with the ``torch.stft`` conventions used by Open-Unmix.

Conventions (``core_spec.reference.transforms`` is the spec): periodic Hann window of length ``n_fft``, reflect
padding of ``n_fft // 2`` on both sides when centred, one-sided spectrum, no scaling (``normalized=True``:
``1 / sqrt(n_fft)``); the inverse divides the overlap-added frames by the exact overlap-added squared window and
is cropped or zero-padded to ``length``.

Two implementations, the same numbers:

- :func:`stft` / :func:`istft` (used by the separator): NumPy arrays in and out, one real FFT per frame with
  ``scipy.fft`` in the input's precision (float32 in, complex64 out). NNabla has no complex dtype and its CPU
  extension has no FFT (``F.fft``: "FFT forward not implemented in CPU yet"); ``F.stft`` / ``F.istft`` are direct
  DFTs computed as convolutions with ``(n_fft // 2 + 1, 1, n_fft)`` kernels, O(n_fft) work per bin instead of
  O(log n_fft). Measured on 5 s of stereo at n_fft 4096 (``benchmarks/bench_nnabla.py``, a per-port script since
  replaced by ``python -m benchmarks``; micro-benchmark ``transforms``): ``F.stft`` 1.6-3.2 s vs 0.004-0.009 s here,
  ``F.istft`` 1.7-2.5 s vs 0.006-0.012 s; both meet the float32 tolerances (rel 6.9e-7 and 3.6e-7 against the float64
  spec; this path 1.7e-7 and 1.8e-7). A 30 s, 4-target separation would spend about a minute in ``F.istft`` alone, so
  the separator uses the FFT.
- :func:`stft_graph` / :func:`istft_graph`: ``nn.Variable`` graphs through ``F.stft`` / ``F.istft``
  (differentiable, for a training graph or a GPU). ``F.istft`` has no ``length`` argument, gives
  ``(nb_frames - 1) * n_hop`` samples, and accepts only ``pad_mode="constant"`` for the normal (non-backward)
  use; :func:`istft_graph` appends zero frames when more samples are needed and corrects the squared-window
  envelope they add (see there).

:func:`complex_norm` is a graph (real and imaginary parts in, magnitude out): NNabla has no ``sqrt`` function,
so the magnitude is ``pow_scalar(re^2 + im^2, 0.5)``.
"""

from __future__ import annotations

from functools import lru_cache

import nnabla as nn
import nnabla.functions as F
import numpy as np
import scipy.fft

from core_spec.reference import transforms as spec
from core_spec.reference.transforms import (
    NOLA_FLOOR,
    ShortSignalError,
    check_length,
    check_nola,
    istft_envelope,
    istft_span,
)

__all__ = [
    "ShortSignalError",
    "complex_norm",
    "hann_window",
    "istft",
    "istft_graph",
    "stft",
    "stft_graph",
]


@lru_cache(maxsize=8)
def hann_window(n_fft: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Periodic Hann window ``(n_fft,)`` (``torch.hann_window(n_fft)``): the spec's float64 window cast to
    ``dtype``; read-only (cached)."""
    window = spec.hann_window(n_fft).astype(dtype)
    window.setflags(write=False)
    return window


def _float_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)


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
        window: ``(n_fft,)`` analysis window; ``None``: the periodic Hann window in ``x``'s precision.

    Returns:
        complex ``(..., nb_bins, nb_frames)`` (complex64 for float32 input) with ``nb_bins = n_fft // 2 + 1`` and
        ``nb_frames = 1 + nb_timesteps // n_hop`` when centred.
    """
    x = np.asarray(x)
    x = x.astype(_float_dtype(x), copy=False)
    check_length(x.shape[-1], n_fft, center)
    if center:
        pad = n_fft // 2
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::n_hop, :]  # (..., T, n_fft)
    win = hann_window(n_fft, x.dtype) if window is None else np.asarray(window, dtype=x.dtype)
    spec = scipy.fft.rfft(frames * win, axis=-1, workers=-1)  # (..., T, nb_bins)
    if normalized:
        spec *= 1.0 / np.sqrt(n_fft)
    return np.swapaxes(spec, -1, -2)


def _overlap_add(frames: np.ndarray, n_hop: int) -> np.ndarray:
    """``(..., nb_frames, n_fft)`` -> ``(..., n_fft + n_hop * (nb_frames - 1))``, frame ``t`` added at
    ``t * n_hop``."""
    nb_frames, n_fft = frames.shape[-2:]
    full = n_fft + n_hop * (nb_frames - 1)
    y = np.zeros(frames.shape[:-2] + (full,), dtype=frames.dtype)
    if n_fft % n_hop == 0:  # n_fft / n_hop interleaved blocks: a few large additions instead of one per frame
        ratio = n_fft // n_hop
        blocks = frames.reshape(frames.shape[:-2] + (nb_frames, ratio, n_hop))
        for k in range(ratio):
            y[..., k * n_hop : (k + nb_frames) * n_hop] += blocks[..., k, :].reshape(frames.shape[:-2] + (-1,))
    else:
        for t in range(nb_frames):
            y[..., t * n_hop : t * n_hop + n_fft] += frames[..., t, :]
    return y


@lru_cache(maxsize=16)
def _envelope(n_fft: int, n_hop: int, nb_frames: int, window_bytes: bytes | None) -> np.ndarray:
    """:func:`core_spec.reference.transforms.istft_envelope` (float64) of the Hann window or of the float64 window
    ``window_bytes``, kept read-only per geometry."""
    window = None if window_bytes is None else np.frombuffer(window_bytes, dtype=np.float64)
    env = istft_envelope(n_fft, n_hop, nb_frames, window)
    env.setflags(write=False)
    return env


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
        window: ``(n_fft,)`` synthesis window; ``None``: the periodic Hann window in ``X``'s precision.

    Returns:
        real ``(..., length)`` (float32 for complex64 input).
    """
    X = np.asarray(X)
    if X.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} bins for n_fft={n_fft}, got {X.shape[-2]}")
    dtype = np.dtype(np.float32) if X.dtype == np.complex64 else np.dtype(np.float64)
    nb_frames = X.shape[-1]
    win = hann_window(n_fft, dtype) if window is None else np.asarray(window, dtype=dtype)
    frames = scipy.fft.irfft(np.swapaxes(X, -1, -2), n=n_fft, axis=-1, workers=-1)  # (..., T, n_fft)
    frames = frames.astype(dtype, copy=False)
    if normalized:
        frames *= np.sqrt(n_fft)
    frames *= win
    y = _overlap_add(frames, n_hop)
    start, stop, pad = istft_span(n_fft, n_hop, nb_frames, center, length)
    window64 = None if window is None else np.asarray(window, dtype=np.float64).tobytes()
    envelope = _envelope(n_fft, n_hop, nb_frames, window64)[start:stop]  # float64
    check_nola(envelope)
    y = y[..., start:stop] / envelope.astype(dtype)  # the float64 envelope rounded once to the output's dtype
    if pad:
        y = np.concatenate([y, np.zeros(y.shape[:-1] + (pad,), dtype=y.dtype)], axis=-1)
    return y


# --- graphs ---------------------------------------------------------------------------------------------------


def complex_norm(re: nn.Variable, im: nn.Variable, mono: bool = False) -> nn.Variable:
    """Magnitude ``|re + i im|`` of ``(nb_samples, nb_channels, nb_bins, nb_frames)``; ``mono`` averages the
    channel magnitudes (``umxse``): ``(nb_samples, 1, nb_bins, nb_frames)``."""
    mag = F.pow_scalar(re * re + im * im, 0.5)
    if mono:
        mag = F.mean(mag, axis=1, keepdims=True)
    return mag


def stft_graph(
    x: nn.Variable, n_fft: int = 4096, n_hop: int = 1024, center: bool = True, normalized: bool = False
) -> tuple[nn.Variable, nn.Variable]:
    """``F.stft`` with the torch conventions: ``(..., nb_timesteps)`` -> ``(re, im)``, each
    ``(..., nb_bins, nb_frames)``. Periodic Hann window only (``F.stft``'s ``"hanning"``). A direct DFT: slow at
    n_fft 4096 (see the module docstring)."""
    *lead, nb_timesteps = x.shape
    check_length(nb_timesteps, n_fft, center)
    rows = int(np.prod(lead)) if lead else 1
    re, im = F.stft(F.reshape(x, (rows, nb_timesteps)), n_fft, n_hop, n_fft, "hanning", center, "reflect")
    if normalized:
        re, im = re * (1.0 / np.sqrt(n_fft)), im * (1.0 / np.sqrt(n_fft))
    shape = (*lead, *re.shape[1:])
    return F.reshape(re, shape), F.reshape(im, shape)


def istft_graph(
    re: nn.Variable,
    im: nn.Variable,
    n_fft: int = 4096,
    n_hop: int = 1024,
    normalized: bool = False,
    length: int | None = None,
) -> nn.Variable:
    """``F.istft`` (centred frames) with ``torch.istft``'s ``length``: ``(..., nb_bins, nb_frames)`` twice ->
    ``(..., length)``.

    ``F.istft(center=True)`` returns the ``(nb_frames - 1) * n_hop`` samples after the first ``n_fft // 2`` of the
    overlap-added signal, divided by the overlap-added squared window. torch keeps up to ``n_fft // 2`` more real
    samples. To get them, ``k`` zero frames are appended: they add nothing to the signal but their squared window
    enlarges ``F.istft``'s envelope in the last ``n_fft`` samples, so those samples are multiplied by
    ``envelope(with the zero frames) / envelope(without)`` (a constant vector). Samples beyond the overlap-added
    signal are zeros, as torch pads them; a requested sample where the squared-window envelope is zero raises, as
    torch does (NOLA).
    """
    *lead, nb_bins, nb_frames = re.shape
    if nb_bins != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} bins for n_fft={n_fft}, got {nb_bins}")
    rows = int(np.prod(lead)) if lead else 1
    available = (nb_frames - 1) * n_hop + n_fft // 2  # last real sample torch can give, from the output start
    wanted = (nb_frames - 1) * n_hop if length is None else min(length, available)
    extra = max(0, -(-(wanted - (nb_frames - 1) * n_hop) // n_hop))  # zero frames to append
    re = F.reshape(re, (rows, nb_bins, nb_frames))
    im = F.reshape(im, (rows, nb_bins, nb_frames))
    if extra:
        re = F.pad(re, (0, extra))
        im = F.pad(im, (0, extra))
    y = F.istft(re, im, n_fft, n_hop, n_fft, "hanning", True, "constant")  # (rows, (T + extra - 1) * n_hop)
    if normalized:
        y = y * np.sqrt(n_fft)
    if extra:
        start = n_fft // 2
        padded_env = istft_envelope(n_fft, n_hop, nb_frames + extra)
        true_env = np.zeros_like(padded_env)
        true_env[: n_fft + n_hop * (nb_frames - 1)] = istft_envelope(n_fft, n_hop, nb_frames)
        span = slice(start, start + y.shape[-1])
        check_nola(true_env[start : start + wanted])
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(true_env[span] > NOLA_FLOOR, padded_env[span] / true_env[span], 0.0)
        y = y * nn.Variable.from_numpy_array(factor[None].astype(np.float32), need_grad=False)
    y = F.slice(y, (0, 0), (rows, wanted))
    if length is not None and length > wanted:
        y = F.pad(y, (0, length - wanted))
    return F.reshape(y, (*lead, y.shape[-1]))
