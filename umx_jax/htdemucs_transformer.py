"""The cross-transformer of HTDemucs (demucs 4.x ``CrossTransformerEncoder``) as Flax NNX modules.

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

Dropout (``config.t_dropout``, upstream's ``dropout``; 0.02 in the released configs) acts in the training forward
only, when a ``dropout_key`` is given, at the torch port's and upstream's four places in every layer: on the
attention weights (after the softmax, before they weigh the values: ``nn.MultiheadAttention``'s ``dropout``),
``dropout1`` on the attention branch before ``gamma_1``, ``dropout`` between the GELU and ``linear2`` and
``dropout2`` after ``linear2``. Masks are drawn by :func:`umx_jax.layers.dropout` from keys split off ``dropout_key``
(one per layer and branch, four per layer: :func:`_site_keys`), kept values scaled by ``1 / (1 - rate)``. Without
a key (every eval, apply and separation path) no dropout is traced.

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
from .layers import dropout as inverted_dropout

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


Dropout = tuple[float, jax.Array] | None
"""``(rate, key)`` of one dropout site, or ``None``: no dropout."""


def _dropout(x: jax.Array, site: Dropout) -> jax.Array:
    """:func:`umx_jax.layers.dropout` at one site's ``(rate, key)``; ``x`` itself for ``None``."""
    return x if site is None else inverted_dropout(x, *site)


def _site_keys(dropout: Dropout) -> tuple[Dropout, Dropout, Dropout, Dropout]:
    """One layer's four sites (attention weights, ``dropout1``, ``dropout``, ``dropout2``), each with its own key
    split off the layer's."""
    if dropout is None or dropout[0] == 0:
        return None, None, None, None
    rate, key = dropout
    a, b, c, d = jax.random.split(key, 4)
    return (rate, a), (rate, b), (rate, c), (rate, d)


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

    def __call__(
        self, query: jax.Array, key: jax.Array, value: jax.Array, *, blocks: bool = True, dropout: Dropout = None
    ) -> jax.Array:
        """``query (B, Tq, d)``, ``key`` / ``value (B, Tk, d)`` -> ``(B, Tq, d)``: per head
        ``softmax(q k^T / sqrt(hd)) v``, heads concatenated in channel order, then ``out_proj``. ``blocks``: the
        scores in blocks of query rows (:func:`_attend`); ``False``: all at once. ``dropout``: ``(rate, key)`` of
        the attention weights' dropout (training), ``None``: none."""
        d = query.shape[-1]
        hd = d // self.num_heads
        w, b = self.in_proj.kernel[...], self.in_proj.bias[...]

        def heads(x: jax.Array, part: int) -> jax.Array:  # (B, T, d) -> (B, H, T, hd)
            y = x @ w[:, part * d : (part + 1) * d] + b[part * d : (part + 1) * d]
            return jnp.transpose(y.reshape(y.shape[0], y.shape[1], self.num_heads, hd), (0, 2, 1, 3))

        q, k, v = heads(query, 0), heads(key, 1), heads(value, 2)
        out = _attend(q, k, v, blocks, dropout)  # (B, H, Tq, hd)
        out = jnp.transpose(out, (0, 2, 1, 3)).reshape(query.shape)
        return self.out_proj(out)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, blocks: bool = True, dropout: Dropout = None) -> jax.Array:
    """``softmax(q k^T / sqrt(hd)) v`` per head: ``q (B, H, Tq, hd)``, ``k`` / ``v (B, H, Tk, hd)`` ->
    ``(B, H, Tq, hd)``; ``dropout``: the weights ``softmax(.)`` through :func:`_dropout` (in blocks: each block
    with its own key, split off the given one): the mask applied to ``e``, which the row normaliser then scales,
    is the mask on the weights.

    The softmax is applied after the product with ``v``: ``(e v) / sum(e)`` with ``e = exp(s - max(s))`` per row
    (``jax.nn.softmax``'s ``e``), the same value as ``(e / sum(e)) v`` up to round-off, without a pass over the
    ``Tq x Tk`` probabilities to divide them, and with a backward pass that needs no row sums over ``Tq x Tk``
    products (the normaliser's gradient is a row sum over ``Tq x hd``).

    The softmax runs along each query's row, so the rows can go in blocks: ``jax.lax.map`` over blocks of query
    rows, one after the other (:func:`core_spec.shapes.attention_query_blocks`: at most 2^22 scores a block),
    instead of the whole ``B x H x Tq x Tk`` matrix at once (8 x 2688 x 2688 floats are 231 MB in float32, and XLA
    keeps the exponentials beside them). Every row is computed exactly as without blocks; the rows of the last block
    past ``Tq`` are zeros, dropped.

    ``blocks=False`` (the training forward) computes every row at once: under ``jax.grad`` the blocks save nothing,
    since the backward pass keeps every block's exponentials anyway (stacked by ``jax.lax.map``, a zero-filled
    buffer and a copy per block more), and each row is the same either way.
    """
    b, h, tq, hd = q.shape
    kt = jnp.swapaxes(k, -1, -2)
    scale = jnp.sqrt(jnp.asarray(hd, q.dtype))

    def rows(qb: jax.Array, key: jax.Array | None = None) -> jax.Array:  # (B, H, r, hd) -> (B, H, r, hd)
        scores = (qb @ kt) / scale
        e = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
        dropped = e if key is None else _dropout(e, (rate, key))  # the weights' dropout: a mask on e, row-scaled
        return (dropped @ v) / jnp.sum(e, axis=-1, keepdims=True)

    rate, key = dropout if dropout is not None and dropout[0] > 0 else (0.0, None)
    nb, size = attention_query_blocks(b, h, tq, k.shape[2]) if blocks else (1, tq)
    if nb == 1:
        return rows(q, key)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, nb * size - tq), (0, 0)))
    stacked = jnp.moveaxis(q.reshape(b, h, nb, size, hd), 2, 0)  # (nb, B, H, size, hd)
    if key is None:
        out = jax.lax.map(rows, stacked)
    else:
        out = jax.lax.map(lambda a: rows(*a), (stacked, jax.random.split(key, nb)))
    return jnp.moveaxis(out, 0, 2).reshape(b, h, nb * size, hd)[:, :, :tq]


class _Layer(nnx.Module):
    """What both layer kinds share: the feed-forward, ``norm_out`` and the two LayerScales (and three of the four
    dropout sites: ``dropout1`` after the attention, ``dropout`` and ``dropout2`` in the feed-forward)."""

    def __init__(self, dim: int, config: HTDemucsConfig, *, dtype: Any, rngs: nnx.Rngs):
        hidden = int(dim * config.t_hidden_scale)
        self.linear1 = _linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.linear2 = _linear(hidden, dim, dtype=dtype, rngs=rngs)
        self.norm_out = _group_norm_1(dim, dtype=dtype, rngs=rngs)
        self.gamma_1 = nnx.Param(jnp.full((dim,), 1e-4, dtype))  # LayerScale (upstream's init 1e-4)
        self.gamma_2 = nnx.Param(jnp.full((dim,), 1e-4, dtype))

    def _feed_forward(self, x: jax.Array, dropout: Dropout = None, dropout2: Dropout = None) -> jax.Array:
        """``dropout2(linear2(dropout(gelu(linear1(x)))))`` (the dropouts: ``None``, none)."""
        h = _dropout(jax.nn.gelu(self.linear1(x), approximate=False), dropout)
        return _dropout(self.linear2(h), dropout2)


class SelfAttentionLayer(_Layer):
    """One self-attention layer (``MyTransformerEncoderLayer``, pre-norm, LayerScale, ``norm_out``) on ``(B, T, C)``.

    State: ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``norm_out``, ``gamma_1``, ``gamma_2``.
    """

    def __init__(self, dim: int, config: HTDemucsConfig, *, dtype: Any, rngs: nnx.Rngs):
        super().__init__(dim, config, dtype=dtype, rngs=rngs)
        self.self_attn = MultiheadAttention(dim, config.t_heads, dtype=dtype, rngs=rngs)
        self.norm1 = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.norm2 = _layer_norm(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, blocks: bool = True, dropout: Dropout = None) -> jax.Array:
        """``x (B, T, C)`` -> ``(B, T, C)``; ``blocks``: :class:`MultiheadAttention`'s; ``dropout``: ``(rate, key)``
        of the layer's four dropouts (:func:`_site_keys`), ``None``: none."""
        attn_w, drop1, drop, drop2 = _site_keys(dropout)
        h = self.norm1(x)
        x = x + self.gamma_1[...] * _dropout(self.self_attn(h, h, h, blocks=blocks, dropout=attn_w), drop1)
        x = x + self.gamma_2[...] * self._feed_forward(self.norm2(x), drop, drop2)
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

    def __call__(self, q: jax.Array, k: jax.Array, *, blocks: bool = True, dropout: Dropout = None) -> jax.Array:
        """``q (B, Tq, C)``, ``k (B, Tk, C)`` -> ``(B, Tq, C)``; ``blocks``, ``dropout``: as
        :meth:`SelfAttentionLayer.__call__`."""
        attn_w, drop1, drop, drop2 = _site_keys(dropout)
        kn = self.norm2(k)
        attn = self.cross_attn(self.norm1(q), kn, kn, blocks=blocks, dropout=attn_w)
        x = q + self.gamma_1[...] * _dropout(attn, drop1)
        x = x + self.gamma_2[...] * self._feed_forward(self.norm3(x), drop, drop2)
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
        self.dropout_rate = float(config.t_dropout)
        self.max_period = float(config.t_max_period)
        self.norm_in = _layer_norm(dim, dtype=dtype, rngs=rngs)
        self.norm_in_t = _layer_norm(dim, dtype=dtype, rngs=rngs)

        def make(i: int) -> SelfAttentionLayer | CrossAttentionLayer:
            kind = SelfAttentionLayer if i % 2 == 0 else CrossAttentionLayer  # t_cross_first=False
            return kind(dim, config, dtype=dtype, rngs=rngs)

        self.layers = nnx.List([make(i) for i in range(config.t_layers)])
        self.layers_t = nnx.List([make(i) for i in range(config.t_layers)])

    def __call__(
        self,
        x: jax.Array,
        xt: jax.Array,
        keep: Recorder | None = None,
        *,
        training: bool = False,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The two branches through the transformer.

        Args:
            x: the frequency branch ``(B, Fr, T1, C)``; xt: the time branch ``(B, T2, C)``.
            keep: records every layer's output tokens ``(B, tokens, C)`` under
                :func:`~core_spec.reference.htdemucs_transformer.transformer_trace_keys` (as they are: upstream's
                layout).
            training: the training forward: the attention scores all at once (:func:`_attend`), not in blocks.
            dropout_key: with ``training``, the key of the dropouts at ``config.t_dropout`` (module docstring; one
                key split off it per layer and branch); ``None``: no dropout.

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
        drop = training and dropout_key is not None and self.dropout_rate > 0
        keys = jax.random.split(dropout_key, 2 * len(self.layers)) if drop else None
        for i, (layer, layer_t) in enumerate(zip(self.layers, self.layers_t, strict=True)):
            blocks = not training
            d, d_t = ((self.dropout_rate, keys[2 * i]), (self.dropout_rate, keys[2 * i + 1])) if drop else (None, None)
            if i % 2 == 0:
                x_new, xt = layer(x, blocks=blocks, dropout=d), layer_t(xt, blocks=blocks, dropout=d_t)
            else:  # both branches read the other's tokens from before this layer
                x_new, xt = layer(x, xt, blocks=blocks, dropout=d), layer_t(xt, x, blocks=blocks, dropout=d_t)
            x = x_new
            if keep is not None:
                keep(f"{TRACE_PREFIX}layers.{i}", x, convert=_as_is)
                keep(f"{TRACE_PREFIX}layers_t.{i}", xt, convert=_as_is)
        x = jnp.transpose(x.reshape(b, t1, nb_freqs, c), (0, 2, 1, 3))
        return x, xt


def _as_is(a: jax.Array) -> jax.Array:
    return a
