"""core_spec.reference.htdemucs_layers against live demucs 4.1.0 in float64 (main environment, parity_tests.oracle4).

One oracle subprocess (``torch.set_default_dtype(torch.float64)``) builds one ``demucs.htdemucs.HTDemucs`` per case
(``t_layers=0``: the transformer plays no part in these layers) and sends back

- the structure of every layer of ``encoder``, ``tencoder``, ``decoder`` and ``tdecoder`` as upstream's modules
  hold it (channels, kernels, strides, padding, norms, rewrite kernel, DConv depth, hidden channels, dilations,
  ``empty``, ``last``), compared with :func:`encoder_layers` / :func:`decoder_layers`;
- for a selection of layers: their state dict after every parameter is set to seeded O(1) values (``torch.randn``;
  kernels divided by the square root of their size per leading index; LayerScale and norm affines O(1), far from
  the 1e-3 init that would hide a wrong residual branch), seeded inputs, and the outputs of ``HEncLayer.forward`` (with
  ``inject`` where the branches merge), ``HDecLayer.forward`` (``(z, pre)``) and of the layer's ``DConv`` alone.

Cases: the released layout at 8 channels (all 16 layers, dconv_mode 3) and at the released 48 channels (a few
layers, short inputs); dconv_mode 1 with norms from layer 2, ``context`` 0, ``context_enc`` 1, DConv depth 3;
dconv_mode 2 without rewrite, norms everywhere in 2 groups, DConv depth -2 (no dilation); and a depth-5 model at
``nfft`` 512 with ``channels_time`` and ``cac=False``, where the branches merge (the frequency layer that reduces
to one frequency, the time branch's ``empty`` layers, time layers in ``encoder`` / ``decoder``).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from core_spec.configs import HTDEMUCS_PRESETS, HTDemucsConfig, constructor_kwargs
from core_spec.reference.htdemucs_layers import HLayer, dconv, decoder_layers, encoder_layers, hdec_layer, henc_layer
from core_spec.tolerances import check
from parity_tests.oracle4 import run_oracle4

pytestmark = pytest.mark.upstream

STAGE = "htdemucs.layer"
BATCH = 2

_SMALL = {"sources": ("a", "b", "c", "d"), "channels": 8, "t_layers": 0}
CONFIGS: dict[str, HTDemucsConfig] = {
    "small": HTDemucsConfig(**_SMALL, dconv_mode=3, dconv_comp=4),
    "norm_ctx": HTDemucsConfig(
        **_SMALL, dconv_mode=1, dconv_comp=4, dconv_depth=3, norm_starts=2, context=0, context_enc=1
    ),
    "dec_only": HTDemucsConfig(
        **_SMALL, dconv_mode=2, dconv_comp=2, dconv_depth=-2, rewrite=False, norm_starts=0, norm_groups=2
    ),
    "merge": HTDemucsConfig(
        **_SMALL, nfft=512, depth=5, channels_time=12, cac=False, dconv_mode=3, dconv_comp=4, norm_starts=3
    ),
    "released": replace(HTDEMUCS_PRESETS["htdemucs"], t_layers=0),
}

# Layers run per case: (prefix, input dims, decoder output length). Dims: ("F", nb_freqs, nb_frames) for a frequency
# layer's (B, C, F, T) input, ("L", length) for a time layer's (B, C, L); ("F1L", length) a time layer given
# (B, C, 1, L) as below the merge. Channels come from upstream's modules. A tencoder's empty layer feeds "inject".
_SMALL_LAYERS = (
    [(f"encoder.{i}.", ("F", 2048 // 4**i, 3), 0) for i in range(4)]
    + [(f"decoder.{j}.", ("F", 8 * 4**j, 3), 0) for j in range(4)]
    + [(f"tencoder.{i}.", ("L", n), 0) for i, n in enumerate((150, 38, 10, 3))]
    + [(f"tdecoder.{j}.", ("L", n), length) for j, (n, length) in enumerate(((1, 3), (3, 10), (10, 38), (38, 150)))]
)
_DEC_ONLY = ("encoder.0.", "encoder.2.", "tencoder.1.", "decoder.0.", "decoder.3.", "tdecoder.1.", "tdecoder.3.")
LAYERS: dict[str, list[tuple[str, tuple, int]]] = {
    "small": _SMALL_LAYERS,
    "norm_ctx": [s for s in _SMALL_LAYERS if s[0] not in ("encoder.0.", "tencoder.0.", "tencoder.1.")],
    "dec_only": [s for s in _SMALL_LAYERS if s[0] in _DEC_ONLY],
    "merge": [
        ("encoder.2.", ("F", 16, 3), 0),
        ("encoder.3.", ("F", 4, 3), 0),  # reduces to one frequency; gets the inject
        ("tencoder.3.", ("L", 10), 0),  # empty: 10 -> 3 steps
        ("encoder.4.", ("F1L", 7), 0),  # a time layer in the frequency list
        ("decoder.0.", ("L", 4), 7),
        ("decoder.1.", ("F", 1, 3), 0),
        ("decoder.2.", ("F", 4, 3), 0),
        ("tdecoder.0.", ("L", 3), 10),  # empty: fed pre[:, :, 0], no skip
        ("tdecoder.1.", ("L", 10), 38),
    ],
    "released": [
        ("encoder.1.", ("F", 512, 2), 0),
        ("encoder.3.", ("F", 32, 2), 0),
        ("tencoder.1.", ("L", 37), 0),
        ("tencoder.3.", ("L", 5), 0),
        ("decoder.0.", ("F", 8, 2), 0),
        ("decoder.2.", ("F", 128, 2), 0),
        ("tdecoder.0.", ("L", 2), 5),
        ("tdecoder.2.", ("L", 10), 37),
    ],
}

_SNIPPET = """
import math
from fractions import Fraction
from demucs.htdemucs import HTDemucs

torch.set_default_dtype(torch.float64)


def describe(m, decoder):
    conv = m.conv_tr if decoder else m.conv
    d = {"freq": bool(m.freq), "empty": bool(m.empty), "stride": m.stride, "pad": int(m.pad),
         "kernel_size": m.kernel_size, "norm": bool(m.norm), "chin": conv.in_channels, "chout": conv.out_channels,
         "conv_kernel": list(conv.kernel_size), "conv_stride": list(conv.stride), "conv_padding": list(conv.padding),
         "last": bool(getattr(m, "last", False))}
    layer_norms = [getattr(m, n) for n in ("norm1", "norm2") if isinstance(getattr(m, n, None), torch.nn.GroupNorm)]
    d["norm_groups"] = sorted({n.num_groups for n in layer_norms})
    rewrite = None if m.empty else m.rewrite
    d["rewrite"] = None if rewrite is None else [list(rewrite.kernel_size), list(rewrite.padding)]
    dc = None if m.empty else m.dconv
    d["dconv"] = None if dc is None else {
        "depth": len(dc.layers), "hidden": dc.layers[0][0].out_channels, "modules": [len(s) for s in dc.layers],
        "dilations": [s[0].dilation[0] for s in dc.layers], "channels": dc.channels}
    return d


with torch.no_grad():
    for case, spec in ARGS["cases"].items():
        kwargs = dict(spec["kwargs"])
        kwargs["segment"] = Fraction(*kwargs["segment"])
        model = HTDemucs(**kwargs).eval()
        RESULT[case] = {name: [describe(m, name.endswith("decoder")) for m in getattr(model, name)]
                        for name in ("encoder", "tencoder", "decoder", "tdecoder")}
        torch.manual_seed(spec["seed"])
        for prefix, dims, length in spec["layers"]:
            name, slot, _ = prefix.split(".")
            m = getattr(model, name)[int(slot)]
            decoder = name.endswith("decoder")
            for pname, p in m.named_parameters():
                scale = 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 1.0
                p.copy_(torch.randn_like(p) * scale)
            key = f"{case}/{prefix}"
            for pname, p in m.state_dict().items():
                ARRAYS[f"{key}w/{prefix}{pname}"] = p
            chin = (m.conv_tr if decoder else m.conv).in_channels
            shape = {"F": lambda: (BATCH, chin, dims[1], dims[2]), "L": lambda: (BATCH, chin, dims[1]),
                     "F1L": lambda: (BATCH, chin, 1, dims[1])}[dims[0]]()
            x = torch.randn(shape)
            ARRAYS[f"{key}x"] = x
            if decoder:
                skip = None if m.empty else torch.randn(shape)
                if skip is not None:
                    ARRAYS[f"{key}skip"] = skip
                z, pre = m(x, skip, length)
                ARRAYS[f"{key}z"], ARRAYS[f"{key}pre"] = z, pre
            else:
                inject = None
                if m.freq and dims[1] <= m.kernel_size and not m.pad:  # the merge: the time branch's empty output
                    inject = torch.randn(BATCH, m.conv.out_channels, dims[2])
                    ARRAYS[f"{key}inject"] = inject
                ARRAYS[f"{key}y"] = m(x, inject)
            if not m.empty and m.dconv is not None:
                xd = torch.randn(BATCH, m.dconv.channels, 6)
                ARRAYS[f"{key}dconv.x"], ARRAYS[f"{key}dconv.y"] = xd, m.dconv(xd)
""".replace("BATCH", str(BATCH))


@cache
def oracle() -> tuple[dict | None, dict[str, np.ndarray] | None, str]:
    """One oracle run for the module, its failure cached too: ``(structures, arrays, error)``."""
    cases = {}
    for seed, (case, config) in enumerate(CONFIGS.items()):
        kwargs = constructor_kwargs(config)
        kwargs["segment"] = list(config.segment)
        cases[case] = {"kwargs": kwargs, "layers": LAYERS[case], "seed": seed}
    try:
        result, arrays = run_oracle4(_SNIPPET, args={"cases": cases})
    except Exception as err:  # reported by every test that needs it
        return None, None, f"{type(err).__name__}: {err}"
    return result, arrays, ""


def upstream() -> tuple[dict, dict[str, np.ndarray]]:
    result, arrays, error = oracle()
    if result is None or arrays is None:
        pytest.fail(error, pytrace=False)
    return result, arrays


def _spec_layers(case: str) -> dict[str, tuple[HLayer, ...]]:
    config = CONFIGS[case]
    (enc, tenc), (dec, tdec) = encoder_layers(config), decoder_layers(config)
    return {"encoder": enc, "tencoder": tenc, "decoder": dec, "tdecoder": tdec}


def _layer(case: str, prefix: str) -> HLayer:
    name, slot, _ = prefix.split(".")
    return _spec_layers(case)[name][int(slot)]


def _weights(arrays: dict[str, np.ndarray], case: str, prefix: str) -> dict[str, np.ndarray]:
    head = f"{case}/{prefix}w/"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}


def _described(layer: HLayer) -> dict:
    """The spec's layer in the terms of the oracle's ``describe``."""
    k = [layer.kernel_size, 1] if layer.freq else [layer.kernel_size]
    s = [layer.stride, 1] if layer.freq else [layer.stride]
    r = 1 + 2 * layer.context
    rewrite = None
    if layer.rewrite and not layer.empty:
        rewrite = [[r, r], [layer.context, layer.context]] if layer.freq else [[r], [layer.context]]
    dc = None
    if layer.dconv and not layer.empty:
        depth = abs(layer.dconv_depth)
        dc = {
            "depth": depth,
            "hidden": layer.dconv_hidden,
            "modules": [7] * depth,  # conv, norm, GELU, conv, norm, GLU, LayerScale: no BLSTM, no LocalState
            "dilations": [2**d if layer.dconv_depth > 0 else 1 for d in range(depth)],
            "channels": layer.dconv_channels,
        }
    has_norm = layer.norm and (layer.is_decoder or not layer.empty)  # HDecLayer's norm2 is there even when empty
    return {
        "freq": layer.freq,
        "empty": layer.empty,
        "stride": layer.stride,
        "pad": layer.pad,
        "kernel_size": layer.kernel_size,
        "norm": layer.norm,
        "chin": layer.chin,
        "chout": layer.chout,
        "conv_kernel": k,
        "conv_stride": s,
        "conv_padding": [0] * len(k) if layer.is_decoder else ([layer.pad, 0] if layer.freq else [layer.pad]),
        "last": layer.last,
        "norm_groups": [layer.norm_groups] if has_norm else [],
        "rewrite": rewrite,
        "dconv": dc,
    }


@pytest.mark.parametrize("case", CONFIGS)
def test_layer_descriptions_are_upstream(case):
    result, _ = upstream()
    spec = _spec_layers(case)
    for name, layers in result[case].items():
        assert len(spec[name]) == len(layers), f"{case}: {name} has {len(layers)} layers upstream"
        for slot, (layer, expected) in enumerate(zip(spec[name], layers, strict=True)):
            assert layer.prefix == f"{name}.{slot}."
            assert _described(layer) == expected, f"{case} {layer.prefix}"


def _cases(kind: str) -> list[tuple[str, str]]:
    return [(case, prefix) for case, layers in LAYERS.items() for prefix, _, _ in layers if kind in prefix]


@pytest.mark.parametrize("case,prefix", _cases("encoder"))
def test_encoder_layer_is_upstream(case, prefix):
    _, arrays = upstream()
    key = f"{case}/{prefix}"
    layer = _layer(case, prefix)
    out = henc_layer(_weights(arrays, case, prefix), prefix, arrays[f"{key}x"], layer, arrays.get(f"{key}inject"))
    expected = arrays[f"{key}y"]
    assert out.shape == expected.shape
    check(out, expected, STAGE, "float64", what=f"{case} {prefix} HEncLayer")


@pytest.mark.parametrize("case,prefix", _cases("decoder"))
def test_decoder_layer_is_upstream(case, prefix):
    _, arrays = upstream()
    key = f"{case}/{prefix}"
    layer = _layer(case, prefix)
    length = next(n for p, _, n in LAYERS[case] if p == prefix)
    w = _weights(arrays, case, prefix)
    z, pre = hdec_layer(w, prefix, arrays[f"{key}x"], arrays.get(f"{key}skip"), length, layer)
    assert z.shape == arrays[f"{key}z"].shape and pre.shape == arrays[f"{key}pre"].shape
    check(z, arrays[f"{key}z"], STAGE, "float64", what=f"{case} {prefix} HDecLayer z")
    check(pre, arrays[f"{key}pre"], STAGE, "float64", what=f"{case} {prefix} HDecLayer pre")


@pytest.mark.parametrize(
    "case,prefix", [c for c in _cases("") if _layer(*c).dconv and not _layer(*c).empty]
)  # the layers without one: test_layer_descriptions_are_upstream
def test_dconv_is_upstream(case, prefix):
    _, arrays = upstream()
    key = f"{case}/{prefix}"
    layer = _layer(case, prefix)
    out = dconv(_weights(arrays, case, prefix), prefix, arrays[f"{key}dconv.x"], layer)
    check(out, arrays[f"{key}dconv.y"], STAGE, "float64", what=f"{case} {prefix} DConv")
