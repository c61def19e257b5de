"""The cross-transformer of HTDemucs (demucs 4.x ``CrossTransformerEncoder``) as Keras 3 layers.

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

Dropout (``config.t_dropout``, upstream's ``dropout``; 0.02 in the released configs) acts in training mode only
(``training=True``), at the torch port's and upstream's four places in every layer: on the attention weights (after
the softmax, before they weigh the values: ``nn.MultiheadAttention``'s ``dropout``), ``dropout1`` on the attention
branch before ``gamma_1``, ``dropout`` between the GELU and ``linear2`` and ``dropout2`` after ``linear2``. Each
draws from its own ``seed_generator`` (a ``keras.random.SeedGenerator``, made only when the rate is above 0, as
``keras.layers.Dropout`` does; seeded from ``keras.utils.set_random_seed`` when the layer is built): masks are
reproducible and a checkpoint of the generators' states resumes them (:mod:`umx_tf.train`). Kept values are scaled
by ``1 / (1 - rate)``. In eval mode (every apply and separation path) no dropout op is built.

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
    """``torch.nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)``, no mask.

    Weights: ``in_proj_kernel (dim, 3 dim)`` (columns ``[q | k | v]``), ``in_proj_bias (3 dim,)``, ``out_proj``
    (a ``Dense``). ``rate``: the dropout of the attention weights in training mode (0: none), drawn from
    ``seed_generator`` (present when the rate given is above 0).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"MultiheadAttention: {num_heads} heads do not divide the width {dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiheadAttention: dropout {dropout} is not in [0, 1)")
        self.num_heads = num_heads
        self.rate = float(dropout)
        if self.rate > 0:
            self.seed_generator = keras.random.SeedGenerator(name="seed_generator")
        # upstream: xavier_uniform on the (3d, d) matrix, zero biases (training only: weights are loaded)
        self.in_proj_kernel = self.add_weight(shape=(dim, 3 * dim), initializer="glorot_uniform", name="in_proj_kernel")
        self.in_proj_bias = self.add_weight(shape=(3 * dim,), initializer="zeros", name="in_proj_bias")
        self.out_proj = _built(_linear(dim, dim, self.dtype_policy, "out_proj"), dim)
        self.built = True

    def call(self, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``query (B, Tq, d)``, ``key`` / ``value (B, Tk, d)`` -> ``(B, Tq, d)``: per head
        ``softmax(q k^T / sqrt(hd)) v``, heads concatenated in channel order, then ``out_proj``; ``training``: the
        attention weights' dropout at :attr:`rate` (:func:`_attend`)."""
        d = query.shape[-1]
        hd = d // self.num_heads
        w, b = tf.convert_to_tensor(self.in_proj_kernel), tf.convert_to_tensor(self.in_proj_bias)

        def heads(x: tf.Tensor, part: int) -> tf.Tensor:  # (B, T, d) -> (B, H, T, hd)
            y = tf.tensordot(x, w[:, part * d : (part + 1) * d], axes=1) + b[part * d : (part + 1) * d]
            y = tf.reshape(y, [tf.shape(x)[0], x.shape[1], self.num_heads, hd])
            return tf.transpose(y, [0, 2, 1, 3])

        q, k, v = heads(query, 0), heads(key, 1), heads(value, 2)
        rate = self.rate if training else 0.0
        out = _attend(q, k, v, rate, self.seed_generator if rate > 0 else None)  # (B, H, Tq, hd)
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), tf.shape(query))
        return self.out_proj(out)


def _attend(
    q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, rate: float = 0.0, seeds: keras.random.SeedGenerator | None = None
) -> tf.Tensor:
    """``softmax(q k^T / sqrt(hd)) v`` per head: ``q (B, H, Tq, hd)``, ``k`` / ``v (B, H, Tk, hd)`` ->
    ``(B, H, Tq, hd)``; with ``rate > 0`` the weights ``softmax(.)`` go through dropout first (zeroed with
    probability ``rate``, the others scaled by ``1 / (1 - rate)``), each block of rows with its own seed drawn from
    ``seeds`` (one ``next()`` per block, in order).

    The softmax runs along each query's row, so the rows can go in blocks: ``tf.map_fn`` over blocks of query rows,
    one after the other (:func:`core_spec.shapes.attention_query_blocks`: at most 2^22 scores a block), instead of
    the whole ``B x H x Tq x Tk`` matrix at once (8 x 2688 x 2688 floats are 231 MB in float32). Every row is
    computed exactly as without blocks; the rows of the last block past ``Tq`` are zeros, dropped.
    """
    _, h, tq, hd = q.shape
    scale = tf.sqrt(tf.cast(hd, q.dtype))

    def rows(qb: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:  # (B, H, r, hd) -> (B, H, r, hd)
        weights = tf.nn.softmax(tf.matmul(qb, k, transpose_b=True) / scale, axis=-1)
        if seed is not None:
            weights = tf.nn.experimental.stateless_dropout(weights, rate, seed=seed)
        return tf.matmul(weights, v)

    nb, size = attention_query_blocks(q.shape[0] or 1, h, tq, k.shape[2])
    block_seeds = None
    if rate > 0:
        block_seeds = tf.stack([tf.cast(seeds.next(), tf.int64) for _ in range(nb)])  # (nb, 2)
    if nb == 1:
        return rows(q, None if block_seeds is None else block_seeds[0])
    b = tf.shape(q)[0]
    q = tf.pad(q, [[0, 0], [0, 0], [0, nb * size - tq], [0, 0]])
    blocks = tf.transpose(tf.reshape(q, [b, h, nb, size, hd]), [2, 0, 1, 3, 4])  # (nb, B, H, size, hd)
    if block_seeds is None:
        out = tf.map_fn(rows, blocks, parallel_iterations=1)
    else:
        out = tf.map_fn(lambda a: rows(*a), (blocks, block_seeds), fn_output_signature=q.dtype, parallel_iterations=1)
    return tf.reshape(tf.transpose(out, [1, 2, 0, 3, 4]), [b, h, nb * size, hd])[:, :, :tq]


class _Layer(keras.layers.Layer):
    """What both layer kinds share: the feed-forward, ``norm_out``, the two LayerScales and three of the four
    dropouts (``keras.layers.Dropout`` at ``config.t_dropout``, under upstream's names: ``dropout1`` on the attention
    branch, ``dropout`` inside the feed-forward, ``dropout2`` after it; the fourth is the attention's own)."""

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
        rate = float(config.t_dropout)
        self.dropout1 = keras.layers.Dropout(rate, dtype=policy, name="dropout1")
        self.dropout = keras.layers.Dropout(rate, dtype=policy, name="dropout")
        self.dropout2 = keras.layers.Dropout(rate, dtype=policy, name="dropout2")

    def _feed_forward(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``dropout2(linear2(dropout(gelu(linear1(x)))))`` (the dropouts: ``training`` only)."""
        h = self.dropout(gelu(self.linear1(x)), training=training)
        return self.dropout2(self.linear2(h), training=training)


class SelfAttentionLayer(_Layer):
    """One self-attention layer (``MyTransformerEncoderLayer``, pre-norm, LayerScale, ``norm_out``) on ``(B, T, C)``.

    Weights: ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``norm_out``, ``gamma_1``, ``gamma_2``.
    """

    def __init__(self, dim: int, config: HTDemucsConfig, **kwargs: Any):
        super().__init__(dim, config, **kwargs)
        policy = self.dtype_policy
        self.self_attn = MultiheadAttention(dim, config.t_heads, config.t_dropout, dtype=policy, name="self_attn")
        self.norm1 = LayerNorm(dim, dtype=policy, name="norm1")
        self.norm2 = LayerNorm(dim, dtype=policy, name="norm2")
        self.built = True

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``x (B, T, C)`` -> ``(B, T, C)`` (``training``: the dropouts)."""
        h = self.norm1(x)
        attn = self.dropout1(self.self_attn(h, h, h, training=training), training=training)
        x = x + self.gamma_1 * attn
        x = x + self.gamma_2 * self._feed_forward(self.norm2(x), training)
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
        self.cross_attn = MultiheadAttention(dim, config.t_heads, config.t_dropout, dtype=policy, name="cross_attn")
        self.norm1 = LayerNorm(dim, dtype=policy, name="norm1")
        self.norm2 = LayerNorm(dim, dtype=policy, name="norm2")
        self.norm3 = LayerNorm(dim, dtype=policy, name="norm3")
        self.built = True

    def call(self, q: tf.Tensor, k: tf.Tensor, training: bool = False) -> tf.Tensor:
        """``q (B, Tq, C)``, ``k (B, Tk, C)`` -> ``(B, Tq, C)`` (``training``: the dropouts)."""
        kn = self.norm2(k)
        attn = self.dropout1(self.cross_attn(self.norm1(q), kn, kn, training=training), training=training)
        x = q + self.gamma_1 * attn
        x = x + self.gamma_2 * self._feed_forward(self.norm3(x), training)
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

    def call(
        self, x: tf.Tensor, xt: tf.Tensor, keep: Recorder | None = None, training: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The two branches through the transformer.

        Args:
            x: the frequency branch ``(B, Fr, T1, C)``; xt: the time branch ``(B, T2, C)``.
            keep: records every layer's output tokens ``(B, tokens, C)`` under
                :func:`~core_spec.reference.htdemucs_transformer.transformer_trace_keys` (as they are: upstream's
                layout).
            training: the dropouts of every layer (``config.t_dropout``; module docstring).

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
                x_new, xt = layer(x, training=training), layer_t(xt, training=training)
            else:  # both branches read the other's tokens from before this layer
                x_new, xt = layer(x, xt, training=training), layer_t(xt, x, training=training)
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
