"""umx_torch's HTDemucs (demucs 4.x) against demucs 4.1.0's fixtures, every stage, float64 and float32, and the
weights paths (inventory names, upstream-style state dicts, canonical bag files, native files).

Fixtures (:mod:`parity_tests.fixtures_htdemucs`): the forward cases traced at every stage under upstream's module
names, the released shapes end to end (the float64 runs inject upstream's input statistics, as the spec's fixture
test does: torch's float64 ``std`` is 1e-11 off there), and the ``apply_model`` cases with upstream's shift draws
replayed. Float64 is held to the rows ``htdemucs.layer`` / ``htdemucs.output`` / ``htdemucs.apply`` (rel 1e-12);
float32 to the same rows relative to upstream's own float32 error on the same input (``upstream=``). The spec's
own functions are the reference for what upstream cannot give per call (the spectrogram wrapper on short signals,
``separate_track``). The tests marked ``upstream`` run demucs 4.1.0 live (a fresh seed, its state-dict names).
"""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from core_spec.canonical import save_canonical
from core_spec.configs import BagConfig, HTDemucsConfig, constructor_kwargs, htdemucs_preset
from core_spec.params import WeightsMismatchError, parameter_inventory
from core_spec.reference.htdemucs import htdemucs as ref_htdemucs
from core_spec.reference.htdemucs_apply import separate_track as ref_separate_track
from core_spec.reference.htdemucs_spec import ispec as ref_ispec
from core_spec.reference.htdemucs_spec import spec as ref_spec
from core_spec.seeded import random_audio, random_weights
from core_spec.tolerances import check
from parity_tests.fixtures import load
from parity_tests.fixtures_htdemucs import (
    APPLY_CASES,
    FORWARD_CASES,
    SMALL,
    ForwardCase,
    ReplayDraws,
    apply_mix,
    apply_weights,
    forward_mix,
)
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, np_of, torch, torch_device
from umx_torch import from_canonical, from_canonical_file, load_native, load_weights, save_native, to_canonical
from umx_torch.htdemucs import HTDemucs
from umx_torch.htdemucs_apply import BagOfModels, apply_model, separate_track
from umx_torch.htdemucs_spec import ispec, spec

STATS = ("mean", "std", "mean_t", "std_t")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for this module: the small models run thousands of tiny kernels, which OpenMP's
    spinning barriers slow down tenfold on a shared 2-core machine (as the torch conftest does under xdist)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _stage(key: str) -> str:
    return "htdemucs.output" if key == "output" else "htdemucs.layer"


def _model(config: HTDemucsConfig | BagConfig, weights, dtype: str, device: str):
    return from_canonical(config, weights, device=torch_device(device), dtype=TORCH_DTYPES[dtype])


@cache
def _forward(name: str, dtype: str, device: str) -> dict[str, np.ndarray]:
    """Our trace of a forward case (``output`` included); released cases (run once per dtype, about 45 s for the
    four on one thread): the output only, float64 with upstream's input statistics injected."""
    case = FORWARD_CASES[name]
    arrays, _ = load(f"htdemucs_forward_{name}")
    model = _model(case.config, random_weights(case.config, case.weights_seed), dtype, device)
    mix = torch.from_numpy(arrays["mix"]).to(torch_device(device), TORCH_DTYPES[dtype])
    stats = None
    if not case.traced and dtype == "float64":
        stats = {k: arrays[f"stats.{k}.float64"] for k in STATS}
    trace: dict = {}
    with torch.no_grad():
        out = model(mix, trace=trace if case.traced else None, stats=stats)
    return {**{k: np_of(v) for k, v in trace.items()}, "output": np_of(out)}


def _forward_params() -> list:
    params = []
    for name, case in FORWARD_CASES.items():
        keys = load(f"htdemucs_forward_{name}")[1]["trace_keys"] if case.traced else ["output"]
        params += [pytest.param(name, key, dtype, id=f"{name}-{key}-{dtype}") for dtype in DTYPES for key in keys]
    return params


@pytest.mark.parametrize(("name", "key", "dtype"), _forward_params())
def test_forward_stage_vs_upstream_fixture(name: str, key: str, dtype: str, device: str) -> None:
    ours = _forward(name, dtype, device)[key]
    arrays, _ = load(f"htdemucs_forward_{name}")
    fixture = f"trace.{key}" if key != "output" else "output"
    upstream32 = arrays[f"{fixture}.float32"] if dtype == "float32" else None
    check(ours, arrays[f"{fixture}.float64"], _stage(key), dtype, device, what=f"torch {name} {key} {dtype}",
          upstream=upstream32)  # fmt: skip


def test_forward_records_every_trace_key(device: str) -> None:
    from core_spec.reference.htdemucs import htdemucs_trace_keys

    assert list(_forward("small", "float64", device)) == list(htdemucs_trace_keys(SMALL))


def _bag_or_model(name: str, dtype: str, device: str):
    """An apply case's model; a bag is built from its canonical file layout (``models.<i>.<name>``)."""
    case = APPLY_CASES[name]
    per_model = apply_weights(case)
    if not case.bag:
        return _model(case.config, per_model[0], dtype, device)
    flat = {f"models.{i}.{k}": v for i, w in enumerate(per_model) for k, v in w.items()}
    return _model(case.config, flat, dtype, device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(APPLY_CASES))
def test_apply_model_vs_upstream_fixture(name: str, dtype: str, device: str) -> None:
    case = APPLY_CASES[name]
    arrays, _ = load(f"htdemucs_apply_{name}")
    np.testing.assert_array_equal(arrays["mix"], apply_mix(case))
    model = _bag_or_model(name, dtype, device)
    draws = ReplayDraws(arrays[f"draws.{dtype}"])
    mix = torch.from_numpy(arrays["mix"]).to(torch_device(device), TORCH_DTYPES[dtype])
    out = apply_model(model, mix, shifts=case.shifts, split=True, overlap=case.overlap,
                      transition_power=case.transition_power, segment=case.segment, rng=draws)  # fmt: skip
    assert draws.exhausted, "the port drew fewer shifts than upstream"
    assert out.dtype == TORCH_DTYPES[dtype]
    upstream32 = arrays["output.float32"] if dtype == "float32" else None
    check(np_of(out), arrays["output.float64"], "htdemucs.apply", dtype, device, what=f"torch apply {name} {dtype}",
          upstream=upstream32)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_separate_track_vs_reference(dtype: str, device: str) -> None:
    """demucs 4.1.0's track normalisation (std + 1e-8) around a bag with shifts, against the spec (float64)."""
    case = APPLY_CASES["bag_mean"]
    wav = random_audio(2600, 2, seed=41) * 0.3 + 0.01
    ref = ref_separate_track(apply_weights(case), case.config, wav, shifts=1, rng=5)
    out = separate_track(_bag_or_model("bag_mean", dtype, device), wav, shifts=1, rng=5)
    check(np_of(out), ref, "htdemucs.apply", dtype, device, what=f"torch separate_track {dtype} vs spec")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [1, 700, 1536, 5000])
def test_spec_and_ispec_vs_reference(length: int, dtype: str, device: str) -> None:
    """The spectrogram wrapper on signals shorter than the reflect pad, equal to it and longer (nfft 2048)."""
    x = random_audio(length, 2, seed=length, nb_samples=2)
    xt = torch.from_numpy(x).to(torch_device(device), TORCH_DTYPES[dtype])
    z = spec(xt, 2048, 512)
    check(np_of(z), ref_spec(x, 2048, 512), "stft", dtype, device, what=f"htdemucs spec L={length} {dtype}")
    back = ispec(z, length, 2048, 512)
    check(np_of(back), ref_ispec(ref_spec(x, 2048, 512), length, 2048, 512), "istft", dtype, device,
          what=f"htdemucs ispec L={length} {dtype}")  # fmt: skip


def test_injected_window_and_stats_vs_reference(device: str) -> None:
    """The window and input statistics a parity run injects reach the STFT, its inverse and both normalisations:
    upstream's float32-built window and perturbed statistics, against the spec given the same (float64)."""
    case = FORWARD_CASES["small_variant"]
    weights = random_weights(case.config, case.weights_seed)
    mix = forward_mix(case)
    window = torch.hann_window(case.config.nfft, dtype=torch.float32).double()
    stats = {"mean": np.array([0.01]), "std": np.array([0.7]), "mean_t": np.array([-0.02]), "std_t": np.array([1.3])}
    expected = ref_htdemucs(weights, case.config, mix, window=window.numpy(), stats=stats)
    model = _model(case.config, weights, "float64", device)
    with torch.no_grad():
        out = model(torch.from_numpy(mix).to(torch_device(device)), stats=stats, window=window.to(torch_device(device)))
    check(np_of(out), expected, "htdemucs.output", "float64", device, what="torch injected window and stats vs spec")


def test_longer_than_the_training_segment_is_refused() -> None:
    model = HTDemucs.from_config(SMALL)
    with pytest.raises(ValueError, match="training segment"):
        model(torch.zeros(1, 2, SMALL.segment_samples + 1))
    with pytest.raises(ValueError, match="longer than model 0's training segment"):
        apply_model(model, torch.zeros(2, 3000), shifts=0, segment=(1, 10))


INVENTORY_CONFIGS = {
    "small": SMALL,
    "variant": FORWARD_CASES["small_variant"].config,
    "htdemucs": htdemucs_preset("htdemucs"),
    "htdemucs_6s": htdemucs_preset("htdemucs_6s"),
}


@pytest.mark.parametrize("config", list(INVENTORY_CONFIGS.values()), ids=list(INVENTORY_CONFIGS))
def test_state_dict_is_the_inventory(config: HTDemucsConfig) -> None:
    """Names, order and shapes of ``state_dict()`` are the inventory's (upstream's, built on the meta device)."""
    with torch.device("meta"):
        model = HTDemucs(**constructor_kwargs(config))
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, tuple(shape)) for k, shape in parameter_inventory(config)]


def test_upstream_style_state_loads_with_load_state_dict() -> None:
    """A state dict of tensors under upstream's names loads as upstream's would; a missing, an extra or a
    mis-shaped key is named."""
    config = FORWARD_CASES["small_variant"].config
    weights = random_weights(config, 3)
    model = HTDemucs.from_config(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    for k, v in to_canonical(model).items():
        np.testing.assert_array_equal(v, weights[k])
    broken = dict(weights)
    broken.pop("crosstransformer.layers.1.norm3.weight")
    broken["crosstransformer.extra"] = np.zeros(3, np.float32)
    broken["encoder.0.conv.bias"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsMismatchError, match=r"norm3\.weight[\s\S]*crosstransformer\.extra"):
        model.load_state_dict(broken)


def test_bag_from_canonical_file_and_native_round_trip(tmp_path) -> None:
    """A bag written as a canonical bag file (``models.<i>.<name>``) builds a BagOfModels holding each model's
    weights, with the bag's weights and segment; the torch native pair round-trips it."""
    models = (SMALL, dataclasses.replace(SMALL, segment=(1, 10)))
    config = BagConfig(models=models, weights=((1.0, 0.5, 0.0, 2.0), (0.0, 1.0, 1.0, 1.0)), segment=(1, 20))
    per_model = [random_weights(m, 50 + i) for i, m in enumerate(models)]
    flat = {f"models.{i}.{k}": v for i, w in enumerate(per_model) for k, v in w.items()}
    save_canonical(tmp_path / "bag", flat, config)
    bag = from_canonical_file(tmp_path / "bag", dtype="float64")
    assert isinstance(bag, BagOfModels) and bag.config == config
    assert bag.weights == config.weights
    assert [m.segment for m in bag.models] == [SMALL.segment_fraction] * 2  # the bag's 1/20 s: the second's 1/10
    for i, w in enumerate(per_model):
        state = bag.models[i].state_dict()
        assert all(np.array_equal(state[k].numpy(), v.astype(np.float64)) for k, v in w.items())
    save_native(tmp_path / "native", to_canonical(bag), bag.config)
    weights, native_config = load_native(tmp_path / "native")
    assert native_config == config
    assert weights.keys() == flat.keys() and all(np.array_equal(weights[k], flat[k]) for k in flat)
    fresh = BagOfModels.from_config(config)
    load_weights(fresh, per_model)  # one mapping per model
    assert all(np.array_equal(v, flat[k]) for k, v in to_canonical(fresh).items())


def test_bag_segment_changes_the_running_length() -> None:
    """4.1.0's rule: the bag's segment replaces each model's whose own is not shorter (the spec's ``bag_models``)."""
    short = dataclasses.replace(SMALL, segment=(1, 40))
    bag = BagOfModels([HTDemucs.from_config(SMALL), HTDemucs.from_config(short)], segment=(1, 30))
    assert [m.valid_length(10) for m in bag.models] == [int(44100 / 30), int(44100 / 40)]


# --- live demucs 4.1.0 -------------------------------------------------------------------------------------------

FRESH = ForwardCase(SMALL, 3, 1800, weights_seed=60, mix_seed=61)


@cache
def _fresh_oracle() -> dict[str, np.ndarray]:
    from parity_tests.fixtures_htdemucs import oracle_forward

    return oracle_forward(FRESH)


@pytest.mark.upstream
@pytest.mark.parametrize("dtype", DTYPES)
def test_fresh_seed_every_stage_vs_live_upstream(dtype: str, device: str) -> None:
    """A batch of 3 shorter than the segment, fresh weights and mixture, every stage against demucs 4.1.0."""
    upstream = _fresh_oracle()
    model = _model(SMALL, random_weights(SMALL, FRESH.weights_seed), dtype, device)
    trace: dict = {}
    with torch.no_grad():
        out = model(torch.from_numpy(forward_mix(FRESH)).to(torch_device(device), TORCH_DTYPES[dtype]), trace=trace)
    trace["output"] = out
    for key, value in trace.items():
        fixture = f"trace.{key}" if key != "output" else "output"
        upstream32 = upstream[f"{fixture}.float32"] if dtype == "float32" else None
        check(np_of(value), upstream[f"{fixture}.float64"], _stage(key), dtype, device,
              what=f"torch fresh {key} {dtype} vs live upstream", upstream=upstream32)  # fmt: skip


def _json_kwargs(config: HTDemucsConfig) -> dict:
    """Constructor kwargs as JSON: the segment as a pair, sequences as lists."""
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


_KEYS_SNIPPET = """
from fractions import Fraction
from demucs.htdemucs import HTDemucs

for name, kwargs in ARGS["kwargs"].items():
    kwargs = dict(kwargs)
    kwargs["segment"] = Fraction(*kwargs["segment"])
    with torch.device("meta"):
        model = HTDemucs(**kwargs)
    RESULT[name] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
"""


@pytest.mark.upstream
def test_state_dict_names_equal_upstream() -> None:
    """Our ``state_dict()`` names, order and shapes are demucs 4.1.0's ``HTDemucs.state_dict()`` (meta device)."""
    from parity_tests.oracle4 import run_oracle4

    configs = {name: INVENTORY_CONFIGS[name] for name in ("small", "variant", "htdemucs_6s")}
    result, _ = run_oracle4(_KEYS_SNIPPET, args={"kwargs": {n: _json_kwargs(c) for n, c in configs.items()}})
    for name, config in configs.items():
        with torch.device("meta"):
            model = HTDemucs(**constructor_kwargs(config))
        ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        assert ours == result[name], name
