"""The cross-transformer of HTDemucs (demucs 4.x ``CrossTransformerEncoder``) as PyTorch modules with upstream's
state-dict names.

The spec is :mod:`core_spec.reference.htdemucs_transformer` (its docstring has the whole computation). The frequency
tokens ``(B, C, Fr, T1) -> (B, T1*Fr, C)`` (time-major) and the time tokens ``(B, C, T2) -> (B, T2, C)`` go through
``norm_in`` / ``norm_in_t`` (LayerNorm), get ``t_weight_pos_embed`` times the 2-D / 1-D sinusoidal embedding, then
``t_layers`` layers per branch: self-attention layers at even indices (:class:`SelfAttentionLayer`, upstream's
``MyTransformerEncoderLayer``), cross-attention layers at odd ones (:class:`CrossAttentionLayer`) in which each
branch attends to the other's tokens as they were before the layer. Every layer is pre-norm with LayerScale
(``gamma_1``, ``gamma_2``), an exact-GELU feed-forward, and ``norm_out``: GroupNorm(1) over tokens x channels
(:class:`TokenGroupNorm`). The attention is :class:`torch.nn.MultiheadAttention`, exported here under that name
as the other ports export their own (``batch_first=True``: its packed
``in_proj_weight`` / ``in_proj_bias`` and ``out_proj`` are upstream's names). The modules hold the weights; the
computation is :func:`_attention`: the projections, then :func:`torch.nn.functional.scaled_dot_product_attention`,
whose CPU kernel is flash attention (the ``heads x Tq x Tk`` scores are never held at once: 8 x 2688 x 2688 floats
are 231 MB in float32). Upstream's self-attention in eval takes ``nn.MultiheadAttention``'s fused path instead,
which on the CPU multiplies out the whole score matrix; the result is the same function (float32 rounding
differs, within the float32 rows).

Only the released settings are implemented: :func:`core_spec.reference.htdemucs_transformer.check_transformer_config`
refuses any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import MultiheadAttention

from core_spec.configs import HTDemucsConfig
from core_spec.reference.htdemucs_transformer import TRACE_PREFIX, check_transformer_config, transformer_trace_keys
from core_spec.trace import Recorder

from .htdemucs_embed import create_2d_sin_embedding, create_sin_embedding

__all__ = [
    "TRACE_PREFIX",
    "CrossAttentionLayer",
    "CrossTransformerEncoder",
    "LayerScale",
    "MultiheadAttention",
    "SelfAttentionLayer",
    "TokenGroupNorm",
    "check_transformer_config",
    "transformer_trace_keys",
]

LAYER_NORM_EPS = 1e-5
LAYER_SCALE_INIT = 1e-4  # upstream's init_values (training only)


def _attention(mha: MultiheadAttention, query: Tensor, key: Tensor) -> Tensor:
    """``mha(query, key, key)`` (``batch_first``, no mask) through flash attention: ``query (B, Tq, C)``,
    ``key (B, Tk, C)`` (keys and values) -> ``(B, Tq, C)``. The packed ``in_proj_weight`` ``(3C, C)`` holds the
    query, key and value projections stacked; head ``h`` is channels ``h C/H : (h + 1) C/H`` of each. Self-attention
    (``key is query``) projects all three in one product. Attention dropout: training only."""
    b, tq, c = query.shape
    heads = mha.num_heads
    w, bias = mha.in_proj_weight, mha.in_proj_bias

    def split(x: Tensor, parts: int) -> tuple[Tensor, ...]:  # (B, T, parts * C) -> parts x (B, H, T, C / H)
        return x.unflatten(-1, (parts, heads, c // heads)).permute(2, 0, 3, 1, 4).unbind(0)

    if key is query:
        q, k, v = split(F.linear(query, w, bias), 3)
    else:
        (q,) = split(F.linear(query, w[:c], bias[:c]), 1)
        k, v = split(F.linear(key, w[c:], bias[c:]), 2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=mha.dropout if mha.training else 0.0)
    return mha.out_proj(out.transpose(1, 2).reshape(b, tq, c))


def _feed_forward(layer: SelfAttentionLayer | CrossAttentionLayer, x: Tensor) -> Tensor:
    """``linear2(gelu(linear1(x)))`` (dropouts: training only)."""
    return layer.dropout2(layer.linear2(layer.dropout(F.gelu(layer.linear1(x)))))


class SelfAttentionLayer(nn.Module):
    """A self-attention layer (``MyTransformerEncoderLayer``, pre-norm, LayerScale, ``norm_out``):
    ``x = x + gamma_1 * attn(norm1(x), norm1(x))``, ``x = x + gamma_2 * ff(norm2(x))``, ``x = norm_out(x)``."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm_out = TokenGroupNorm(1, dim)
        self.gamma_1 = LayerScale(dim)
        self.gamma_2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(B, T, C)`` -> ``(B, T, C)``."""
        h = self.norm1(x)
        x = x + self.gamma_1(self.dropout1(_attention(self.self_attn, h, h)))
        x = x + self.gamma_2(_feed_forward(self, self.norm2(x)))
        return self.norm_out(x)


class CrossAttentionLayer(nn.Module):
    """A cross-attention layer (``CrossTransformerEncoderLayer``, pre-norm), queries from ``q``, keys and values
    from the other branch's ``k``: ``y = q + gamma_1 * attn(norm1(q), norm2(k))``,
    ``y = y + gamma_2 * ff(norm3(y))``, ``y = norm_out(y)``."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_out = TokenGroupNorm(1, dim)
        self.gamma_1 = LayerScale(dim)
        self.gamma_2 = LayerScale(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        """Tokens ``q (B, Tq, C)`` attending to ``k (B, Tk, C)`` -> ``(B, Tq, C)``."""
        kn = self.norm2(k)
        attn = _attention(self.cross_attn, self.norm1(q), kn)
        x = q + self.gamma_1(self.dropout1(attn))
        x = x + self.gamma_2(_feed_forward(self, self.norm3(x)))
        return self.norm_out(x)


class CrossTransformerEncoder(nn.Module):
    """The cross-transformer (module docstring), built from the model config: width
    ``config.transformer_channels``, ``t_heads`` heads, feed-forward ``int(width * t_hidden_scale)``,
    ``t_layers`` layers per branch (``layers`` for the frequency tokens, ``layers_t`` for the time tokens).

    Raises:
        NotImplementedError / ValueError: settings the spec does not implement
            (:func:`~core_spec.reference.htdemucs_transformer.check_transformer_config`).
    """

    def __init__(self, config: HTDemucsConfig) -> None:
        super().__init__()
        check_transformer_config(config)
        dim = config.transformer_channels
        hidden = int(dim * config.t_hidden_scale)
        self.max_period = config.t_max_period
        self.weight_pos_embed = config.t_weight_pos_embed
        self.norm_in = nn.LayerNorm(dim)
        self.norm_in_t = nn.LayerNorm(dim)
        self.layers = nn.ModuleList()
        self.layers_t = nn.ModuleList()
        for index in range(config.t_layers):
            kind = SelfAttentionLayer if index % 2 == 0 else CrossAttentionLayer  # t_cross_first=False
            self.layers.append(kind(dim, config.t_heads, hidden, config.t_dropout))
            self.layers_t.append(kind(dim, config.t_heads, hidden, config.t_dropout))

    def forward(self, x: Tensor, xt: Tensor, keep: Recorder | None = None) -> tuple[Tensor, Tensor]:
        """Run both branches.

        Args:
            x: the frequency branch ``(B, C, Fr, T1)``; xt: the time branch ``(B, C, T2)``.
            keep: records each layer's output tokens as ``crosstransformer.layers.{i}`` / ``layers_t.{i}``.

        Returns:
            ``(x, xt)``: ``(B, C, Fr, T1)`` and ``(B, C, T2)``.
        """
        B, C, Fr, T1 = x.shape
        T2 = xt.shape[-1]
        pos_2d = create_2d_sin_embedding(C, Fr, T1, self.max_period, x.dtype, x.device)  # (1, C, Fr, T1)
        pos_1d = create_sin_embedding(T2, C, 0, self.max_period, xt.dtype, xt.device)  # (T2, 1, C)
        x = self.norm_in(_tokens(x)) + self.weight_pos_embed * _tokens(pos_2d)
        xt = self.norm_in_t(xt.transpose(1, 2)) + self.weight_pos_embed * pos_1d.transpose(0, 1)
        for index, (layer, layer_t) in enumerate(zip(self.layers, self.layers_t, strict=True)):
            if index % 2 == 0:
                x, xt = layer(x), layer_t(xt)
            else:  # both read the other branch's tokens from before this layer
                x, xt = layer(x, xt), layer_t(xt, x)
            if keep is not None:
                keep(f"{TRACE_PREFIX}layers.{index}", x)
                keep(f"{TRACE_PREFIX}layers_t.{index}", xt)
        x = x.reshape(B, T1, Fr, C).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)


class LayerScale(nn.Module):
    """``LayerScale`` on channels-last tokens ``(B, T, C)``: ``scale * x``; the state dict holds ``scale``
    ``(C,)``."""

    def __init__(self, channels: int, init: float = LAYER_SCALE_INIT) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


class TokenGroupNorm(nn.GroupNorm):
    """``norm_out`` (upstream's ``MyGroupNorm``): a GroupNorm of tokens ``(B, T, C)``, the statistics of each group
    over all its tokens and channels, the affine per channel."""

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` -> ``(B, T, C)``."""
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _tokens(x: Tensor) -> Tensor:
    """``(B, C, Fr, T1) -> (B, T1*Fr, C)``, time-major (token ``t1 * Fr + fr``)."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1, x.shape[1])
