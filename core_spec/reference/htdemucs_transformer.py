"""The cross-transformer of HTDemucs (demucs 4.x ``CrossTransformerEncoder``), in float64 NumPy, eval mode.

Two token sequences meet at the bottom of the U-Net: the frequency branch ``x (B, C, Fr, T1)`` and the time branch
``xt (B, C, T2)``, ``C = config.transformer_channels``. :func:`cross_transformer`

1. flattens ``x`` to ``(B, T1*Fr, C)`` tokens **time-major** (token ``t1 * Fr + fr``; einops
   ``"b c fr t1 -> b (t1 fr) c"``) and ``xt`` to ``(B, T2, C)``;
2. applies ``norm_in`` / ``norm_in_t`` (LayerNorm over the channels), *then* adds
   ``t_weight_pos_embed *`` the 2-D sinusoidal embedding to ``x`` and the 1-D one to ``xt``;
3. runs ``t_layers`` layers per branch, alternating: even layers (``t_cross_first=False``) are self-attention
   layers (:func:`self_attention_layer`) in each branch on its own; odd layers are cross-attention layers
   (:func:`cross_attention_layer`) in which the frequency tokens attend to the time tokens and the time tokens to
   the frequency tokens **as they were before this layer** (both read the pre-update tokens);
4. turns the tokens back into ``(B, C, Fr, T1)`` and ``(B, C, T2)``.

Every layer is pre-norm (``norm_first``) with LayerScale (``gamma_1``, ``gamma_2``: a per-channel product), an
exact-GELU feed-forward ``linear2(gelu(linear1(.)))`` of width ``int(C * t_hidden_scale)``, and ends with
``norm_out``: a **GroupNorm with one group over tokens x channels** of each item (statistics over the whole
sequence, not per token as a LayerNorm's; per-channel affine)::

    self layer:   x = x + gamma_1 * attn(norm1(x), norm1(x));  x = x + gamma_2 * ff(norm2(x));  x = norm_out(x)
    cross layer:  y = q + gamma_1 * attn(norm1(q), norm2(k));  y = y + gamma_2 * ff(norm3(y));  y = norm_out(y)

The attention is ``torch.nn.MultiheadAttention(C, t_heads, batch_first=True)`` (:func:`multihead_attention`).

Weights are the upstream state-dict names under ``prefix`` (``"crosstransformer."``):
``layers.{i}.self_attn.in_proj_weight`` ... (the inventory of :mod:`core_spec.params`), ``layers_t.{i}`` for the
time branch; cross layers name their attention ``cross_attn`` and have a ``norm3``.

Only the released settings are implemented (every released model uses them); any other value of an option that
changes the evaluation output raises ``NotImplementedError`` naming ``option=value`` (:func:`check_transformer_config`).
Options that do not act at evaluation (``t_dropout``, ``t_weight_decay``, ``t_lr``) or only act with an option that is
refused (``t_cape_*`` with ``t_emb="cape"``, ``t_max_positions`` with ``"scaled"``, ``t_mask_*``,
``t_sparse_attn_window``, ``t_global_window``, ``t_sparsity``, ``t_auto_sparsity`` with sparse attention) are
accepted with any value. ``t_weight_pos_embed`` and ``t_max_period`` take any value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core_spec.configs import HTDemucsConfig
from core_spec.reference.htdemucs_embed import create_2d_sin_embedding, create_sin_embedding
from core_spec.reference.layers import gelu, group_norm, layer_norm, linear
from core_spec.trace import Recorder

__all__ = [
    "TRACE_PREFIX",
    "check_transformer_config",
    "cross_attention_layer",
    "cross_transformer",
    "multihead_attention",
    "self_attention_layer",
    "transformer_trace_keys",
]

# the name of the model's CrossTransformerEncoder: trace keys are f"{TRACE_PREFIX}layers.{i}" / "layers_t.{i}"
TRACE_PREFIX = "crosstransformer."

Weights = Mapping[str, np.ndarray]


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def check_transformer_config(config: HTDemucsConfig) -> None:
    """Refuse a config whose cross-transformer this module does not implement.

    Raises:
        NotImplementedError: naming every ``option=value`` that differs from the implemented (released) settings:
            ``t_emb`` other than ``"sin"``, ``t_sin_random_shift`` other than 0 (upstream draws a random offset of
            the 1-D embedding at evaluation too), ``t_norm_in`` False, ``t_norm_in_group``, ``t_group_norm``,
            ``t_norm_first`` False, ``t_norm_out`` other than True (one group), ``t_layer_scale`` False,
            ``t_gelu`` False (ReLU), ``t_cross_first`` True, ``t_sparse_self_attn`` / ``t_sparse_cross_attn``.
        ValueError: no transformer (``t_layers < 1``), or ``t_heads`` does not divide the width.
    """
    wanted = {
        "t_emb": "sin",
        "t_sin_random_shift": 0,
        "t_norm_in": True,
        "t_norm_in_group": False,
        "t_group_norm": False,
        "t_norm_first": True,
        "t_norm_out": True,
        "t_layer_scale": True,
        "t_gelu": True,
        "t_cross_first": False,
        "t_sparse_self_attn": False,
        "t_sparse_cross_attn": False,
    }
    # t_norm_out / t_group_norm / t_norm_in_group are group counts upstream (int(...)): 1 == True, 0 == False
    bad = [f"{name}={getattr(config, name)!r}" for name, value in wanted.items() if getattr(config, name) != value]
    if bad:
        raise NotImplementedError(f"the spec's cross-transformer does not implement {', '.join(bad)}")
    if config.t_layers < 1:
        raise ValueError(f"t_layers={config.t_layers}: the model has no cross-transformer")
    if config.transformer_channels % config.t_heads:
        raise ValueError(f"t_heads={config.t_heads} does not divide the width {config.transformer_channels}")


def multihead_attention(
    w: Weights, prefix: str, query: np.ndarray, key: np.ndarray, value: np.ndarray, num_heads: int
) -> np.ndarray:
    """``torch.nn.MultiheadAttention(d, num_heads, batch_first=True)`` in eval mode, no mask.

    ``{prefix}in_proj_weight (3d, d)`` holds the query, key and value projections stacked in that order
    (``in_proj_bias (3d,)`` likewise); head ``h`` is channels ``h*hd : (h+1)*hd`` of each projection,
    ``hd = d / num_heads``. Per head: ``softmax(q k^T / sqrt(hd)) v``, the softmax over the keys; the heads are
    concatenated back in channel order and ``{prefix}out_proj`` (``weight (d, d)``, ``bias (d,)``) is applied.

    Args:
        query: ``(B, Tq, d)``; key, value: ``(B, Tk, d)``.

    Returns:
        ``(B, Tq, d)``.
    """
    query, key, value = _f64(query), _f64(key), _f64(value)
    d = query.shape[-1]
    if d % num_heads:
        raise ValueError(f"multihead_attention: {num_heads} heads do not divide the width {d}")
    if key.shape[-1] != d or value.shape[-1] != d or key.shape[:2] != value.shape[:2]:
        raise ValueError(f"multihead_attention: query {query.shape}, key {key.shape}, value {value.shape}")
    w_in, b_in = _f64(w[f"{prefix}in_proj_weight"]), _f64(w[f"{prefix}in_proj_bias"])
    if w_in.shape != (3 * d, d):
        raise ValueError(f"multihead_attention: {prefix}in_proj_weight is {w_in.shape}, expected {(3 * d, d)}")
    hd = d // num_heads

    def heads(x: np.ndarray, part: int) -> np.ndarray:  # (B, T, d) -> (B, H, T, hd)
        y = linear(x, w_in[part * d : (part + 1) * d], b_in[part * d : (part + 1) * d])
        return y.reshape(y.shape[0], y.shape[1], num_heads, hd).transpose(0, 2, 1, 3)

    q, k, v = heads(query, 0), heads(key, 1), heads(value, 2)
    scores = (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(hd)  # (B, H, Tq, Tk)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    attn = scores / scores.sum(axis=-1, keepdims=True)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(query.shape)  # (B, Tq, H, hd) -> (B, Tq, d)
    return linear(out, w[f"{prefix}out_proj.weight"], w[f"{prefix}out_proj.bias"])


def _norm(w: Weights, name: str, x: np.ndarray) -> np.ndarray:
    """LayerNorm ``name`` over the channels of ``x (B, T, C)``."""
    return layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"])


def _feed_forward(w: Weights, prefix: str, x: np.ndarray) -> np.ndarray:
    """``linear2(gelu(linear1(x)))`` on ``x (B, T, C)``."""
    h = gelu(linear(x, w[f"{prefix}linear1.weight"], w[f"{prefix}linear1.bias"]))
    return linear(h, w[f"{prefix}linear2.weight"], w[f"{prefix}linear2.bias"])


def _norm_out(w: Weights, prefix: str, x: np.ndarray) -> np.ndarray:
    """``norm_out``: GroupNorm(1, C) of ``x (B, T, C)`` with the statistics over all ``T x C`` values of an item."""
    y = group_norm(x.transpose(0, 2, 1), 1, w[f"{prefix}norm_out.weight"], w[f"{prefix}norm_out.bias"])
    return y.transpose(0, 2, 1)


def self_attention_layer(w: Weights, prefix: str, x: np.ndarray, config: HTDemucsConfig) -> np.ndarray:
    """One self-attention layer (``MyTransformerEncoderLayer``, pre-norm, LayerScale, ``norm_out``), module docstring.

    Args:
        prefix: the layer's state-dict prefix with its trailing dot (``"crosstransformer.layers.0."``).
        x: the tokens ``(B, T, C)``.

    Returns:
        ``(B, T, C)``.
    """
    check_transformer_config(config)
    x = _f64(x)
    h = _norm(w, f"{prefix}norm1", x)
    x = x + _f64(w[f"{prefix}gamma_1.scale"]) * multihead_attention(w, f"{prefix}self_attn.", h, h, h, config.t_heads)
    x = x + _f64(w[f"{prefix}gamma_2.scale"]) * _feed_forward(w, prefix, _norm(w, f"{prefix}norm2", x))
    return _norm_out(w, prefix, x)


def cross_attention_layer(w: Weights, prefix: str, q: np.ndarray, k: np.ndarray, config: HTDemucsConfig) -> np.ndarray:
    """One cross-attention layer (``CrossTransformerEncoderLayer``, pre-norm), module docstring.

    The queries come from ``q`` (normalised by ``norm1``), the keys and values from ``k`` (normalised by
    ``norm2``); the feed-forward reads ``norm3``.

    Args:
        prefix: the layer's state-dict prefix with its trailing dot (``"crosstransformer.layers.1."``).
        q: the updated branch's tokens ``(B, Tq, C)``; k: the other branch's tokens ``(B, Tk, C)``.

    Returns:
        ``(B, Tq, C)``.
    """
    check_transformer_config(config)
    q, k = _f64(q), _f64(k)
    kn = _norm(w, f"{prefix}norm2", k)
    attn = multihead_attention(w, f"{prefix}cross_attn.", _norm(w, f"{prefix}norm1", q), kn, kn, config.t_heads)
    x = q + _f64(w[f"{prefix}gamma_1.scale"]) * attn
    x = x + _f64(w[f"{prefix}gamma_2.scale"]) * _feed_forward(w, prefix, _norm(w, f"{prefix}norm3", x))
    return _norm_out(w, prefix, x)


def cross_transformer(
    w: Weights,
    prefix: str,
    x: np.ndarray,
    xt: np.ndarray,
    config: HTDemucsConfig,
    *,
    pos_2d: np.ndarray | None = None,
    pos_1d: np.ndarray | None = None,
    keep: Recorder | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The cross-transformer (module docstring) on the two branches.

    Args:
        w: the weights, upstream state-dict names.
        prefix: the module's state-dict prefix with its trailing dot (``"crosstransformer."``).
        x: the frequency branch ``(B, C, Fr, T1)``; xt: the time branch ``(B, C, T2)``; ``C`` must be
            ``config.transformer_channels``.
        config: the model config (:func:`check_transformer_config` refuses what is not implemented).
        pos_2d: the 2-D embedding to add to ``x``, ``(1, C, Fr, T1)`` as :func:`create_2d_sin_embedding` gives it;
            default: computed in float64. Model-level parity tests inject upstream's (float32) one here.
        pos_1d: the 1-D embedding to add to ``xt``, ``(T2, 1, C)`` as :func:`create_sin_embedding` gives it;
            default: computed in float64 (shift 0).
        keep: records every layer's output tokens under :func:`transformer_trace_keys`.

    Returns:
        ``(x, xt)``: ``(B, C, Fr, T1)`` and ``(B, C, T2)``, float64.
    """
    check_transformer_config(config)
    x, xt = _f64(x), _f64(xt)
    if x.ndim != 4 or xt.ndim != 3 or x.shape[0] != xt.shape[0]:
        raise ValueError(f"cross_transformer: x must be (B, C, Fr, T1) and xt (B, C, T2), got {x.shape}, {xt.shape}")
    nb, c, nb_freqs, t1 = x.shape
    t2 = xt.shape[2]
    if c != config.transformer_channels or xt.shape[1] != c:
        raise ValueError(
            f"cross_transformer: x {x.shape} and xt {xt.shape} must have {config.transformer_channels} channels"
        )
    if pos_2d is None:
        pos_2d = create_2d_sin_embedding(c, nb_freqs, t1, max_period=config.t_max_period)
    if pos_1d is None:
        pos_1d = create_sin_embedding(t2, c, max_period=config.t_max_period)
    pos_2d, pos_1d = _f64(pos_2d), _f64(pos_1d)
    if pos_2d.shape != (1, c, nb_freqs, t1) or pos_1d.shape != (t2, 1, c):
        raise ValueError(
            f"cross_transformer: embeddings {pos_2d.shape}, {pos_1d.shape}, "
            f"expected {(1, c, nb_freqs, t1)}, {(t2, 1, c)}"
        )
    keep = keep if keep is not None else Recorder(None, transformer_trace_keys(config))

    def tokens(a: np.ndarray) -> np.ndarray:  # (b, c, fr, t1) -> (b, t1*fr, c), time-major
        return a.transpose(0, 3, 2, 1).reshape(a.shape[0], -1, a.shape[1])

    weight = config.t_weight_pos_embed
    x = _norm(w, f"{prefix}norm_in", tokens(x)) + weight * tokens(pos_2d)
    xt = _norm(w, f"{prefix}norm_in_t", xt.transpose(0, 2, 1)) + weight * pos_1d.transpose(1, 0, 2)
    for i in range(config.t_layers):
        freq, time = f"{prefix}layers.{i}.", f"{prefix}layers_t.{i}."
        if i % 2 == 0:  # t_cross_first=False: self-attention at even indices
            x_new = self_attention_layer(w, freq, x, config)
            xt = self_attention_layer(w, time, xt, config)
        else:  # both branches read the other's tokens from before this layer
            x_new = cross_attention_layer(w, freq, x, xt, config)
            xt = cross_attention_layer(w, time, xt, x, config)
        x = keep(f"{TRACE_PREFIX}layers.{i}", x_new)
        keep(f"{TRACE_PREFIX}layers_t.{i}", xt)
    x = x.reshape(nb, t1, nb_freqs, c).transpose(0, 3, 2, 1)
    return x, xt.transpose(0, 2, 1)


def transformer_trace_keys(config: HTDemucsConfig) -> tuple[str, ...]:
    """The keys :func:`cross_transformer` records: ``crosstransformer.layers.{i}`` then
    ``crosstransformer.layers_t.{i}`` for each layer ``i`` in order (each ``(B, tokens, C)``, what a forward hook on
    upstream's module receives)."""
    keys: list[str] = []
    for i in range(config.t_layers):
        keys += [f"{TRACE_PREFIX}layers.{i}", f"{TRACE_PREFIX}layers_t.{i}"]
    return tuple(keys)
