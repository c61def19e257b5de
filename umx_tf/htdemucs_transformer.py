"""The cross-transformer of HTDemucs (demucs 4.x ``CrossTransformerEncoder``) as Keras 3 layers, eval mode.

The spec is :mod:`core_spec.reference.htdemucs_transformer` (its docstring has the recipe). In short: the frequency
branch's ``(B, Fr, T1, C)`` becomes ``T1 Fr`` tokens **time-major** and the time branch's ``(B, T2, C)`` ``T2``
tokens; ``norm_in`` / ``norm_in_t`` (LayerNorm), then the sinusoidal embeddings are added; ``t_layers`` layers per
branch alternate self-attention (even indices) and cross-attention (odd: each branch attends to the other's tokens
as they were before the layer). Every layer is pre-norm with LayerScale and ends with ``norm_out``, a GroupNorm with
one group over tokens x channels::

    self layer:   x = x + gamma_1 * attn(norm1(x), norm1(x));  x = x + gamma_2 * ff(norm2(x));  x = norm_out(x)
    cross layer:  y = q + gamma_1 * attn(norm1(q), norm2(k));  y = y + gamma_2 * ff(norm3(y));  y = norm_out(y)

``ff = linear2(gelu(linear1(.)))`` with exact GELU. :class:`MultiheadAttention` is
``torch.nn.MultiheadAttention(d, heads, batch_first=True)``: the packed ``in_proj_kernel (d, 3d)`` holds the query,
key and value projections side by side ``[q | k | v]`` (upstream's ``in_proj_weight (3d, d)`` transposed); head
``h`` is channels ``h hd : (h + 1) hd`` of each. The attention runs in the model's dtype (float32: 8 x 2688 x 2688
scores per item at the released length, 231 MB).

Keras weights vs upstream's names (the mapping is :mod:`umx_tf.weights`): ``*.kernel`` of the linears are the
transposed ``weight``s, norms' ``gamma`` / ``beta`` are ``weight`` / ``bias``, and the LayerScales are the weights
``gamma_1`` / ``gamma_2`` themselves (upstream's ``gamma_1.scale``). Only the released settings are implemented
(:func:`core_spec.reference.htdemucs_transformer.check_transformer_config` refuses the others).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from core_spec.configs import HTDemucsConfig
from core_spec.reference.htdemucs_transformer import TRACE_PREFIX, check_transformer_config, transformer_trace_keys
from core_spec.reference.layers import NORM_EPS
from core_spec.shapes import attention_query_blocks
from core_spec.trace import Recorder

from .htdemucs_embed import create_2d_sin_embedding, create_sin_embedding
from .layers import GroupNorm, gelu, torch_kernel_init, torch_uniform

__all__ = [
    "TRACE_PREFIX",
    "CrossAttentionLayer",
    "CrossTransformerEncoder",
    "LayerNorm",
    "MultiheadAttention",
    "SelfAttentionLayer",
    "check_transformer_config",
    "transformer_trace_keys",
]


def _linear(fan_in: int, fan_out: int, policy: Any, name: str) -> keras.layers.Dense:
    """``torch.nn.Linear(fan_in, fan_out)``: kernel ``(fan_in, fan_out)`` (PyTorch's weight transposed)."""
    return keras.layers.Dense(
        fan_out,
        kernel_initializer=torch_kernel_init(),
        bias_initializer=torch_uniform(fan_in),
        dtype=policy,
        name=name,
    )


def _built(layer: keras.layers.Layer, fan_in: int) -> keras.layers.Layer:
    layer.build((None, fan_in))
    return layer


class MultiheadAttention(keras.layers.Layer):
    """``torch.nn.MultiheadAttention(dim, num_heads, batch_first=True)`` in eval mode, no mask.

    Weights: ``in_proj_kernel (dim, 3 dim)`` (columns ``[q | k | v]``), ``in_proj_bias (3 dim,)``, ``out_proj``
    (a ``Dense``).
    """

    def __init__(self, dim: int, num_heads: int, **kwargs: Any):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"MultiheadAttention: {num_heads} heads do not divide the width {dim}")
        self.num_heads = num_heads
        # upstream: xavier_uniform on the (3d, d) matrix, zero biases (training only: weights are loaded)
        self.in_proj_kernel = self.add_weight(shape=(dim, 3 * dim), initializer="glorot_uniform", name="in_proj_kernel")
        self.in_proj_bias = self.add_weight(shape=(3 * dim,), initializer="zeros", name="in_proj_bias")
        self.out_proj = _built(_linear(dim, dim, self.dtype_policy, "out_proj"), dim)
        self.built = True

    def call(self, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        """``query (B, Tq, d)``, ``key`` / ``value (B, Tk, d)`` -> ``(B, Tq, d)``: per head
        ``softmax(q k^T / sqrt(hd)) v``, heads concatenated in channel order, then ``out_proj``."""
        d = query.shape[-1]
        hd = d // self.num_heads
        w, b = tf.convert_to_tensor(self.in_proj_kernel), tf.convert_to_tensor(self.in_proj_bias)

        def heads(x: tf.Tensor, part: int) -> tf.Tensor:  # (B, T, d) -> (B, H, T, hd)
            y = tf.tensordot(x, w[:, part * d : (part + 1) * d], axes=1) + b[part * d : (part + 1) * d]
            y = tf.reshape(y, [tf.shape(x)[0], x.shape[1], self.num_heads, hd])
            return tf.transpose(y, [0, 2, 1, 3])

        q, k, v = heads(query, 0), heads(key, 1), heads(value, 2)
        out = _attend(q, k, v)  # (B, H, Tq, hd)
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), tf.shape(query))
        return self.out_proj(out)


def _attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
    """``softmax(q k^T / sqrt(hd)) v`` per head: ``q (B, H, Tq, hd)``, ``k`` / ``v (B, H, Tk, hd)`` ->
    ``(B, H, Tq, hd)``.

    The softmax runs along each query's row, so the rows can go in blocks: ``tf.map_fn`` over blocks of query rows,
    one after the other (:func:`core_spec.shapes.attention_query_blocks`: at most 2^22 scores a block), instead of
    the whole ``B x H x Tq x Tk`` matrix at once (8 x 2688 x 2688 floats are 231 MB in float32). Every row is
    computed exactly as without blocks; the rows of the last block past ``Tq`` are zeros, dropped.
    """
    _, h, tq, hd = q.shape
    scale = tf.sqrt(tf.cast(hd, q.dtype))

    def rows(qb: tf.Tensor) -> tf.Tensor:  # (B, H, r, hd) -> (B, H, r, hd)
        return tf.matmul(tf.nn.softmax(tf.matmul(qb, k, transpose_b=True) / scale, axis=-1), v)

    nb, size = attention_query_blocks(q.shape[0] or 1, h, tq, k.shape[2])
    if nb == 1:
        return rows(q)
    b = tf.shape(q)[0]
    q = tf.pad(q, [[0, 0], [0, 0], [0, nb * size - tq], [0, 0]])
    blocks = tf.transpose(tf.reshape(q, [b, h, nb, size, hd]), [2, 0, 1, 3, 4])  # (nb, B, H, size, hd)
    out = tf.map_fn(rows, blocks, parallel_iterations=1)
    return tf.reshape(tf.transpose(out, [1, 2, 0, 3, 4]), [b, h, nb * size, hd])[:, :, :tq]


class _Layer(keras.layers.Layer):
    """What both layer kinds share: the feed-forward, ``norm_out`` and the two LayerScales."""

    def __init__(self, dim: int, config: HTDemucsConfig, **kwargs: Any):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        hidden = int(dim * config.t_hidden_scale)
        self.linear1 = _built(_linear(dim, hidden, policy, "linear1"), dim)
        self.linear2 = _built(_linear(hidden, dim, policy, "linear2"), hidden)
        self.norm_out = GroupNorm(dim, 1, dtype=policy, name="norm_out")
        scale = keras.initializers.Constant(1e-4)  # LayerScale, upstream's init 1e-4
        self.gamma_1 = self.add_weight(shape=(dim,), initializer=scale, name="gamma_1")
        self.gamma_2 = self.add_weight(shape=(dim,), initializer=scale, name="gamma_2")

    def _feed_forward(self, x: tf.Tensor) -> tf.Tensor:
        return self.linear2(gelu(self.linear1(x)))


class SelfAttentionLayer(_Layer):
    """One self-attention layer (``MyTransformerEncoderLayer``, pre-norm, LayerScale, ``norm_out``) on ``(B, T, C)``.

    Weights: ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``norm_out``, ``gamma_1``, ``gamma_2``.
    """

    def __init__(self, dim: int, config: HTDemucsConfig, **kwargs: Any):
        super().__init__(dim, config, **kwargs)
        policy = self.dtype_policy
        self.self_attn = MultiheadAttention(dim, config.t_heads, dtype=policy, name="self_attn")
        self.norm1 = LayerNorm(dim, dtype=policy, name="norm1")
        self.norm2 = LayerNorm(dim, dtype=policy, name="norm2")
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        h = self.norm1(x)
        x = x + self.gamma_1 * self.self_attn(h, h, h)
        x = x + self.gamma_2 * self._feed_forward(self.norm2(x))
        return self.norm_out(x)


class CrossAttentionLayer(_Layer):
    """One cross-attention layer (``CrossTransformerEncoderLayer``, pre-norm): the queries from ``q`` (``norm1``),
    the keys and values from ``k`` (``norm2``), the feed-forward on ``norm3``.

    Weights: ``cross_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``norm3``, ``norm_out``, ``gamma_1``,
    ``gamma_2``.
    """

    def __init__(self, dim: int, config: HTDemucsConfig, **kwargs: Any):
        super().__init__(dim, config, **kwargs)
        policy = self.dtype_policy
        self.cross_attn = MultiheadAttention(dim, config.t_heads, dtype=policy, name="cross_attn")
        self.norm1 = LayerNorm(dim, dtype=policy, name="norm1")
        self.norm2 = LayerNorm(dim, dtype=policy, name="norm2")
        self.norm3 = LayerNorm(dim, dtype=policy, name="norm3")
        self.built = True

    def call(self, q: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
        """``q (B, Tq, C)``, ``k (B, Tk, C)`` -> ``(B, Tq, C)``."""
        kn = self.norm2(k)
        x = q + self.gamma_1 * self.cross_attn(self.norm1(q), kn, kn)
        x = x + self.gamma_2 * self._feed_forward(self.norm3(x))
        return self.norm_out(x)


class CrossTransformerEncoder(keras.layers.Layer):
    """The cross-transformer between the two branches (module docstring).

    Weights: ``norm_in``, ``norm_in_t``, ``layers[i]`` (frequency tokens), ``layers_t[i]`` (time tokens): a
    :class:`SelfAttentionLayer` at even ``i``, a :class:`CrossAttentionLayer` at odd ``i``.
    """

    def __init__(self, config: HTDemucsConfig, **kwargs: Any):
        super().__init__(**kwargs)
        check_transformer_config(config)
        policy = self.dtype_policy
        dim = config.transformer_channels
        self.weight_pos_embed = float(config.t_weight_pos_embed)
        self.max_period = float(config.t_max_period)
        self.norm_in = LayerNorm(dim, dtype=policy, name="norm_in")
        self.norm_in_t = LayerNorm(dim, dtype=policy, name="norm_in_t")

        def make(i: int, branch: str) -> SelfAttentionLayer | CrossAttentionLayer:
            kind = SelfAttentionLayer if i % 2 == 0 else CrossAttentionLayer  # t_cross_first=False
            return kind(dim, config, dtype=policy, name=f"{branch}_{i}")

        self.layers = [make(i, "layers") for i in range(config.t_layers)]
        self.layers_t = [make(i, "layers_t") for i in range(config.t_layers)]
        self.built = True

    def call(self, x: tf.Tensor, xt: tf.Tensor, keep: Recorder | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """The two branches through the transformer.

        Args:
            x: the frequency branch ``(B, Fr, T1, C)``; xt: the time branch ``(B, T2, C)``.
            keep: records every layer's output tokens ``(B, tokens, C)`` under
                :func:`~core_spec.reference.htdemucs_transformer.transformer_trace_keys` (as they are: upstream's
                layout).

        Returns:
            ``(x, xt)`` shaped as given.
        """
        _, nb_freqs, t1, c = x.shape
        b = tf.shape(x)[0]
        pos_2d = create_2d_sin_embedding(c, nb_freqs, t1, max_period=self.max_period, dtype=x.dtype)
        pos_1d = create_sin_embedding(xt.shape[1], c, max_period=self.max_period, dtype=xt.dtype)

        def tokens(a: tf.Tensor) -> tf.Tensor:  # (b, fr, t1, c) -> (b, t1*fr, c), time-major
            return tf.reshape(tf.transpose(a, [0, 2, 1, 3]), [tf.shape(a)[0], -1, c])

        x = self.norm_in(tokens(x)) + self.weight_pos_embed * tokens(pos_2d)
        xt = self.norm_in_t(xt) + self.weight_pos_embed * tf.transpose(pos_1d, [1, 0, 2])
        for i, (layer, layer_t) in enumerate(zip(self.layers, self.layers_t, strict=True)):
            if i % 2 == 0:
                x_new, xt = layer(x), layer_t(xt)
            else:  # both branches read the other's tokens from before this layer
                x_new, xt = layer(x, xt), layer_t(xt, x)
            x = x_new
            if keep is not None:
                keep(f"{TRACE_PREFIX}layers.{i}", x, convert=_as_is)
                keep(f"{TRACE_PREFIX}layers_t.{i}", xt, convert=_as_is)
        x = tf.transpose(tf.reshape(x, [b, t1, nb_freqs, c]), [0, 2, 1, 3])
        return x, xt


class LayerNorm(keras.layers.Layer):
    """``torch.nn.LayerNorm(dim)``: over the last axis, biased variance in two passes, eps 1e-5.
    Weights: ``gamma``, ``beta`` ``(dim,)`` (upstream's ``weight``, ``bias``)."""

    def __init__(self, dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.gamma = self.add_weight(shape=(dim,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(dim,), initializer="zeros", name="beta")
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        centred = x - mean
        var = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
        return centred / tf.sqrt(var + NORM_EPS) * self.gamma + self.beta


def _as_is(a: tf.Tensor) -> tf.Tensor:
    return a
