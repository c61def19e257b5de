"""The NNabla port of HTDemucs against demucs 4.1.0's committed fixtures (``parity_tests/fixtures_htdemucs.py``),
NNabla environment only, float32 (NNabla's CPU extension has no float64 kernels).

- Every traced stage of the two small forward cases (rows ``htdemucs.layer`` / ``htdemucs.output`` in float32: SNR
  within 10 dB of upstream's own float32 run on the same input, ``upstream=``, floor 60 dB).
- The released shapes end to end, once each (a forward at 343 980 samples is ~20-50 s on two CPU cores).
- Every ``apply_model`` case (split, shifts replayed from upstream's draws, a segment argument, bags with one-hot
  and unit weights; row ``htdemucs.apply``); ``separate_track`` against the spec; the training-segment rule.
- The spectrogram functions and the graph inverse (``ispec_graph``, training) against the spec.
- Weights: the parameters of the released configs are exactly the inventory; an upstream-style ``state`` loads into
  a model and comes back bit for bit; a bag loads from a canonical bag file; the native file round trip; mismatches
  are named.
"""

from __future__ import annotations

import dataclasses
from functools import cache

import nnabla as nn
import numpy as np
import pytest

from core_spec.canonical import MODEL_PREFIX, save_canonical
from core_spec.configs import BagConfig, HTDemucsConfig, htdemucs_preset
from core_spec.params import WeightsMismatchError, parameter_inventory
from core_spec.reference import htdemucs_apply as ref_apply
from core_spec.reference import htdemucs_spec as ref_spec
from core_spec.reference.htdemucs import htdemucs_trace_keys
from core_spec.seeded import random_audio, random_weights
from core_spec.tolerances import check
from parity_tests.fixtures import load, weights_sha256
from parity_tests.fixtures_htdemucs import (
    APPLY_CASES,
    FORWARD_CASES,
    SMALL,
    ReplayDraws,
    apply_mix,
    apply_weights,
    forward_mix,
)
from parity_tests.nnabla.helpers import run_on
from umx_nnabla import htdemucs_spec as port_spec
from umx_nnabla.build import from_canonical, from_canonical_file, load_module
from umx_nnabla.htdemucs import HTDemucs, forward
from umx_nnabla.htdemucs_apply import BagOfModels, apply_model, separate_track
from umx_nnabla.weights import load_native, load_weights, save_native, to_canonical

# cheap to build, for the tests of rules rather than numerics: 256 bins down to 16, one self-attention layer, a
# 0.025-s segment (1102 samples)
TINY = HTDemucsConfig(channels=4, nfft=512, depth=2, t_layers=1, t_heads=2, dconv_comp=2, segment=(1, 40))


def _stage(key: str) -> str:
    return "htdemucs.output" if key == "output" else "htdemucs.layer"


def _expected(arrays: dict[str, np.ndarray], key: str, dtype: str) -> np.ndarray:
    return arrays[f"trace.{key}.{dtype}" if key != "output" else f"output.{dtype}"]


def _bag_weights(per_model: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``models.<i>.<name>``: a bag's canonical (flat) weights."""
    return {f"{MODEL_PREFIX}{i}.{k}": v for i, w in enumerate(per_model) for k, v in w.items()}


# --- forward, every stage -----------------------------------------------------------------------------------


@cache
def _forward(name: str, device: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(port trace incl. "output", fixture arrays)`` of a forward case."""
    case = FORWARD_CASES[name]
    arrays, meta = load(f"htdemucs_forward_{name}")
    weights = random_weights(case.config, case.weights_seed)
    assert meta["weights_sha256"] == weights_sha256(weights), "seeded weights changed: run 'make fixtures'"
    np.testing.assert_array_equal(arrays["mix"], forward_mix(case))
    model = from_canonical(case.config, weights, device=device)
    out, trace = forward(model, arrays["mix"], traced=case.traced)
    model.graphs.clear()  # a released-shape graph holds hundreds of MB
    result = dict(trace)
    result["output"] = out
    assert all(v.dtype == np.float32 for v in result.values())
    return result, arrays


def _traced_keys() -> list[tuple[str, str]]:
    return [
        (name, key)
        for name, case in FORWARD_CASES.items()
        if case.traced
        for key in load(f"htdemucs_forward_{name}")[1]["trace_keys"]
    ]


@pytest.mark.parametrize(("name", "key"), _traced_keys())
def test_forward_stage(name: str, key: str, device: str) -> None:
    with run_on(device):
        port, arrays = _forward(name, device)
    upstream = _expected(arrays, key, "float32")
    expected = _expected(arrays, key, "float64")
    check(port[key], expected, _stage(key), "float32", device, what=f"nnabla {name} {key}", upstream=upstream)


def test_every_trace_key_is_recorded(device: str) -> None:
    with run_on(device):
        port, _ = _forward("small", device)
    assert sorted(port) == sorted(htdemucs_trace_keys(SMALL))


@pytest.mark.parametrize("name", ["htdemucs", "htdemucs_6s"])
def test_released_shapes_end_to_end(name: str, device: str) -> None:
    with run_on(device):
        port, arrays = _forward(name, device)
    upstream = arrays["output.float32"]
    expected = arrays["output.float64"]
    check(port["output"], expected, "htdemucs.output", "float32", device, what=f"nnabla {name}", upstream=upstream)
    _forward.cache_clear()


def test_training_segment_rule() -> None:
    """Shorter inputs run at the training length (a zero-padded input gives the same output, cropped); longer ones
    are an error."""
    model = from_canonical(TINY, random_weights(TINY, 3))
    mix = random_audio(1000, 2, seed=4, nb_samples=1)
    short = model.infer(mix)
    padded = np.pad(mix, ((0, 0), (0, 0), (0, TINY.segment_samples - 1000)))
    full = model.infer(padded)
    assert short.shape == (1, 4, 2, 1000)
    np.testing.assert_array_equal(short, full[..., :1000])
    with pytest.raises(ValueError, match="training segment"):
        model.infer(np.zeros((1, 2, TINY.segment_samples + 1), np.float32))


@pytest.mark.parametrize("length", [40, 300, 2205])
def test_spectrogram_functions_match_the_spec(length: int) -> None:
    """``pad1d`` (also where the signal is shorter than its pads: zero-extended first), ``spec``, ``ispec``,
    ``magnitude`` / ``mask_cac``, ``normalise_input`` and the graph inverse ``ispec_graph`` against the float64 spec,
    in float32, nfft 512."""
    x = random_audio(length, 2, seed=length, nb_samples=2)
    x32 = x.astype(np.float32)
    nb_frames, pad_left, pad_right = ref_spec.spec_padding(length, 128)
    padded = port_spec.pad1d(x32, pad_left, pad_right)
    check(padded, ref_spec.pad1d(x, pad_left, pad_right), "htdemucs.layer", "float32", what="pad1d")
    z_ref = ref_spec.spec(x, nfft=512, hop=128)
    z = port_spec.spec(x32, nfft=512, hop=128)
    assert z.shape == z_ref.shape == (2, 2, 256, nb_frames) and z.dtype == np.complex64
    check(z, z_ref, "htdemucs.layer", "float32", what=f"spec L={length}")
    mag = port_spec.magnitude(z)
    check(mag, ref_spec.magnitude(z_ref), "htdemucs.layer", "float32", what="magnitude")
    m = np.stack([mag, 2 * mag], axis=1)  # (B, S=2, 2C, F, T)
    check(port_spec.mask_cac(m), ref_spec.mask_cac(m), "htdemucs.layer", "float32", what="mask_cac")
    expected = ref_spec.ispec(z_ref, length, nfft=512, hop=128)
    check(port_spec.ispec(z, length, nfft=512, hop=128), expected, "htdemucs.layer", "float32", what="ispec")
    graph = port_spec.ispec_graph(nn.Variable.from_numpy_array(mag), length, nfft=512, hop=128)
    graph.forward()
    check(graph.d, expected, "htdemucs.layer", "float32", what="ispec_graph")
    normalised, mean, std = port_spec.normalise_input(mag)
    for got, want in zip((normalised, mean, std), ref_spec.normalise_input(mag), strict=True):
        check(got, want, "htdemucs.layer", "float32", what="normalise_input")


# --- apply_model ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(APPLY_CASES))
def test_apply_model(name: str, device: str) -> None:
    case = APPLY_CASES[name]
    arrays, meta = load(f"htdemucs_apply_{name}")
    per_model = apply_weights(case)
    assert meta["weights_sha256"] == [weights_sha256(w) for w in per_model], "seeded weights changed"
    np.testing.assert_array_equal(arrays["mix"], apply_mix(case))
    weights = _bag_weights(per_model) if case.bag else per_model[0]
    with run_on(device):
        model = from_canonical(case.config, weights, device=device)
        assert isinstance(model, BagOfModels if case.bag else HTDemucs)
        draws = ReplayDraws(arrays["draws.float32"])
        out = apply_model(
            model,
            arrays["mix"],
            shifts=case.shifts,
            split=True,
            overlap=case.overlap,
            transition_power=case.transition_power,
            segment=case.segment,
            rng=draws,
        )
    assert draws.exhausted, "the port drew fewer shifts than upstream"
    assert out.dtype == np.float32
    upstream = arrays["output.float32"]
    check(out, arrays["output.float64"], "htdemucs.apply", "float32", device, what=f"nnabla {name}", upstream=upstream)


def test_separate_track_matches_the_spec(device: str) -> None:
    """demucs 4.1.0's track normalisation (``std + 1e-8``) around ``apply_model`` (no shift, split)."""
    weights = random_weights(TINY, 40)
    wav = random_audio(2500, 2, seed=41) + 0.05
    spec = ref_apply.separate_track(weights, TINY, wav, shifts=0)
    with run_on(device):
        out = separate_track(from_canonical(TINY, weights, device=device), wav, shifts=0)
    check(out, spec, "htdemucs.apply", "float32", device, what="nnabla separate_track")


def test_apply_refuses_a_segment_longer_than_the_training_segment() -> None:
    model = from_canonical(TINY, random_weights(TINY, 42))
    with pytest.raises(ValueError, match="training segment"):
        apply_model(model, np.zeros((2, 100)), segment=(1, 20))


# --- weights -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["htdemucs", "htdemucs_6s"])
def test_released_parameters_are_the_inventory(name: str) -> None:
    """The NNabla parameters a released model creates are exactly the inventory, mapped name by name with its
    shapes: nothing missing, nothing extra."""
    config = htdemucs_preset(name)
    model = HTDemucs.from_config(config)
    params = {k: tuple(v.shape) for k, v in model.get_parameters(grad_only=False).items()}
    expected = {k.replace(".", "/"): tuple(shape) for k, shape in parameter_inventory(config)}
    assert params == expected


@pytest.mark.parametrize("name", [n for n, c in FORWARD_CASES.items() if c.traced])
def test_state_names_are_the_inventory_and_an_upstream_state_loads(name: str) -> None:
    """An upstream-style ``state`` (upstream's names, seeded) loads into a model holding other weights
    (``load_weights``) and comes back bit for bit, in the inventory's order."""
    config = FORWARD_CASES[name].config
    state = random_weights(config, 50)
    model = from_canonical(config, random_weights(config, 49))
    before = to_canonical(model)
    assert [(k, v.shape) for k, v in before.items()] == parameter_inventory(config)
    load_weights(model, state)
    after = to_canonical(model)
    assert list(after) == list(state)
    for k, v in after.items():
        assert v.dtype == np.float32 and np.array_equal(v, state[k]), k


def test_mismatched_state_is_named() -> None:
    state = dict(random_weights(TINY, 51))
    del state["encoder.0.conv.weight"]
    state["crosstransformer.layers.0.norm1.weight"] = state["crosstransformer.layers.0.norm1.weight"][:3]
    state["extra"] = np.zeros(2)
    with pytest.raises(WeightsMismatchError) as err:
        from_canonical(TINY, state)
    message = str(err.value)
    assert "encoder.0.conv.weight" in message and "extra" in message and "layers.0.norm1.weight" in message


def _bag() -> tuple[BagConfig, dict[str, np.ndarray]]:
    variant = dataclasses.replace(TINY, norm_starts=1, segment=(1, 50))
    config = BagConfig(models=(TINY, variant), weights=((1.0, 0.5, 0.0, 2.0), (0.0, 1.5, 1.0, 1.0)), segment=(1, 50))
    return config, _bag_weights([random_weights(TINY, 52), random_weights(variant, 53)])


def test_bag_loads_from_a_canonical_bag_file(tmp_path) -> None:
    """A canonical bag file (``models.<i>.<name>``, the ``BagConfig`` in its JSON) gives a :class:`BagOfModels`
    with its per-source weights and the bag segment rule (a bag segment no longer than a model's replaces it); each
    member runs with its own weights."""
    config, weights = _bag()
    save_canonical(tmp_path / "bag", weights, config)
    bag = from_canonical_file(tmp_path / "bag")
    assert isinstance(bag, BagOfModels) and len(bag.models) == 2
    assert bag.config == config
    assert bag.source_weights == config.weights
    running, _ = ref_apply.bag_models(config)
    assert tuple(m.config for m in bag.models) == running
    assert bag.models[0].config.segment == (1, 50)  # TINY's 1/40 s replaced by the bag's 1/50 s
    back = to_canonical(bag)
    assert list(back) == list(weights)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
    mix = random_audio(600, 2, seed=55)
    spec = ref_apply.apply_model([random_weights(TINY, 52), random_weights(config.models[1], 53)], config, mix, 0)
    check(apply_model(bag, mix, shifts=0), spec, "htdemucs.apply", "float32", what="nnabla bag of 2")


@pytest.mark.parametrize("kind", ["model", "bag"])
def test_native_file_round_trip(kind: str, tmp_path) -> None:
    config, weights = _bag() if kind == "bag" else (TINY, random_weights(TINY, 54))
    save_native(tmp_path / kind, weights, config)
    loaded, loaded_config = load_native(tmp_path / kind)
    assert loaded_config == config and list(loaded) == list(weights)
    assert all(np.array_equal(loaded[k], weights[k]) for k in weights)
    module = load_module(tmp_path / kind)
    assert isinstance(module, BagOfModels if kind == "bag" else HTDemucs)
    back = to_canonical(module)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)
    with pytest.raises(ValueError, match="float32"):
        load_module(tmp_path / kind, dtype="float64")
