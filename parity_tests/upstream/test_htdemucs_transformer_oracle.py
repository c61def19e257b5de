"""core_spec.reference.htdemucs_transformer against live demucs 4.1.0 in float64 (main env, parity_tests.oracle4).

One oracle subprocess builds ``demucs.htdemucs.HTDemucs(**constructor_kwargs(config))`` per case (so that its
``crosstransformer`` gets exactly the arguments HTDemucs passes), loads the seeded ``crosstransformer.*`` weights of
:func:`core_spec.seeded.random_weights` into it (strictly: the inventory's names are the module's state dict), runs
it in eval mode on seeded tokens and sends back every layer's output (forward hooks on ``layers.i`` /
``layers_t.i``), the two outputs, and the embeddings upstream adds (``create_2d_sin_embedding`` and
``_get_pos_embedding`` called as the forward calls them) with their dtype. Cases:

- ``small``: width 16, 4 heads, 5 layers, ``Fr x T1 = 4 x 6``, ``T2 = 11``, batch 2, under
  ``torch.set_default_dtype(torch.float64)`` (upstream's embeddings are then float64); the spec runs with its own
  float64 embeddings and with upstream's injected;
- ``pos``: the same with ``t_weight_pos_embed=0.5`` and ``t_max_period=5000``;
- ``f32emb``: the ``small`` model run as the model tests will run it, ``.double()`` under torch's default float32:
  upstream's embeddings are float32; the spec matches with them injected and is told apart without;
- ``w512`` / ``w384``: the released widths (``htdemucs``: 512, head_dim 64; ``htdemucs_6s``: 384, head_dim 48),
  8 heads, 2 layers (a self and a cross layer), a short token count.

``multihead_attention`` is also compared with ``torch.nn.MultiheadAttention(d, h, batch_first=True)`` in eval
under ``no_grad``, ``need_weights=False``: self-attention (``q is k is v``, which takes torch's fused fast path,
``aten::_native_multi_head_attention``, checked with the profiler) and cross-attention (the regular path).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from core_spec.configs import HTDemucsConfig, constructor_kwargs
from core_spec.reference.htdemucs_embed import create_2d_sin_embedding, create_sin_embedding
from core_spec.reference.htdemucs_transformer import cross_transformer, multihead_attention, transformer_trace_keys
from core_spec.seeded import random_weights
from core_spec.tolerances import check, check_distinct
from core_spec.trace import Recorder
from parity_tests.oracle4 import run_oracle4

pytestmark = pytest.mark.upstream

STAGE = "htdemucs.layer"
PREFIX = "crosstransformer."
_SMALL = {"sources": ("a", "b"), "channels": 8, "bottom_channels": 16, "t_heads": 4, "t_layers": 5}
CONFIGS = {
    "small": HTDemucsConfig(**_SMALL),
    "pos": HTDemucsConfig(**_SMALL, t_weight_pos_embed=0.5, t_max_period=5000.0),
    "f32emb": HTDemucsConfig(**_SMALL),
    "w512": HTDemucsConfig(sources=("a", "b"), channels=8, bottom_channels=512, t_heads=8, t_layers=2),
    "w384": HTDemucsConfig(sources=("a", "b"), channels=8, bottom_channels=384, t_heads=8, t_layers=2),
}
SHAPES = {  # (B, Fr, T1, T2)
    "small": (2, 4, 6, 11),
    "pos": (2, 4, 6, 11),
    "f32emb": (2, 4, 6, 11),
    "w512": (1, 4, 5, 9),
    "w384": (2, 3, 4, 7),
}
DEFAULT_DTYPE = {name: "float32" if name == "f32emb" else "float64" for name in CONFIGS}
# (d, heads, B, Tq, Tk, self-attention)
MHA = [(16, 4, 2, 7, 7, True), (16, 4, 2, 5, 9, False), (384, 8, 1, 6, 6, True), (384, 8, 2, 6, 10, False)]

_SNIPPET = """
from fractions import Fraction
from torch.profiler import ProfilerActivity, profile
from demucs.htdemucs import HTDemucs

NATIVE = "aten::_native_multi_head_attention"

def count_native(prof):
    return sum(1 for e in prof.events() if e.name == NATIVE)

for name, case in ARGS["cases"].items():
    torch.set_default_dtype(getattr(torch, case["default_dtype"]))
    kwargs = dict(case["kwargs"])
    kwargs["segment"] = Fraction(*kwargs["segment"])
    module = HTDemucs(**kwargs).crosstransformer.double().eval()
    state = {k.split("|")[2]: torch.from_numpy(v) for k, v in INPUTS.items() if k.startswith(f"w|{name}|")}
    module.load_state_dict(state, strict=True)
    for branch in ("layers", "layers_t"):
        for i, layer in enumerate(getattr(module, branch)):
            key = f"{name}|crosstransformer.{branch}.{i}"
            layer.register_forward_hook(lambda mod, inp, out, key=key: ARRAYS.__setitem__(key, out))
    x, xt = torch.from_numpy(INPUTS[f"x|{name}"]), torch.from_numpy(INPUTS[f"xt|{name}"])
    b, c, fr, t1 = x.shape
    t2 = xt.shape[2]
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out, out_t = module(x, xt)
    RESULT[f"{name}|native_mha"] = count_native(prof)
    ARRAYS[f"{name}|x"], ARRAYS[f"{name}|xt"] = out, out_t
    # the embeddings exactly as the forward builds them
    pos_2d = demucs.transformer.create_2d_sin_embedding(c, fr, t1, x.device, module.max_period)
    pos_1d = module._get_pos_embedding(t2, b, c, x.device)
    RESULT[f"{name}|dtypes"] = [str(pos_2d.dtype), str(pos_1d.dtype)]
    ARRAYS[f"{name}|pos_2d"], ARRAYS[f"{name}|pos_1d"] = pos_2d, pos_1d

torch.set_default_dtype(torch.float64)
for key in ARGS["mha"]:
    d, heads, b, tq, tk, is_self = map(int, key.split("."))
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True).eval()
    state = {k.split("|")[2]: torch.from_numpy(v) for k, v in INPUTS.items() if k.startswith(f"mha|{key}|")}
    mha.load_state_dict(state, strict=True)
    q = torch.from_numpy(INPUTS[f"q|{key}"])
    k = q if is_self else torch.from_numpy(INPUTS[f"k|{key}"])
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        ARRAYS[f"mha|{key}"] = mha(q, k, k, need_weights=False)[0]
    RESULT[f"mha|{key}|native_mha"] = count_native(prof)
"""


def _mha_key(case: tuple[int, int, int, int, int, bool]) -> str:
    return ".".join(str(int(v)) for v in case)


def _mha_weights(d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, d])
    bound = np.sqrt(6.0 / (4 * d))  # xavier_uniform over (3d, d), as torch initialises in_proj_weight
    return {
        "in_proj_weight": rng.uniform(-bound, bound, (3 * d, d)),
        "in_proj_bias": rng.normal(0.0, 0.1, 3 * d),
        "out_proj.weight": rng.uniform(-1 / np.sqrt(d), 1 / np.sqrt(d), (d, d)),
        "out_proj.bias": rng.normal(0.0, 0.1, d),
    }


@cache
def _weights(name: str) -> dict[str, np.ndarray]:
    """The seeded ``crosstransformer.*`` weights of a case, float32 as :func:`random_weights` gives them."""
    weights = random_weights(CONFIGS[name], seed=24)
    return {k: v for k, v in weights.items() if k.startswith(PREFIX)}


def _tokens(name: str) -> tuple[np.ndarray, np.ndarray]:
    b, fr, t1, t2 = SHAPES[name]
    c = CONFIGS[name].transformer_channels
    rng = np.random.default_rng([24, c, fr, t1, t2])
    return rng.standard_normal((b, c, fr, t1)), rng.standard_normal((b, c, t2))


def _inputs() -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    for name in CONFIGS:
        inputs.update({f"w|{name}|{k[len(PREFIX) :]}": v for k, v in _weights(name).items()})
        inputs[f"x|{name}"], inputs[f"xt|{name}"] = _tokens(name)
    for i, case in enumerate(MHA):
        d, _, b, tq, tk, is_self = case
        key = _mha_key(case)
        inputs.update({f"mha|{key}|{k}": v for k, v in _mha_weights(d, i).items()})
        rng = np.random.default_rng([i, d, tq, tk])
        inputs[f"q|{key}"] = rng.standard_normal((b, tq, d))
        if not is_self:
            inputs[f"k|{key}"] = rng.standard_normal((b, tk, d))
    return inputs


def _args() -> dict:
    cases = {}
    for name, config in CONFIGS.items():
        kwargs = constructor_kwargs(config)
        kwargs["segment"] = list(config.segment)
        cases[name] = {"kwargs": kwargs, "default_dtype": DEFAULT_DTYPE[name]}
    return {"cases": cases, "mha": [_mha_key(case) for case in MHA]}


@cache
def oracle() -> tuple[dict | None, dict[str, np.ndarray] | None, dict[str, np.ndarray], str]:
    """One oracle run for the module, its failure cached too: ``(result, arrays, inputs, error)``."""
    inputs = _inputs()
    try:
        result, arrays = run_oracle4(_SNIPPET, args=_args(), inputs=inputs)
    except Exception as err:  # reported by every test that needs it
        return None, None, inputs, f"{type(err).__name__}: {err}"
    return result, arrays, inputs, ""


def upstream() -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    result, arrays, inputs, error = oracle()
    if result is None or arrays is None:
        pytest.fail(error, pytrace=False)
    return result, arrays, inputs


@cache
def spec_run(name: str, inject: bool) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The spec on a case's weights and tokens: ``(trace, x, xt)``; ``inject``: with upstream's embeddings."""
    _, up, inputs = upstream()
    config = CONFIGS[name]
    pos = {"pos_2d": up[f"{name}|pos_2d"], "pos_1d": up[f"{name}|pos_1d"]} if inject else {}
    trace: dict[str, np.ndarray] = {}
    keep = Recorder(trace, transformer_trace_keys(config))
    x, xt = cross_transformer(
        _weights(name), PREFIX, inputs[f"x|{name}"], inputs[f"xt|{name}"], config, keep=keep, **pos
    )
    return trace, x, xt


# the spec's own float64 embeddings for the float64 cases; upstream's injected for every case
RUNS = [(name, False) for name in CONFIGS if DEFAULT_DTYPE[name] == "float64"] + [(name, True) for name in CONFIGS]
LAYERS = [(name, inject, key) for name, inject in RUNS for key in transformer_trace_keys(CONFIGS[name])]


def _kind(key: str) -> str:
    return "self" if int(key.rsplit(".", 1)[1]) % 2 == 0 else "cross"


@pytest.mark.parametrize("name,inject,key", LAYERS)
def test_layer_output_is_upstream(name, inject, key):
    _, up, _ = upstream()
    trace, _, _ = spec_run(name, inject)
    b, fr, t1, t2 = SHAPES[name]
    tokens = fr * t1 if ".layers." in key else t2
    assert trace[key].shape == up[f"{name}|{key}"].shape == (b, tokens, CONFIGS[name].transformer_channels)
    check(trace[key], up[f"{name}|{key}"], STAGE, "float64", what=f"{name} inject={inject} {key} ({_kind(key)})")


@pytest.mark.parametrize("name,inject", RUNS)
def test_outputs_are_upstream(name, inject):
    _, up, _ = upstream()
    _, x, xt = spec_run(name, inject)
    b, fr, t1, t2 = SHAPES[name]
    c = CONFIGS[name].transformer_channels
    assert x.shape == up[f"{name}|x"].shape == (b, c, fr, t1)
    assert xt.shape == up[f"{name}|xt"].shape == (b, c, t2)
    check(x, up[f"{name}|x"], STAGE, "float64", what=f"{name} inject={inject} x")
    check(xt, up[f"{name}|xt"], STAGE, "float64", what=f"{name} inject={inject} xt")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_upstream_embeddings(name):
    result, up, _ = upstream()
    config = CONFIGS[name]
    _, fr, t1, t2 = SHAPES[name]
    c = config.transformer_channels
    dtype = DEFAULT_DTYPE[name]
    # upstream builds them in torch's default dtype, whatever the module's dtype
    assert result[f"{name}|dtypes"] == [f"torch.{dtype}"] * 2
    pos_2d, pos_1d = up[f"{name}|pos_2d"], up[f"{name}|pos_1d"]
    assert pos_2d.shape == (1, c, fr, t1) and pos_1d.shape == (t2, 1, c)
    if dtype == "float64":
        check(create_2d_sin_embedding(c, fr, t1, max_period=config.t_max_period), pos_2d, STAGE, "float64")
        check(create_sin_embedding(t2, c, max_period=config.t_max_period), pos_1d, STAGE, "float64")


def test_float32_embeddings_are_told_apart():
    # a float64 model under torch's default float32 adds float32 embeddings: the spec's float64 ones differ by
    # float32 rounding, beyond the float64 row; injected, the spec matches (test_outputs_are_upstream)
    _, up, _ = upstream()
    _, x, xt = spec_run("f32emb", False)
    check_distinct(x, up["f32emb|x"], STAGE, "float64", what="f32emb x with the spec's float64 embeddings")
    check_distinct(xt, up["f32emb|xt"], STAGE, "float64", what="f32emb xt with the spec's float64 embeddings")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_upstream_self_attention_took_the_fast_path(name):
    # every self layer of both branches ran torch's fused MHA: the spec is compared with that path too
    result, _, _ = upstream()
    nb_self = 2 * ((CONFIGS[name].t_layers + 1) // 2)
    assert result[f"{name}|native_mha"] == nb_self


@pytest.mark.parametrize("case", MHA, ids=_mha_key)
def test_multihead_attention_is_upstream(case):
    result, up, inputs = upstream()
    d, heads, b, tq, _, is_self = case
    key = _mha_key(case)
    assert result[f"mha|{key}|native_mha"] == (1 if is_self else 0)
    q = inputs[f"q|{key}"]
    k = q if is_self else inputs[f"k|{key}"]
    out = multihead_attention(_mha_weights(d, MHA.index(case)), "", q, k, k, heads)
    assert out.shape == up[f"mha|{key}"].shape == (b, tq, d)
    check(out, up[f"mha|{key}"], STAGE, "float64", what=f"MultiheadAttention {key}")
