"""The position and frequency embeddings of HTDemucs (demucs 4.x), in float64 NumPy.

Three additive embeddings and the 1x1 channel resamplers around the cross-transformer:

- :func:`create_sin_embedding`: the 1-D sinusoidal embedding of the time branch's tokens, shape
  ``(length, 1, dim)`` (time, batch, channel). Channel ``i < dim/2`` is ``cos(p / max_period ** (i / (dim/2 - 1)))``
  and channel ``dim/2 + i`` the ``sin`` of the same phase, ``p = shift + position``: cos first, then sin, not
  interleaved, and the divisor of the exponent is ``dim/2 - 1``. ``shift`` is 0 at evaluation.
- :func:`create_2d_sin_embedding`: the 2-D sinusoidal embedding of the frequency branch's tokens, shape
  ``(1, d_model, height, width)``. With ``d = d_model / 2`` and ``div_k = exp(-k ln(max_period) / d)`` for even
  ``k < d``: channels ``[0:d:2]`` are ``sin(w div)``, ``[1:d:2]`` ``cos(w div)`` (the width/time position ``w``,
  constant over the height), ``[d::2]`` ``sin(h div)`` and ``[d+1::2]`` ``cos(h div)`` (the height/frequency
  position ``h``, constant over the width). ``d_model`` must be a multiple of 4.
- :func:`scaled_embedding`: the frequency embedding (``ScaledEmbedding``), rows ``0 .. nb_freqs-1`` of the
  stored table times ``scale`` (10 in every released model). The table is stored divided by ``scale`` at
  initialisation; the checkpoint holds that stored table.
- :func:`channel_conv1x1`: the ``channel_upsampler`` / ``channel_downsampler`` (and ``_t``) 1x1 ``Conv1d``.

Precision. Upstream builds both sinusoidal embeddings in **float32 even when the model runs in float64**:
``create_2d_sin_embedding`` allocates ``torch.zeros`` and ``torch.arange(0.0, ...)`` in torch's default dtype
(float32) and only moves them to the device; ``create_sin_embedding`` divides an integer ``arange`` by an
integer, which gives the default dtype (float32), and then by ``max_period ** that`` (float32). They are cast to
the model's dtype when added. With ``dtype=np.float32`` the functions here follow that computation, each
operation rounded to float32 where upstream rounds (each transcendental evaluated in float64 and rounded
once, i.e. correctly rounded); the default ``np.float64`` is the exact formula in float64, which upstream gives
only under ``torch.set_default_dtype(torch.float64)``.

The float32 option does NOT reproduce upstream's float32 bits: torch's CPU float32 ``pow``/``sin``/``cos``
(vectorised, about 1 ulp, CPU-capability dependent) differ from correctly rounded values by an ulp here and there,
and an ulp of the 1-D period is multiplied by positions up to ``length``. Measured against torch 2.13 (AVX-512
CPU) at the released sizes: max abs 1.2e-4 (1-D, 1344 x 512) and 1.5e-5 (2-D, 512 x 8 x 336), about as far as the
float64 formula is (1.0e-4 / 2.3e-5). Parity tests against a float64 model run should inject upstream's own
embedding, as they inject its window.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["channel_conv1x1", "create_2d_sin_embedding", "create_sin_embedding", "scaled_embedding"]


def _as_float_dtype(dtype: np.dtype | type | str) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _f32(x: np.ndarray | float) -> np.ndarray:
    """Round (float64) values to float32."""
    return np.asarray(x, dtype=np.float64).astype(np.float32)


def create_sin_embedding(
    length: int, dim: int, shift: int = 0, max_period: float = 10000, dtype: np.dtype | type | str = np.float64
) -> np.ndarray:
    """The 1-D sinusoidal embedding of the time tokens (module docstring), ``(length, 1, dim)``.

    ``dtype=np.float32`` computes as upstream does by default (float32 throughout); the result has ``dtype``.

    Raises:
        ValueError: ``dim`` odd or less than 4 (the exponent divides by ``dim/2 - 1``), or a bad ``dtype``.
    """
    dt = _as_float_dtype(dtype)
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"create_sin_embedding: dim must be even and >= 4, got {dim}")
    half = dim // 2
    pos = (shift + np.arange(length, dtype=np.int64)).reshape(-1, 1, 1)
    adim = np.arange(half, dtype=np.int64).reshape(1, 1, -1)
    if dt == np.float32:
        exponent = _f32(adim / (half - 1))  # int / int: one float32 division, correctly rounded
        period = _f32(float(max_period) ** exponent.astype(np.float64))
        phase = _f32(pos.astype(np.float32).astype(np.float64) / period.astype(np.float64))
        p64 = phase.astype(np.float64)
        return np.concatenate([_f32(np.cos(p64)), _f32(np.sin(p64))], axis=-1)
    phase = pos / (float(max_period) ** (adim / (half - 1)))
    return np.concatenate([np.cos(phase), np.sin(phase)], axis=-1)


def create_2d_sin_embedding(
    d_model: int, height: int, width: int, max_period: float = 10000, dtype: np.dtype | type | str = np.float64
) -> np.ndarray:
    """The 2-D sinusoidal embedding of the frequency tokens (module docstring), ``(1, d_model, height, width)``.

    ``dtype=np.float32`` computes as upstream does by default (float32 throughout); the result has ``dtype``.

    Raises:
        ValueError: ``d_model`` not a multiple of 4, or a bad ``dtype``.
    """
    dt = _as_float_dtype(dtype)
    if d_model % 4 != 0:
        raise ValueError(f"create_2d_sin_embedding: d_model must be a multiple of 4, got {d_model}")
    d = d_model // 2
    k = np.arange(0, d, 2, dtype=np.float64)
    factor = -(math.log(max_period) / d)
    pos_w = np.arange(width, dtype=np.float64)[:, None]
    pos_h = np.arange(height, dtype=np.float64)[:, None]
    if dt == np.float32:
        # the float64 scalar factor is rounded to float32 before the float32 product, then exp in float32
        div = _f32(np.exp(_f32(k * float(np.float32(factor))).astype(np.float64))).astype(np.float64)
        arg_w = _f32(pos_w * div).astype(np.float64)  # (width, d/2)
        arg_h = _f32(pos_h * div).astype(np.float64)  # (height, d/2)
        sin_w, cos_w, sin_h, cos_h = (
            _f32(f(a)) for a, f in ((arg_w, np.sin), (arg_w, np.cos), (arg_h, np.sin), (arg_h, np.cos))
        )
    else:
        div = np.exp(k * factor)
        sin_w, cos_w = np.sin(pos_w * div), np.cos(pos_w * div)
        sin_h, cos_h = np.sin(pos_h * div), np.cos(pos_h * div)
    pe = np.zeros((d_model, height, width), dtype=dt)
    pe[0:d:2] = sin_w.T[:, None, :]
    pe[1:d:2] = cos_w.T[:, None, :]
    pe[d::2] = sin_h.T[:, :, None]
    pe[d + 1 :: 2] = cos_h.T[:, :, None]
    return pe[None]


def scaled_embedding(weight: np.ndarray, scale: float, nb_freqs: int) -> np.ndarray:
    """``ScaledEmbedding``'s forward on the frequency indices ``0 .. nb_freqs-1``: ``weight[:nb_freqs] * scale``.

    Args:
        weight: the stored table ``(num_embeddings, dim)`` (``embedding.weight`` in the checkpoint).
        scale: the module's ``scale`` (10 in the released models).
        nb_freqs: the number of frequency rows used (the first encoder's output height).

    Returns:
        ``(nb_freqs, dim)``, in ``weight``'s float dtype. The model adds ``0.2 * out.T[None, :, :, None]`` to the
        first frequency encoder's output ``(B, dim, nb_freqs, T)``.

    Raises:
        ValueError: ``nb_freqs`` out of ``[0, num_embeddings]`` (upstream's embedding lookup fails there too).
    """
    w = np.asarray(weight)
    if w.ndim != 2 or not 0 <= nb_freqs <= w.shape[0]:
        raise ValueError(f"scaled_embedding: need a 2-D table with >= {nb_freqs} rows, got shape {w.shape}")
    return w[:nb_freqs] * w.dtype.type(scale)


def channel_conv1x1(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A 1x1 ``Conv1d`` over the channel axis 1 (the channel up/down samplers): ``y[b, o, ...] = sum_i W[o, i]
    x[b, i, ...] + bias[o]``.

    The frequency branch's ``(B, C, F, T)`` is flattened to ``(B, C, F*T)`` upstream; a 1x1 convolution does not
    mix positions, so any trailing axes are accepted here unflattened.

    Args:
        x: ``(B, C_in, ...)``.
        weight: ``(C_out, C_in)`` or the checkpoint's ``(C_out, C_in, 1)``.
        bias: ``(C_out,)`` or ``None``.
    """
    w = np.asarray(weight)
    if w.ndim == 3:
        if w.shape[2] != 1:
            raise ValueError(f"channel_conv1x1: kernel size must be 1, got weight shape {w.shape}")
        w = w[:, :, 0]
    x = np.asarray(x)
    if x.ndim < 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"channel_conv1x1: x {x.shape} and weight {w.shape} do not match on the channel axis")
    y = np.moveaxis(np.tensordot(w, x, axes=([1], [1])), 0, 1)
    if bias is not None:
        y = y + np.asarray(bias).reshape((1, -1) + (1,) * (x.ndim - 2))
    return y
