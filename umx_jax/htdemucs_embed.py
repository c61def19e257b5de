"""The position and frequency embeddings of HTDemucs (demucs 4.x) and its 1x1 channel resamplers, in JAX / Flax NNX.

The spec is :mod:`core_spec.reference.htdemucs_embed` (its docstring has the formulas):

- :func:`create_sin_embedding`: the time tokens' 1-D embedding ``(length, 1, dim)``, cos then sin (not interleaved),
  exponent divisor ``dim/2 - 1``;
- :func:`create_2d_sin_embedding`: the frequency tokens' 2-D embedding, here **channels-last**
  ``(1, height, width, d_model)`` (the spec's ``(1, d_model, height, width)`` moved), interleaved sin / cos of the
  width position in the first half of the channels, of the height position in the second;
- :func:`scaled_embedding` / :class:`ScaledEmbedding`: ``freq_emb``, rows ``0 .. nb_freqs-1`` of the stored table
  times ``scale``;
- :func:`channel_conv1x1`: ``channel_upsampler`` / ``channel_downsampler`` (and ``_t``), a 1x1 ``Conv1d`` as an
  ``nnx.Conv`` on channels-last tokens.

Both sinusoidal embeddings are computed in the dtype asked for (the model's): float32 as upstream does by default,
float64 as upstream does under ``torch.set_default_dtype(torch.float64)`` (the spec's float64 formula). JAX's float32
``sin`` / ``cos`` / ``pow`` are not torch's bit for bit; the float32 rows are judged by SNR against upstream's own
float32 error.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "ScaledEmbedding",
    "channel_conv1x1",
    "create_2d_sin_embedding",
    "create_sin_embedding",
    "scaled_embedding",
    "torch_uniform",
]

# PyTorch's default init of a Linear / Conv weight (kaiming uniform, a = sqrt 5): uniform in +-1/sqrt(fan_in)
torch_uniform = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def create_sin_embedding(
    length: int, dim: int, shift: int = 0, max_period: float = 10000, dtype: Any = jnp.float32
) -> jax.Array:
    """The 1-D sinusoidal embedding of the time tokens, ``(length, 1, dim)``: channel ``i < dim/2`` is
    ``cos(p / max_period ** (i / (dim/2 - 1)))``, channel ``dim/2 + i`` the ``sin`` of the same phase,
    ``p = shift + position``; computed in ``dtype``."""
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"create_sin_embedding: dim must be even and >= 4, got {dim}")
    half = dim // 2
    pos = (shift + jnp.arange(length, dtype=dtype)).reshape(-1, 1, 1)
    adim = jnp.arange(half, dtype=dtype).reshape(1, 1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


def create_2d_sin_embedding(
    d_model: int, height: int, width: int, max_period: float = 10000, dtype: Any = jnp.float32
) -> jax.Array:
    """The 2-D sinusoidal embedding of the frequency tokens, channels-last ``(1, height, width, d_model)``.

    With ``d = d_model / 2`` and ``div_k = exp(-k ln(max_period) / d)`` (even ``k < d``): channels ``[0:d:2]`` are
    ``sin(w div)``, ``[1:d:2]`` ``cos(w div)`` (``w`` the width / time position), ``[d::2]`` ``sin(h div)`` and
    ``[d+1::2]`` ``cos(h div)`` (``h`` the height / frequency position).
    """
    if d_model % 4 != 0:
        raise ValueError(f"create_2d_sin_embedding: d_model must be a multiple of 4, got {d_model}")
    d = d_model // 2
    div = jnp.exp(jnp.arange(0, d, 2, dtype=dtype) * -(math.log(max_period) / d))  # (d/2,)
    arg_w = jnp.arange(width, dtype=dtype)[:, None] * div  # (width, d/2)
    arg_h = jnp.arange(height, dtype=dtype)[:, None] * div  # (height, d/2)
    # interleave: (..., d/2, 2) -> (..., d) gives [sin, cos, sin, cos, ...]
    pe_w = jnp.stack([jnp.sin(arg_w), jnp.cos(arg_w)], axis=-1).reshape(width, d)
    pe_h = jnp.stack([jnp.sin(arg_h), jnp.cos(arg_h)], axis=-1).reshape(height, d)
    pe_w = jnp.broadcast_to(pe_w[None, :, :], (height, width, d))
    pe_h = jnp.broadcast_to(pe_h[:, None, :], (height, width, d))
    return jnp.concatenate([pe_w, pe_h], axis=-1)[None]


def scaled_embedding(weight: jax.Array, scale: float, nb_freqs: int) -> jax.Array:
    """``ScaledEmbedding``'s forward on the frequency indices ``0 .. nb_freqs-1``: ``weight[:nb_freqs] * scale``.

    Args:
        weight: the stored table ``(num_embeddings, dim)``.

    Returns:
        ``(nb_freqs, dim)``.

    Raises:
        ValueError: ``nb_freqs`` out of ``[0, num_embeddings]``.
    """
    if not 0 <= nb_freqs <= weight.shape[0]:
        raise ValueError(f"scaled_embedding: {nb_freqs} rows asked of a table of {weight.shape[0]}")
    return weight[:nb_freqs] * scale


def channel_conv1x1(chin: int, chout: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    """``torch.nn.Conv1d(chin, chout, 1)`` on channels-last ``(B, ..., chin) -> (B, ..., chout)`` (a 1x1
    convolution mixes channels only, so the frequency branch's ``(B, F, T, C)`` needs no flattening); kernel
    ``(1, chin, chout)``."""
    return nnx.Conv(
        chin,
        chout,
        kernel_size=(1,),
        padding="VALID",
        dtype=dtype,
        param_dtype=dtype,
        kernel_init=torch_uniform,
        rngs=rngs,
    )


class ScaledEmbedding(nnx.Module):
    """``ScaledEmbedding`` of demucs 4.x, the frequency embedding ``freq_emb``.

    State: ``embedding.embedding (num_embeddings, dim)``, upstream's stored table (``embedding.weight``), which
    upstream keeps divided by ``scale``; the forward multiplies it back.
    """

    def __init__(self, num_embeddings: int, dim: int, scale: float = 10.0, *, dtype: Any, rngs: nnx.Rngs):
        self.scale = float(scale)
        init = nnx.initializers.normal(1.0 / self.scale)  # upstream: N(0, 1), smoothed, then / scale
        self.embedding = nnx.Embed(num_embeddings, dim, dtype=dtype, param_dtype=dtype, embedding_init=init, rngs=rngs)

    def __call__(self, nb_freqs: int) -> jax.Array:
        """The rows ``0 .. nb_freqs - 1`` times ``scale``: ``(nb_freqs, dim)``."""
        return scaled_embedding(self.embedding.embedding[...], self.scale, nb_freqs)
