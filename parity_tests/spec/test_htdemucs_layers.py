"""core_spec.reference.htdemucs_layers and the 2-D / padded / dilated convolutions of core_spec.reference.layers,
NumPy only (runs in both environments).

The convolutions are checked against their definition written as plain loops; the layer descriptions against the
parameter inventory (:mod:`core_spec.params`: every weight a layer reads is in the inventory under that name and
shape, and every inventory weight of the layer is read); the layers' shape rules, the per-frequency-row DConv,
``dconv_mode`` and the error messages. Parity with demucs 4.1.0 is ``parity_tests/upstream/
test_htdemucs_layers_oracle.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import replace

import numpy as np
import pytest

from core_spec.configs import HTDEMUCS_PRESETS, HTDemucsConfig
from core_spec.reference.htdemucs_layers import (
    HLayer,
    dconv,
    decoder_layers,
    encoder_layers,
    hdec_layer,
    henc_layer,
    layer_scale,
)
from core_spec.reference.layers import conv1d, conv2d, conv_transpose1d, conv_transpose2d
from core_spec.seeded import random_weights
from core_spec.tolerances import check

STAGE = "htdemucs.layer"  # float64: the vectorised convolutions against their loop definitions

SMALL = HTDemucsConfig(sources=("a", "b"), channels=4, t_layers=0, dconv_mode=3, dconv_comp=2)


# --- convolutions against their definition -------------------------------------------------------------------------


def _loop_conv1d(x, w, b, stride, padding, dilation):
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    nb_out = (xp.shape[-1] - dilation * (w.shape[-1] - 1) - 1) // stride + 1
    y = np.zeros((x.shape[0], w.shape[0], nb_out))
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            for t in range(nb_out):
                y[n, o, t] = b[o] + sum(
                    w[o, i, k] * xp[n, i, t * stride + k * dilation]
                    for i in range(w.shape[1])
                    for k in range(w.shape[2])
                )
    return y


def _loop_conv2d(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    nb_h, nb_w = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    y = np.zeros((x.shape[0], w.shape[0], nb_h, nb_w))
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            for h in range(nb_h):
                for v in range(nb_w):
                    y[n, o, h, v] = b[o] + np.sum(w[o] * xp[n, :, h * sh : h * sh + kh, v * sw : v * sw + kw])
    return y


def _loop_conv_transpose2d(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    kh, kw = w.shape[2:]
    full = np.zeros((x.shape[0], w.shape[1], (x.shape[2] - 1) * sh + kh, (x.shape[3] - 1) * sw + kw))
    for n in range(x.shape[0]):
        for i in range(x.shape[1]):
            for h in range(x.shape[2]):
                for v in range(x.shape[3]):
                    full[n, :, h * sh : h * sh + kh, v * sw : v * sw + kw] += x[n, i, h, v] * w[i]
    return full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw] + b[:, None, None]


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (1, 2, 2), (3, 1, 1), (2, 4, 4)])
def test_conv1d_padding_and_dilation_match_the_definition(stride, padding, dilation):
    rng = np.random.default_rng(stride + 10 * padding + 100 * dilation)
    x, w, b = rng.standard_normal((2, 3, 17)), rng.standard_normal((4, 3, 3)), rng.standard_normal(4)
    out = conv1d(x, w, b, stride, padding=padding, dilation=dilation)
    check(out, _loop_conv1d(x, w, b, stride, padding, dilation), STAGE, "float64", what="conv1d")


@pytest.mark.parametrize(
    "kernel,stride,padding", [((3, 3), (1, 1), (1, 1)), ((8, 1), (4, 1), (2, 0)), ((2, 3), (2, 3), (0, 2))]
)
def test_conv2d_matches_the_definition(kernel, stride, padding):
    rng = np.random.default_rng(sum(kernel + stride + padding))
    x, w, b = rng.standard_normal((2, 3, 12, 7)), rng.standard_normal((5, 3, *kernel)), rng.standard_normal(5)
    expected = _loop_conv2d(x, w, b, stride, padding)
    out = conv2d(x, w, b, stride=stride, padding=padding)
    assert out.shape == expected.shape
    check(out, expected, STAGE, "float64", what=f"conv2d {kernel} {stride} {padding}")


def test_conv2d_takes_ints_as_pairs():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((1, 2, 9, 9)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    check(conv2d(x, w, b, 2, 1), _loop_conv2d(x, w, b, (2, 2), (1, 1)), STAGE, "float64", what="int args")


@pytest.mark.parametrize(
    "kernel,stride,padding", [((8, 1), (4, 1), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((4, 2), (2, 3), (1, 0))]
)
def test_conv_transpose2d_matches_the_definition(kernel, stride, padding):
    rng = np.random.default_rng(7 + sum(kernel + stride + padding))
    x, w, b = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((3, 4, *kernel)), rng.standard_normal(4)
    expected = _loop_conv_transpose2d(x, w, b, stride, padding)
    out = conv_transpose2d(x, w, b, stride=stride, padding=padding)
    assert out.shape == expected.shape
    check(out, expected, STAGE, "float64", what=f"conv_transpose2d {kernel} {stride} {padding}")


def test_conv_transpose2d_with_a_k_by_1_kernel_is_conv_transpose1d_per_column():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((3, 4, 8, 1)), rng.standard_normal(4)
    out = conv_transpose2d(x, w, b, stride=(4, 1))
    for v in range(x.shape[-1]):
        check(out[..., v], conv_transpose1d(x[..., v], w[..., 0], b, 4), STAGE, "float64", what=f"column {v}")


def test_conv2d_refuses_a_bad_pair():
    x, w, b = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 1, 1)), np.zeros(1)
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        conv2d(x, w, b, stride=(1, 2, 3))
    with pytest.raises(ValueError, match="padding must be an int or a pair"):
        conv_transpose2d(x, w, b, padding=(1,))


# --- layer descriptions against the parameter inventory ------------------------------------------------------------


class _Recorder(Mapping):
    """A weights mapping that records which names were read."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = weights
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> np.ndarray:
        self.read.add(name)
        return self.weights[name].astype(np.float64)

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)


def _all_layers(config: HTDemucsConfig) -> list[HLayer]:
    (enc, tenc), (dec, tdec) = encoder_layers(config), decoder_layers(config)
    return [*enc, *tenc, *dec, *tdec]


def _run(w: Mapping[str, np.ndarray], layer: HLayer, config: HTDemucsConfig, rng: np.random.Generator):
    """Run ``layer`` on a small seeded input of its kind; return ``(input, output)``."""
    nb_freqs = config.nfft // 2 // config.stride ** (layer.index + (1 if layer.is_decoder else 0))
    shape = (2, layer.chin, nb_freqs, 3) if layer.freq else (2, layer.chin, 9 if layer.is_decoder else 33)
    x = rng.standard_normal(shape)
    if layer.is_decoder:
        length = 4 * shape[-1] - 1
        return x, hdec_layer(w, layer.prefix, x, rng.standard_normal(shape), length, layer)
    return x, henc_layer(w, layer.prefix, x, layer)


VARIANTS = {
    "htdemucs": replace(HTDEMUCS_PRESETS["htdemucs"], t_layers=0),  # the released layers at their real shapes
    "small": SMALL,
    "enc_only_norm": replace(SMALL, dconv_mode=1, norm_starts=1, norm_groups=2, context_enc=1, context=0),
    "dec_only_no_rewrite": replace(SMALL, dconv_mode=2, rewrite=False, norm_starts=0, dconv_depth=3),
    "no_dconv_no_cac": replace(SMALL, dconv_mode=0, cac=False, depth=3),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_layers_read_exactly_the_inventory_weights(variant):
    config = VARIANTS[variant]
    weights = random_weights(config, seed=5)
    layers = _all_layers(config)
    lists = {layer.module for layer in layers}
    in_lists = {".".join(n.split(".")[:2]) + "." for n in weights if n.split(".")[0] in lists}
    assert {layer.prefix for layer in layers} == in_lists
    rng = np.random.default_rng(0)
    for layer in layers:
        w = _Recorder(weights)
        _run(w, layer, config, rng)  # also a shape check of every weight against the layer's use of it
        expected = {n for n in weights if n.startswith(layer.prefix)}
        assert w.read == expected, f"{variant} {layer.prefix}: read {sorted(w.read ^ expected)} differently"


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_dconv_mode_puts_dconv_in_encoders_and_decoders(mode):
    config = replace(SMALL, dconv_mode=mode)
    (enc, tenc), (dec, tdec) = encoder_layers(config), decoder_layers(config)
    assert {layer.dconv for layer in enc + tenc} == {bool(mode & 1)}
    assert {layer.dconv for layer in dec + tdec} == {bool(mode & 2)}


def test_decoders_mirror_the_encoders():
    for config in (SMALL, HTDEMUCS_PRESETS["htdemucs"], replace(SMALL, nfft=512, depth=5, channels_time=6)):
        (enc, tenc), (dec, tdec) = encoder_layers(config), decoder_layers(config)
        for layers in (enc, tenc):
            assert [layer.slot for layer in layers] == [layer.index for layer in layers] == list(range(len(layers)))
            for a, b in itertools.pairwise(layers):
                assert a.chout == b.chin, (a.prefix, b.prefix)
        for encs, decs in ((enc, dec), (tenc, tdec)):
            assert [layer.slot for layer in decs] == list(range(len(decs)))
            for e, d in zip(encs, reversed(decs), strict=True):
                mirrored = ("index", "freq", "kernel_size", "stride", "pad", "empty")
                assert [getattr(d, a) for a in mirrored] == [getattr(e, a) for a in mirrored], d.prefix
                assert d.chin == e.chout, d.prefix
                assert d.last == (d.index == 0)
                assert d.chout == (e.chin if d.index else e.chin * len(config.sources))


def test_shape_rules():
    weights = {k: v.astype(np.float64) for k, v in random_weights(SMALL, seed=1).items()}
    rng = np.random.default_rng(2)
    for layer in _all_layers(SMALL):
        x, out = _run(weights, layer, SMALL, rng)
        if layer.is_decoder:
            z, pre = out
            assert pre.shape == x.shape
            want = (
                (x.shape[0], layer.chout, layer.stride * x.shape[2], x.shape[3]) if layer.freq else (2, layer.chout, 35)
            )
            assert z.shape == want, layer.prefix
        elif layer.freq:
            assert out.shape == (x.shape[0], layer.chout, x.shape[2] // layer.stride, x.shape[3]), layer.prefix
        else:
            assert out.shape == (x.shape[0], layer.chout, -(-x.shape[-1] // layer.stride)), layer.prefix


def test_freq_dconv_runs_per_frequency_row():
    config = replace(SMALL, dconv_mode=2, rewrite=False)
    layer = decoder_layers(config)[0][1]
    assert layer.freq and layer.dconv and not layer.rewrite and not layer.norm
    w = {k: v.astype(np.float64) for k, v in random_weights(config, seed=3).items()}
    rng = np.random.default_rng(4)
    x, skip = rng.standard_normal((2, layer.chin, 5, 6)), rng.standard_normal((2, layer.chin, 5, 6))
    _, pre = hdec_layer(w, layer.prefix, x, skip, 0, layer)
    for f in range(5):
        row = dconv(w, layer.prefix, (x + skip)[:, :, f], layer)
        check(pre[:, :, f], row, STAGE, "float64", what=f"row {f}")


def test_layer_scale_scales_each_channel():
    rng = np.random.default_rng(5)
    x, scale = rng.standard_normal((2, 3, 4)), rng.standard_normal(3)
    out = layer_scale(x, scale)
    for c in range(3):
        np.testing.assert_array_equal(out[:, c], scale[c] * x[:, c])


# --- refusals and error messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["dconv_lstm", "dconv_attn"])
def test_dconv_refuses_lstm_and_attention(option):
    layer = replace(encoder_layers(SMALL)[1][0], **{option: True})
    with pytest.raises(ValueError, match=option):
        dconv({}, layer.prefix, np.zeros((1, layer.chout, 4)), layer)
    with pytest.raises(ValueError, match=option):
        henc_layer(_zeros_for(layer), layer.prefix, np.zeros((1, layer.chin, 8)), layer)


def _zeros_for(layer: HLayer) -> dict[str, np.ndarray]:
    w = random_weights(SMALL, seed=0)
    return {k: v.astype(np.float64) for k, v in w.items() if k.startswith(layer.prefix)}


def test_multi_freqs_is_refused():
    config = replace(SMALL, multi_freqs=(0.25, 0.5))
    for fn in (encoder_layers, decoder_layers):
        with pytest.raises(ValueError, match="multi_freqs"):
            fn(config)
    assert len(encoder_layers(replace(config, multi_freqs_depth=0))[0]) == SMALL.depth  # not active: accepted


def test_bad_inputs_are_named():
    (enc, tenc), (dec, tdec) = encoder_layers(SMALL), decoder_layers(SMALL)
    w = {k: v.astype(np.float64) for k, v in random_weights(SMALL, seed=0).items()}
    with pytest.raises(ValueError, match=r"henc_layer encoder\.0\.: expected 4 axes \(B, 4, \.\.\.\)"):
        henc_layer(w, "encoder.0.", np.zeros((1, 4, 16)), enc[0])
    with pytest.raises(ValueError, match=r"henc_layer tencoder\.1\.: expected 3 axes \(B, 4, \.\.\.\)"):
        henc_layer(w, "tencoder.1.", np.zeros((1, 5, 16)), tenc[1])
    with pytest.raises(ValueError, match="inject has 3 steps"):
        henc_layer(w, "encoder.1.", np.zeros((1, 4, 16, 2)), enc[1], inject=np.zeros((1, 8, 3)))
    x = np.zeros((1, dec[0].chin, 8, 2))
    with pytest.raises(ValueError, match=r"hdec_layer decoder\.0\.: skip \(1, 32, 8, 3\) != x"):
        hdec_layer(w, "decoder.0.", x, np.zeros((1, 32, 8, 3)), 0, dec[0])
    with pytest.raises(ValueError, match="skip None"):
        hdec_layer(w, "decoder.0.", x, None, 0, dec[0])
    xt = np.zeros((1, tdec[0].chin, 3))
    with pytest.raises(ValueError, match="length 15 is longer than the 14 steps"):
        hdec_layer(w, "tdecoder.0.", xt, xt, 15, tdec[0])
    empty = replace(tdec[0], empty=True)
    with pytest.raises(ValueError, match="an empty decoder layer takes no skip"):
        hdec_layer(w, "tdecoder.0.", xt, xt, 5, empty)


def test_hlayer_checks_itself():
    layer = encoder_layers(SMALL)[0][0]
    assert layer.prefix == "encoder.0."
    with pytest.raises(ValueError, match=r"HLayer\.module must be one of"):
        replace(layer, module="enc")
    with pytest.raises(ValueError, match="only a decoder can be last"):
        replace(layer, last=True)
