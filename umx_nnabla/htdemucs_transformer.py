"""The cross-transformer of HTDemucs (demucs 4.x ``CrossTransformerEncoder``) as NNabla graphs.

The spec is :mod:`core_spec.reference.htdemucs_transformer` (its docstring has the recipe). In short: the frequency
branch's ``(B, C, Fr, T1)`` becomes ``T1 Fr`` tokens **time-major** and the time branch's ``(B, C, T2)`` ``T2``
tokens; ``norm_in`` / ``norm_in_t`` (LayerNorm), then the sinusoidal embeddings are added; ``t_layers`` layers per
branch alternate self-attention (even indices) and cross-attention (odd: each branch attends to the other's tokens
as they were before the layer). Every layer is pre-norm with LayerScale and ends with ``norm_out``, a GroupNorm with
one group over tokens x channels::

    self layer:   x = x + gamma_1 * attn(norm1(x), norm1(x));  x = x + gamma_2 * ff(norm2(x));  x = norm_out(x)
    cross layer:  y = q + gamma_1 * attn(norm1(q), norm2(k));  y = y + gamma_2 * ff(norm3(y));  y = norm_out(y)

``ff = linear2(gelu(linear1(.)))`` with exact GELU. :class:`MultiheadAttention` is
``torch.nn.MultiheadAttention(d, heads, batch_first=True)``: the packed ``in_proj_weight (3d, d)`` holds the query,
key and value projections stacked ``[q; k; v]``, head ``h`` is channels ``h hd : (h + 1) hd`` of each; the scores
of all heads are one ``F.batch_matmul`` over ``(B H, Tq, Tk)`` (float32: 8 x 2688 x 2688 values, 231 MB, for the
frequency self-attention of a released model).

Dropout (``config.t_dropout``, upstream's ``dropout``; 0.02 in the released configs) is built into a graph only when
a rate above 0 is given (the training graph, :func:`umx_nnabla.htdemucs.training_graph`; the eval graphs take 0 and
hold no dropout node), at the torch port's and upstream's four places in every layer: on the attention weights
(after the softmax, before they weigh the values: ``nn.MultiheadAttention``'s ``dropout``), on the attention branch
before ``gamma_1`` (``dropout1``), between the GELU and ``linear2`` (``dropout``) and after ``linear2``
(``dropout2``). ``F.dropout`` zeroes with probability ``p`` and scales the kept values by ``1 / (1 - p)``; its masks
come from NNabla's global generator at every forward (``nn.seed``: the trainer reseeds it per epoch).

Parameters keep upstream's names and layouts (``.`` written ``/``): ``layers/0/self_attn/in_proj_weight (3d, d)``,
``layers/0/linear1/weight (hidden, d)`` (``F.affine`` reads it transposed), LayerNorms' ``weight`` / ``bias`` ``(d,)``,
``gamma_1/scale (d,)``. Only the released settings are implemented
(:func:`core_spec.reference.htdemucs_transformer.check_transformer_config` refuses the others).
"""

from __future__ import annotations

import math

import nnabla as nn
import nnabla.functions as F
import numpy as np
from nnabla.initializer import ConstantInitializer, UniformInitializer

from core_spec.configs import HTDemucsConfig
from core_spec.reference.htdemucs_transformer import TRACE_PREFIX, check_transformer_config, transformer_trace_keys
from core_spec.trace import Recorder

from .htdemucs_embed import create_2d_sin_embedding, create_sin_embedding, torch_uniform
from .layers import channel_affine, gelu, parameter, reshape, standardise

__all__ = [
    "TRACE_PREFIX",
    "CrossAttentionLayer",
    "CrossTransformerEncoder",
    "MultiheadAttention",
    "SelfAttentionLayer",
    "check_transformer_config",
    "transformer_trace_keys",
]


def _linear(x: nn.Variable, fan_out: int, name: str, weight: str = "weight", bias: str = "bias") -> nn.Variable:
    """``torch.nn.Linear(d, fan_out)`` named ``name`` on ``x (B, T, d)``: ``name/weight (fan_out, d)``."""
    fan_in = x.shape[-1]
    with nn.parameter_scope(name):
        w = parameter(weight, (fan_out, fan_in), torch_uniform(fan_in))
        b = parameter(bias, (fan_out,), ConstantInitializer(0.0))
    return F.affine(x, F.transpose(w, (1, 0)), b, base_axis=x.ndim - 1)


def _affine_last(x: nn.Variable, weight: nn.Variable, bias: nn.Variable | None) -> nn.Variable:
    """``x * weight + bias`` over the last axis of ``x (B, T, d)`` (``weight``, ``bias`` ``(d,)``): the channels moved
    first, :func:`umx_nnabla.layers.channel_affine`, moved back (4x faster than NNabla's broadcasting ``Mul2`` +
    ``Add2`` on the CPU)."""
    y = channel_affine(F.transpose(x, (0, 2, 1)), weight, bias)
    return F.transpose(y, (0, 2, 1))


def _layer_norm(x: nn.Variable, name: str) -> nn.Variable:
    """``torch.nn.LayerNorm(d)`` named ``name`` over the last axis of ``x (B, T, d)``: biased variance, eps 1e-5."""
    d = x.shape[-1]
    with nn.parameter_scope(name):
        weight = parameter("weight", (d,), ConstantInitializer(1.0))
        bias = parameter("bias", (d,), ConstantInitializer(0.0))
    return _affine_last(standardise(x, (x.ndim - 1,)), weight, bias)


def _group_norm_1(x: nn.Variable, name: str) -> nn.Variable:
    """``norm_out``: ``GroupNorm(1, d)`` on ``x (B, tokens, d)``: statistics over all tokens and channels of an
    item, per-channel affine (``name/weight``, ``name/bias`` ``(d,)``)."""
    d = x.shape[-1]
    with nn.parameter_scope(name):
        weight = parameter("weight", (d,), ConstantInitializer(1.0))
        bias = parameter("bias", (d,), ConstantInitializer(0.0))
    return _affine_last(standardise(x, (1, 2)), weight, bias)


def _layer_scale(x: nn.Variable, name: str) -> nn.Variable:
    """``LayerScale`` named ``name`` (channel-last): ``name/scale (d,)`` times ``x (B, T, d)`` (init 1e-4)."""
    d = x.shape[-1]
    with nn.parameter_scope(name):
        scale = parameter("scale", (d,), ConstantInitializer(1e-4))
    return _affine_last(x, scale, None)


def _dropout(x: nn.Variable, p: float) -> nn.Variable:
    """``F.dropout(x, p)`` (zeroes with probability ``p``, scales the rest by ``1 / (1 - p)``); ``x`` itself, no
    node, for ``p == 0``."""
    return F.dropout(x, p=p) if p > 0 else x


class MultiheadAttention:
    """``torch.nn.MultiheadAttention(dim, num_heads, batch_first=True)`` named ``name``, no mask.

    Parameters: ``name/in_proj_weight (3 dim, dim)``, ``name/in_proj_bias (3 dim,)``, ``name/out_proj/weight``,
    ``name/out_proj/bias``.
    """

    def __init__(self, dim: int, num_heads: int, name: str):
        if dim % num_heads:
            raise ValueError(f"MultiheadAttention: {num_heads} heads do not divide the width {dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.name = name

    def __call__(self, query: nn.Variable, key: nn.Variable, value: nn.Variable, dropout: float = 0.0) -> nn.Variable:
        """``query (B, Tq, d)``, ``key`` / ``value (B, Tk, d)`` -> ``(B, Tq, d)``: per head
        ``softmax(q k^T / sqrt(hd)) v``, heads concatenated in channel order, then ``out_proj``; ``dropout``: the
        attention weights' dropout (training graphs; 0: none)."""
        d, h = self.dim, self.num_heads
        hd = d // h
        with nn.parameter_scope(self.name):
            limit = math.sqrt(6.0 / (d + 3 * d))  # xavier_uniform_ of the packed (3d, d) weight
            w_in = parameter("in_proj_weight", (3 * d, d), UniformInitializer((-limit, limit)))
            b_in = parameter("in_proj_bias", (3 * d,), ConstantInitializer(0.0))

            def heads(x: nn.Variable, part: int) -> nn.Variable:  # (B, T, d) -> (B H, T, hd)
                w = F.slice(w_in, (part * d, 0), ((part + 1) * d, d))
                b = F.slice(b_in, (part * d,), ((part + 1) * d,))
                y = F.affine(x, F.transpose(w, (1, 0)), b, base_axis=2)
                bsz, t = x.shape[0], x.shape[1]
                y = F.transpose(reshape(y, (bsz, t, h, hd)), (0, 2, 1, 3))
                return reshape(y, (bsz * h, t, hd))

            q, k, v = heads(query, 0), heads(key, 1), heads(value, 2)
            scores = F.batch_matmul(q * (1.0 / math.sqrt(hd)), k, transpose_b=True)  # (B H, Tq, Tk), q scaled first
            out = F.batch_matmul(_dropout(F.softmax(scores, axis=2), dropout), v)  # (B H, Tq, hd)
            bsz, tq = query.shape[0], query.shape[1]
            out = reshape(F.transpose(reshape(out, (bsz, h, tq, hd)), (0, 2, 1, 3)), (bsz, tq, d))
            return _linear(out, d, "out_proj")


def _feed_forward(x: nn.Variable, hidden: int, dropout: float = 0.0) -> nn.Variable:
    """``dropout2(linear2(dropout(gelu(linear1(x)))))`` (both dropouts at ``dropout``; 0: none)."""
    h = _dropout(gelu(_linear(x, hidden, "linear1")), dropout)
    return _dropout(_linear(h, x.shape[-1], "linear2"), dropout)


class SelfAttentionLayer:
    """One self-attention layer (``MyTransformerEncoderLayer``, pre-norm, LayerScale, ``norm_out``) on ``(B, T, C)``,
    under the scope ``name``: ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``norm_out``,
    ``gamma_1``, ``gamma_2``."""

    def __init__(self, dim: int, config: HTDemucsConfig, name: str):
        self.dim = dim
        self.hidden = int(dim * config.t_hidden_scale)
        self.heads = config.t_heads
        self.name = name

    def __call__(self, x: nn.Variable, dropout: float = 0.0) -> nn.Variable:
        """``x (B, T, C)`` -> ``(B, T, C)``; ``dropout``: the layer's four dropouts (module docstring; 0: none)."""
        with nn.parameter_scope(self.name):
            h = _layer_norm(x, "norm1")
            attn = MultiheadAttention(self.dim, self.heads, "self_attn")(h, h, h, dropout)
            x = x + _layer_scale(_dropout(attn, dropout), "gamma_1")
            x = x + _layer_scale(_feed_forward(_layer_norm(x, "norm2"), self.hidden, dropout), "gamma_2")
            return _group_norm_1(x, "norm_out")


class CrossAttentionLayer:
    """One cross-attention layer (``CrossTransformerEncoderLayer``, pre-norm) under the scope ``name``: the queries
    from ``q`` (``norm1``), the keys and values from ``k`` (``norm2``), the feed-forward on ``norm3``."""

    def __init__(self, dim: int, config: HTDemucsConfig, name: str):
        self.dim = dim
        self.hidden = int(dim * config.t_hidden_scale)
        self.heads = config.t_heads
        self.name = name

    def __call__(self, q: nn.Variable, k: nn.Variable, dropout: float = 0.0) -> nn.Variable:
        """``q (B, Tq, C)``, ``k (B, Tk, C)`` -> ``(B, Tq, C)``; ``dropout``: the layer's four dropouts (module
        docstring; 0: none)."""
        with nn.parameter_scope(self.name):
            kn = _layer_norm(k, "norm2")
            attn = MultiheadAttention(self.dim, self.heads, "cross_attn")(_layer_norm(q, "norm1"), kn, kn, dropout)
            x = q + _layer_scale(_dropout(attn, dropout), "gamma_1")
            x = x + _layer_scale(_feed_forward(_layer_norm(x, "norm3"), self.hidden, dropout), "gamma_2")
            return _group_norm_1(x, "norm_out")


class CrossTransformerEncoder:
    """The cross-transformer between the two branches (module docstring), under the scope ``name``: ``norm_in``,
    ``norm_in_t``, ``layers/<i>`` (frequency tokens), ``layers_t/<i>`` (time tokens): a
    :class:`SelfAttentionLayer` at even ``i``, a :class:`CrossAttentionLayer` at odd ``i``."""

    def __init__(self, config: HTDemucsConfig, name: str = "crosstransformer"):
        check_transformer_config(config)
        dim = config.transformer_channels
        self.dim = dim
        self.weight_pos_embed = float(config.t_weight_pos_embed)
        self.max_period = float(config.t_max_period)
        self.name = name

        def make(i: int, branch: str) -> SelfAttentionLayer | CrossAttentionLayer:
            kind = SelfAttentionLayer if i % 2 == 0 else CrossAttentionLayer  # t_cross_first=False
            return kind(dim, config, f"{branch}/{i}")

        self.layers = [make(i, "layers") for i in range(config.t_layers)]
        self.layers_t = [make(i, "layers_t") for i in range(config.t_layers)]

    def __call__(
        self, x: nn.Variable, xt: nn.Variable, keep: Recorder | None = None, dropout: float = 0.0
    ) -> tuple[nn.Variable, nn.Variable]:
        """The two branches through the transformer.

        Args:
            x: the frequency branch ``(B, C, Fr, T1)``; xt: the time branch ``(B, C, T2)``.
            keep: records every layer's output tokens ``(B, tokens, C)`` under
                :func:`~core_spec.reference.htdemucs_transformer.transformer_trace_keys`.
            dropout: every layer's dropouts (training graphs: ``config.t_dropout``; 0, the default: none).

        Returns:
            ``(x, xt)`` shaped as given.
        """
        b, c, nb_freqs, t1 = x.shape
        t2 = xt.shape[2]
        if c != self.dim or xt.shape[1] != c:
            raise ValueError(f"CrossTransformerEncoder: x {x.shape} and xt {xt.shape} must have {self.dim} channels")
        pos_2d = create_2d_sin_embedding(c, nb_freqs, t1, max_period=self.max_period)  # (1, C, Fr, T1)
        pos_1d = create_sin_embedding(t2, c, max_period=self.max_period)  # (T2, 1, C)
        pos_2d = np.ascontiguousarray(pos_2d.transpose(0, 3, 2, 1).reshape(1, t1 * nb_freqs, c))
        pos_1d = np.ascontiguousarray(pos_1d.transpose(1, 0, 2))
        with nn.parameter_scope(self.name):
            tokens = reshape(F.transpose(x, (0, 3, 2, 1)), (b, t1 * nb_freqs, c))  # time-major
            w = self.weight_pos_embed
            x = _layer_norm(tokens, "norm_in") + nn.Variable.from_numpy_array((w * pos_2d).astype(np.float32))
            xt = _layer_norm(F.transpose(xt, (0, 2, 1)), "norm_in_t") + nn.Variable.from_numpy_array(
                (w * pos_1d).astype(np.float32)
            )
            for i, (layer, layer_t) in enumerate(zip(self.layers, self.layers_t, strict=True)):
                if i % 2 == 0:
                    x_new, xt = layer(x, dropout=dropout), layer_t(xt, dropout=dropout)
                else:  # both branches read the other's tokens from before this layer
                    x_new, xt = layer(x, xt, dropout=dropout), layer_t(xt, x, dropout=dropout)
                x = x_new
                if keep is not None:
                    x = keep(f"{TRACE_PREFIX}layers.{i}", x)
                    xt = keep(f"{TRACE_PREFIX}layers_t.{i}", xt)
        x = F.transpose(reshape(x, (b, t1, nb_freqs, c)), (0, 3, 2, 1))
        return x, F.transpose(xt, (0, 2, 1))
