"""The cross-transformer of HTDemucs (demucs 4.x ``CrossTransformerEncoder``) as Flax NNX modules, eval mode.

The spec is :mod:`core_spec.reference.htdemucs_transformer` (its docstring has the recipe). In short: the frequency
branch's ``(B, Fr, T1, C)`` becomes ``T1 Fr`` tokens **time-major** and the time branch's ``(B, T2, C)`` ``T2``
tokens; ``norm_in`` / ``norm_in_t`` (LayerNorm), then the sinusoidal embeddings are added; ``t_layers`` layers per
branch alternate self-attention (even indices) and cross-attention (odd: each branch attends to the other's tokens
as they were before the layer). Every layer is pre-norm with LayerScale and ends with ``norm_out``, a GroupNorm with
one group over tokens x channels::

    self layer:   x = x + gamma_1 * attn(norm1(x), norm1(x));  x = x + gamma_2 * ff(norm2(x));  x = norm_out(x)
    cross layer:  y = q + gamma_1 * attn(norm1(q), norm2(k));  y = y + gamma_2 * ff(norm3(y));  y = norm_out(y)

``ff = linear2(gelu(linear1(.)))`` with exact GELU. :class:`MultiheadAttention` is
``torch.nn.MultiheadAttention(d, heads, batch_first=True)``: the packed ``in_proj`` holds the query, key and value
projections stacked ``[q; k; v]``, head ``h`` is channels ``h hd : (h + 1) hd`` of each.

Flax state vs upstream's names (the mapping is :mod:`umx_jax.weights`): ``self_attn.in_proj.{kernel, bias}`` is
``self_attn.in_proj_{weight, bias}`` (kernel transposed), ``*.kernel`` of the linears are the transposed
``weight``s, norms' ``scale`` are ``weight``, and the LayerScales are the parameters ``gamma_1`` / ``gamma_2``
themselves (upstream's ``gamma_1.scale``). Only the released settings are implemented
(:func:`core_spec.reference.htdemucs_transformer.check_transformer_config` refuses the others).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from core_spec.configs import HTDemucsConfig
from core_spec.reference.htdemucs_transformer import TRACE_PREFIX, check_transformer_config, transformer_trace_keys
from core_spec.reference.layers import NORM_EPS
from core_spec.shapes import attention_query_blocks
from core_spec.trace import Recorder

from .htdemucs_embed import create_2d_sin_embedding, create_sin_embedding, torch_uniform

__all__ = [
    "TRACE_PREFIX",
    "CrossAttentionLayer",
    "CrossTransformerEncoder",
    "MultiheadAttention",
    "SelfAttentionLayer",
    "check_transformer_config",
    "transformer_trace_keys",
]


def _linear(fan_in: int, fan_out: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    """``torch.nn.Linear(fan_in, fan_out)``: kernel ``(fan_in, fan_out)`` (PyTorch's weight transposed)."""
    return nnx.Linear(fan_in, fan_out, dtype=dtype, param_dtype=dtype, kernel_init=torch_uniform, rngs=rngs)


def _layer_norm(dim: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """``torch.nn.LayerNorm(dim)``: over the last axis, biased variance in two passes, eps 1e-5."""
    return nnx.LayerNorm(dim, epsilon=NORM_EPS, use_fast_variance=False, dtype=dtype, param_dtype=dtype, rngs=rngs)


def _group_norm_1(dim: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """``norm_out``: ``GroupNorm(1, dim)`` on ``(B, tokens, dim)``: statistics over all tokens and channels of an
    item, per-channel affine."""
    return nnx.GroupNorm(
        dim, num_groups=1, epsilon=NORM_EPS, use_fast_variance=False, dtype=dtype, param_dtype=dtype, rngs=rngs
    )


class MultiheadAttention(nnx.Module):
    """``torch.nn.MultiheadAttention(dim, num_heads, batch_first=True)`` in eval mode, no mask.

    State: ``in_proj`` (``dim -> 3 dim``, output columns ``[q | k | v]``), ``out_proj`` (``dim -> dim``).
    """

    def __init__(self, dim: int, num_heads: int, *, dtype: Any, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"MultiheadAttention: {num_heads} heads do not divide the width {dim}")
        self.num_heads = num_heads
        self.in_proj = _linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.out_proj = _linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
        """``query (B, Tq, d)``, ``key`` / ``value (B, Tk, d)`` -> ``(B, Tq, d)``: per head
        ``softmax(q k^T / sqrt(hd)) v``, heads concatenated in channel order, then ``out_proj``."""
        d = query.shape[-1]
        hd = d // self.num_heads
        w, b = self.in_proj.kernel[...], self.in_proj.bias[...]

        def heads(x: jax.Array, part: int) -> jax.Array:  # (B, T, d) -> (B, H, T, hd)
            y = x @ w[:, part * d : (part + 1) * d] + b[part * d : (part + 1) * d]
            return jnp.transpose(y.reshape(y.shape[0], y.shape[1], self.num_heads, hd), (0, 2, 1, 3))

        q, k, v = heads(query, 0), heads(key, 1), heads(value, 2)
        out = _attend(q, k, v)  # (B, H, Tq, hd)
        out = jnp.transpose(out, (0, 2, 1, 3)).reshape(query.shape)
        return self.out_proj(out)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """``softmax(q k^T / sqrt(hd)) v`` per head: ``q (B, H, Tq, hd)``, ``k`` / ``v (B, H, Tk, hd)`` ->
    ``(B, H, Tq, hd)``.

    The softmax runs along each query's row, so the rows can go in blocks: ``jax.lax.map`` over blocks of query
    rows, one after the other (:func:`core_spec.shapes.attention_query_blocks`: at most 2^22 scores a block),
    instead of the whole ``B x H x Tq x Tk`` matrix at once (8 x 2688 x 2688 floats are 231 MB in float32, and XLA
    keeps the exponentials beside them). Every row is computed exactly as without blocks; the rows of the last block
    past ``Tq`` are zeros, dropped.
    """
    b, h, tq, hd = q.shape
    kt = jnp.swapaxes(k, -1, -2)
    scale = jnp.sqrt(jnp.asarray(hd, q.dtype))

    def rows(qb: jax.Array) -> jax.Array:  # (B, H, r, hd) -> (B, H, r, hd)
        return jax.nn.softmax((qb @ kt) / scale, axis=-1) @ v

    nb, size = attention_query_blocks(b, h, tq, k.shape[2])
    if nb == 1:
        return rows(q)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, nb * size - tq), (0, 0)))
    blocks = jnp.moveaxis(q.reshape(b, h, nb, size, hd), 2, 0)  # (nb, B, H, size, hd)
    out = jax.lax.map(rows, blocks)
    return jnp.moveaxis(out, 0, 2).reshape(b, h, nb * size, hd)[:, :, :tq]


class _Layer(nnx.Module):
    """What both layer kinds share: the feed-forward, ``norm_out`` and the two LayerScales."""

    def __init__(self, dim: int, config: HTDemucsConfig, *, dtype: Any, rngs: nnx.Rngs):
        hidden = int(dim * config.t_hidden_scale)
        self.linear1 = _linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.linear2 = _linear(hidden, dim, dtype=dtype, rngs=rngs)
        self.norm_out = _group_norm_1(dim, dtype=dtype, rngs=rngs)
        self.gamma_1 = nnx.Param(jnp.full((dim,), 1e-4, dtype))  # LayerScale (upstream's init 1e-4)
        self.gamma_2 = nnx.Param(jnp.full((dim,), 1e-4, dtype))

    def _feed_forward(self, x: jax.Array) -> jax.Array:
        return self.linear2(jax.nn.gelu(self.linear1(x), approximate=False))


class SelfAttentionLayer(_Layer):
    """One self-attention layer (``MyTransformerEncoderLayer``, pre-norm, LayerScale, ``norm_out``) on ``(B, T, C)``.

    State: ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``norm_out``, ``gamma_1``, ``gamma_2``.
    """

    def __init__(self, dim: int, config: HTDemucsConfig, *, dtype: Any, rngs: nnx.Rngs):
        super().__init__(dim, config, dtype=dtype, rngs=rngs)
        self.self_attn = MultiheadAttention(dim, config.t_heads, dtype=dtype, rngs=rngs)
        self.norm1 = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.norm2 = _layer_norm(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm1(x)
        x = x + self.gamma_1[...] * self.self_attn(h, h, h)
        x = x + self.gamma_2[...] * self._feed_forward(self.norm2(x))
        return self.norm_out(x)


class CrossAttentionLayer(_Layer):
    """One cross-attention layer (``CrossTransformerEncoderLayer``, pre-norm): the queries from ``q`` (``norm1``),
    the keys and values from ``k`` (``norm2``), the feed-forward on ``norm3``.

    State: ``cross_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``norm3``, ``norm_out``, ``gamma_1``,
    ``gamma_2``.
    """

    def __init__(self, dim: int, config: HTDemucsConfig, *, dtype: Any, rngs: nnx.Rngs):
        super().__init__(dim, config, dtype=dtype, rngs=rngs)
        self.cross_attn = MultiheadAttention(dim, config.t_heads, dtype=dtype, rngs=rngs)
        self.norm1 = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.norm2 = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.norm3 = _layer_norm(dim, dtype=dtype, rngs=rngs)

    def __call__(self, q: jax.Array, k: jax.Array) -> jax.Array:
        """``q (B, Tq, C)``, ``k (B, Tk, C)`` -> ``(B, Tq, C)``."""
        kn = self.norm2(k)
        x = q + self.gamma_1[...] * self.cross_attn(self.norm1(q), kn, kn)
        x = x + self.gamma_2[...] * self._feed_forward(self.norm3(x))
        return self.norm_out(x)


class CrossTransformerEncoder(nnx.Module):
    """The cross-transformer between the two branches (module docstring).

    State: ``norm_in``, ``norm_in_t``, ``layers.<i>`` (frequency tokens), ``layers_t.<i>`` (time tokens): a
    :class:`SelfAttentionLayer` at even ``i``, a :class:`CrossAttentionLayer` at odd ``i``.
    """

    def __init__(self, config: HTDemucsConfig, *, dtype: Any, rngs: nnx.Rngs):
        check_transformer_config(config)
        dim = config.transformer_channels
        self.weight_pos_embed = float(config.t_weight_pos_embed)
        self.max_period = float(config.t_max_period)
        self.norm_in = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.norm_in_t = _layer_norm(dim, dtype=dtype, rngs=rngs)

        def make(i: int) -> SelfAttentionLayer | CrossAttentionLayer:
            kind = SelfAttentionLayer if i % 2 == 0 else CrossAttentionLayer  # t_cross_first=False
            return kind(dim, config, dtype=dtype, rngs=rngs)

        self.layers = nnx.List([make(i) for i in range(config.t_layers)])
        self.layers_t = nnx.List([make(i) for i in range(config.t_layers)])

    def __call__(self, x: jax.Array, xt: jax.Array, keep: Recorder | None = None) -> tuple[jax.Array, jax.Array]:
        """The two branches through the transformer.

        Args:
            x: the frequency branch ``(B, Fr, T1, C)``; xt: the time branch ``(B, T2, C)``.
            keep: records every layer's output tokens ``(B, tokens, C)`` under
                :func:`~core_spec.reference.htdemucs_transformer.transformer_trace_keys` (as they are: upstream's
                layout).

        Returns:
            ``(x, xt)`` shaped as given.
        """
        b, nb_freqs, t1, c = x.shape
        pos_2d = create_2d_sin_embedding(c, nb_freqs, t1, max_period=self.max_period, dtype=x.dtype)
        pos_1d = create_sin_embedding(xt.shape[1], c, max_period=self.max_period, dtype=xt.dtype)

        def tokens(a: jax.Array) -> jax.Array:  # (b, fr, t1, c) -> (b, t1*fr, c), time-major
            return jnp.transpose(a, (0, 2, 1, 3)).reshape(a.shape[0], -1, a.shape[3])

        x = self.norm_in(tokens(x)) + self.weight_pos_embed * tokens(pos_2d)
        xt = self.norm_in_t(xt) + self.weight_pos_embed * jnp.transpose(pos_1d, (1, 0, 2))
        for i, (layer, layer_t) in enumerate(zip(self.layers, self.layers_t, strict=True)):
            if i % 2 == 0:
                x_new, xt = layer(x), layer_t(xt)
            else:  # both branches read the other's tokens from before this layer
                x_new, xt = layer(x, xt), layer_t(xt, x)
            x = x_new
            if keep is not None:
                keep(f"{TRACE_PREFIX}layers.{i}", x, convert=_as_is)
                keep(f"{TRACE_PREFIX}layers_t.{i}", xt, convert=_as_is)
        x = jnp.transpose(x.reshape(b, t1, nb_freqs, c), (0, 2, 1, 3))
        return x, xt


def _as_is(a: jax.Array) -> jax.Array:
    return a
