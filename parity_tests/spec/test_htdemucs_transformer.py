"""The HTDemucs cross-transformer of the spec (core_spec.reference.htdemucs_transformer) on its own, NumPy only.

Shapes and trace keys, the refused options, the attention against a slow loop over batch items, heads and queries,
the layers against their formulas written out here from the public pieces, ``norm_out`` as one group over
tokens x channels (told apart from a per-token LayerNorm), permutation properties of attention without positions,
and the cross layers reading the other branch's tokens from before the layer.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from core_spec.configs import HTDemucsConfig
from core_spec.reference.htdemucs_embed import create_2d_sin_embedding, create_sin_embedding
from core_spec.reference.htdemucs_transformer import (
    check_transformer_config,
    cross_attention_layer,
    cross_transformer,
    multihead_attention,
    self_attention_layer,
    transformer_trace_keys,
)
from core_spec.reference.layers import gelu, group_norm, layer_norm, linear
from core_spec.seeded import random_weights
from core_spec.tolerances import check, check_distinct
from core_spec.trace import Recorder

STAGE = "htdemucs.layer"
PREFIX = "crosstransformer."
CONFIG = HTDemucsConfig(sources=("a", "b"), channels=8, bottom_channels=16, t_heads=4, t_layers=3)
WEIGHTS = random_weights(CONFIG, seed=7)


def _tokens(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng([seed, *shape]).standard_normal(shape)


def _attention_weights(d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, d])
    return {
        "in_proj_weight": rng.uniform(-0.5, 0.5, (3 * d, d)),
        "in_proj_bias": rng.normal(0.0, 0.1, 3 * d),
        "out_proj.weight": rng.uniform(-0.3, 0.3, (d, d)),
        "out_proj.bias": rng.normal(0.0, 0.1, d),
    }


def _slow_attention(w: dict[str, np.ndarray], q: np.ndarray, k: np.ndarray, num_heads: int) -> np.ndarray:
    """Attention one batch item, head and query at a time, with scalar softmax; keys are values."""
    b, tq, d = q.shape
    hd = d // num_heads
    wq, wk, wv = np.split(w["in_proj_weight"], 3)
    bq, bk, bv = np.split(w["in_proj_bias"], 3)
    out = np.zeros((b, tq, d))
    for n in range(b):
        for h in range(num_heads):
            rows = slice(h * hd, (h + 1) * hd)
            keys = [wk[rows] @ k[n, j] + bk[rows] for j in range(k.shape[1])]
            values = [wv[rows] @ k[n, j] + bv[rows] for j in range(k.shape[1])]
            for i in range(tq):
                query = wq[rows] @ q[n, i] + bq[rows]
                scores = [float(query @ key) / math.sqrt(hd) for key in keys]
                top = max(scores)
                e = [math.exp(s - top) for s in scores]
                total = sum(e)
                out[n, i, rows] = sum((ej / total) * v for ej, v in zip(e, values))
    return out @ w["out_proj.weight"].T + w["out_proj.bias"]


@pytest.mark.parametrize("d,heads,tq,tk,is_self", [(16, 4, 5, 5, True), (16, 4, 3, 7, False), (12, 3, 4, 6, False)])
def test_attention_is_the_per_head_loop(d, heads, tq, tk, is_self):
    w = _attention_weights(d, seed=d + tk)
    q = _tokens((2, tq, d), 1)
    k = q if is_self else _tokens((2, tk, d), 2)
    out = multihead_attention(w, "", q, k, k, heads)
    assert out.shape == (2, tq, d)
    check(out, _slow_attention(w, q, k, heads), STAGE, "float64", what=f"attention d={d} heads={heads}")


def test_attention_heads_are_contiguous_channel_blocks():
    # the same weights read as if head h held channels h, h + H, ... (an interleaved split) give another result
    d, heads = 16, 4
    w = _attention_weights(d, seed=3)
    q = _tokens((1, 6, d), 4)
    perm = np.arange(d).reshape(d // heads, heads).T.reshape(-1)
    rows = np.concatenate([perm, d + perm, 2 * d + perm])
    interleaved = dict(w, in_proj_weight=w["in_proj_weight"][rows], in_proj_bias=w["in_proj_bias"][rows])
    interleaved["out_proj.weight"] = w["out_proj.weight"][:, perm]
    out = multihead_attention(w, "", q, q, q, heads)
    check_distinct(multihead_attention(interleaved, "", q, q, q, heads), out, STAGE, "float64", what="interleaved")


def _layer(prefix: str, x: np.ndarray, k: np.ndarray | None, out_norm: str) -> np.ndarray:
    """A layer written out from the public pieces; ``out_norm``: "group" (upstream) or "layer" (a wrong variant)."""
    w = {name: np.asarray(v, dtype=np.float64) for name, v in WEIGHTS.items() if name.startswith(prefix)}

    def norm(name: str, a: np.ndarray) -> np.ndarray:
        return layer_norm(a, w[f"{prefix}{name}.weight"], w[f"{prefix}{name}.bias"])

    if k is None:
        h = norm("norm1", x)
        attn = multihead_attention(w, f"{prefix}self_attn.", h, h, h, CONFIG.t_heads)
        ff_norm = "norm2"
    else:
        kn = norm("norm2", k)
        attn = multihead_attention(w, f"{prefix}cross_attn.", norm("norm1", x), kn, kn, CONFIG.t_heads)
        ff_norm = "norm3"
    y = x + w[f"{prefix}gamma_1.scale"] * attn
    hidden = gelu(linear(norm(ff_norm, y), w[f"{prefix}linear1.weight"], w[f"{prefix}linear1.bias"]))
    y = y + w[f"{prefix}gamma_2.scale"] * linear(hidden, w[f"{prefix}linear2.weight"], w[f"{prefix}linear2.bias"])
    if out_norm == "layer":
        return norm("norm_out", y)
    # GroupNorm(1) of (B, C, T): one mean and variance per item over all tokens and channels
    return group_norm(y.transpose(0, 2, 1), 1, w[f"{prefix}norm_out.weight"], w[f"{prefix}norm_out.bias"]).transpose(
        0, 2, 1
    )


@pytest.mark.parametrize("cross", [False, True])
def test_layer_is_its_formula_with_a_group_norm_out(cross):
    x = _tokens((2, 9, 16), 5)
    k = _tokens((2, 4, 16), 6) if cross else None
    prefix = f"{PREFIX}layers.{1 if cross else 0}."
    out = (
        cross_attention_layer(WEIGHTS, prefix, x, k, CONFIG)
        if cross
        else self_attention_layer(WEIGHTS, prefix, x, CONFIG)
    )
    assert out.shape == x.shape
    check(out, _layer(prefix, x, k, "group"), STAGE, "float64", what=f"layer cross={cross}")
    check_distinct(out, _layer(prefix, x, k, "layer"), STAGE, "float64", what=f"LayerNorm norm_out cross={cross}")


def test_norm_out_statistics_are_over_tokens_and_channels():
    # with a unit affine norm_out, each item's mean over tokens x channels is zero, but not each token's
    w = dict(WEIGHTS)
    prefix = f"{PREFIX}layers.0."
    w[f"{prefix}norm_out.weight"] = np.ones(16)
    w[f"{prefix}norm_out.bias"] = np.zeros(16)
    out = self_attention_layer(w, prefix, _tokens((2, 9, 16), 8), CONFIG)
    check(out - out.mean(axis=(1, 2), keepdims=True), out, STAGE, "float64", what="item mean removed")
    check_distinct(out - out.mean(axis=2, keepdims=True), out, STAGE, "float64", what="token means removed")


def test_self_attention_layer_is_permutation_equivariant():
    x = _tokens((2, 10, 16), 9)
    perm = np.random.default_rng(0).permutation(10)
    prefix = f"{PREFIX}layers_t.0."
    out = self_attention_layer(WEIGHTS, prefix, x, CONFIG)
    check(self_attention_layer(WEIGHTS, prefix, x[:, perm], CONFIG), out[:, perm], STAGE, "float64")


def test_cross_attention_layer_ignores_the_order_of_keys():
    q, k = _tokens((2, 5, 16), 10), _tokens((2, 8, 16), 11)
    perm = np.random.default_rng(1).permutation(8)
    prefix = f"{PREFIX}layers.1."
    out = cross_attention_layer(WEIGHTS, prefix, q, k, CONFIG)
    check(cross_attention_layer(WEIGHTS, prefix, q, k[:, perm], CONFIG), out, STAGE, "float64")


def _run(config: HTDemucsConfig = CONFIG, **kwargs) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    trace: dict[str, np.ndarray] = {}
    x, xt = _tokens((2, 16, 3, 5), 12), _tokens((2, 16, 7), 13)
    out = cross_transformer(
        WEIGHTS, PREFIX, x, xt, config, keep=Recorder(trace, transformer_trace_keys(config)), **kwargs
    )
    return *out, trace


def test_shapes_and_trace_keys():
    x, xt, trace = _run()
    assert x.shape == (2, 16, 3, 5) and xt.shape == (2, 16, 7)
    assert x.dtype == xt.dtype == np.float64
    keys = transformer_trace_keys(CONFIG)
    assert keys == tuple(f"crosstransformer.{b}.{i}" for i in range(3) for b in ("layers", "layers_t"))
    assert list(trace) == list(keys)
    for i in range(3):
        assert trace[f"crosstransformer.layers.{i}"].shape == (2, 15, 16)
        assert trace[f"crosstransformer.layers_t.{i}"].shape == (2, 7, 16)
    # the outputs are the last layer's tokens, the frequency tokens time-major ((t1 fr) in einops' words)
    np.testing.assert_array_equal(x.transpose(0, 3, 2, 1).reshape(2, 15, 16), trace["crosstransformer.layers.2"])
    np.testing.assert_array_equal(xt.transpose(0, 2, 1), trace["crosstransformer.layers_t.2"])


def test_layers_alternate_and_cross_layers_read_the_pre_update_tokens():
    _, _, trace = _run()
    x1, xt1 = trace["crosstransformer.layers.0"], trace["crosstransformer.layers_t.0"]
    x2 = cross_attention_layer(WEIGHTS, f"{PREFIX}layers.1.", x1, xt1, CONFIG)
    xt2 = cross_attention_layer(WEIGHTS, f"{PREFIX}layers_t.1.", xt1, x1, CONFIG)
    check(trace["crosstransformer.layers.1"], x2, STAGE, "float64", what="layer 1 (cross)")
    check(trace["crosstransformer.layers_t.1"], xt2, STAGE, "float64", what="layers_t 1 (cross)")
    after = cross_attention_layer(WEIGHTS, f"{PREFIX}layers_t.1.", xt1, x2, CONFIG)
    check_distinct(after, xt2, STAGE, "float64", what="time branch reading the updated frequency tokens")
    x3 = self_attention_layer(WEIGHTS, f"{PREFIX}layers.2.", x2, CONFIG)
    check(trace["crosstransformer.layers.2"], x3, STAGE, "float64", what="layer 2 (self)")


def test_injected_embeddings():
    x, xt, _ = _run()
    same = _run(pos_2d=create_2d_sin_embedding(16, 3, 5), pos_1d=create_sin_embedding(7, 16))
    np.testing.assert_array_equal(same[0], x)
    np.testing.assert_array_equal(same[1], xt)
    f32 = _run(pos_2d=create_2d_sin_embedding(16, 3, 5, dtype=np.float32), pos_1d=create_sin_embedding(7, 16))
    check_distinct(f32[0], x, STAGE, "float64", what="float32 2-D embedding")
    check_distinct(_run(config=replace(CONFIG, t_weight_pos_embed=0.5))[0], x, STAGE, "float64", what="pos weight")
    with pytest.raises(ValueError, match="embeddings"):
        _run(pos_2d=create_2d_sin_embedding(16, 5, 3))


@pytest.mark.parametrize(
    "option,value",
    [
        ("t_dropout", 0.1),
        ("t_weight_decay", 0.5),
        ("t_lr", 1e-3),
        ("t_cape_augment", False),
        ("t_max_positions", 7),
        ("t_mask_type", "jmask"),
        ("t_sparse_attn_window", 3),
        ("t_global_window", 4),
        ("t_sparsity", 0.5),
        ("t_auto_sparsity", True),
        ("t_norm_out", 1),
    ],
)
def test_options_without_effect_at_evaluation(option, value):
    x, xt, _ = _run()
    other = _run(config=replace(CONFIG, **{option: value}))
    np.testing.assert_array_equal(other[0], x)
    np.testing.assert_array_equal(other[1], xt)


@pytest.mark.parametrize(
    "option,value",
    [
        ("t_emb", "cape"),
        ("t_emb", "scaled"),
        ("t_sin_random_shift", 3),
        ("t_norm_in", False),
        ("t_norm_in_group", True),
        ("t_group_norm", 1),
        ("t_norm_first", False),
        ("t_norm_out", False),
        ("t_norm_out", 2),
        ("t_layer_scale", False),
        ("t_gelu", False),
        ("t_cross_first", True),
        ("t_sparse_self_attn", True),
        ("t_sparse_cross_attn", True),
    ],
)
def test_refuses_what_it_does_not_implement(option, value):
    config = replace(CONFIG, **{option: value})
    with pytest.raises(NotImplementedError, match=f"{option}={value!r}"):
        check_transformer_config(config)
    with pytest.raises(NotImplementedError, match=f"{option}={value!r}"):
        cross_transformer(WEIGHTS, PREFIX, _tokens((1, 16, 2, 2), 0), _tokens((1, 16, 3), 0), config)
    with pytest.raises(NotImplementedError, match=f"{option}={value!r}"):
        self_attention_layer(WEIGHTS, f"{PREFIX}layers.0.", _tokens((1, 3, 16), 0), config)


def test_refuses_bad_shapes_and_sizes():
    with pytest.raises(ValueError, match="no cross-transformer"):
        check_transformer_config(replace(CONFIG, t_layers=0))
    with pytest.raises(ValueError, match="does not divide"):
        check_transformer_config(replace(CONFIG, t_heads=3))
    with pytest.raises(ValueError, match="16 channels"):
        cross_transformer(WEIGHTS, PREFIX, _tokens((1, 8, 2, 2), 0), _tokens((1, 8, 3), 0), CONFIG)
    with pytest.raises(ValueError, match=r"\(B, C, Fr, T1\)"):
        cross_transformer(WEIGHTS, PREFIX, _tokens((1, 16, 4), 0), _tokens((1, 16, 3), 0), CONFIG)
    with pytest.raises(ValueError, match="heads do not divide"):
        q = _tokens((1, 2, 16), 0)
        multihead_attention(_attention_weights(16, 0), "", q, q, q, 3)
