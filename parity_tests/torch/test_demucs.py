"""umx_torch.Demucs layer by layer, forward and apply_model against demucs 2.0.3 (live) and the NumPy reference.

Upstream's resampler (julius) builds its filters in float32 even in a float64 run: comparisons with upstream run
our model with julius's kernels injected (stages ``demucs.*``), and once with our own float64-built kernels
(stage ``demucs.own_kernels``). Comparisons with the reference use the spec's kernels on both sides.
"""

from __future__ import annotations

import dataclasses
import io
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import pytest

from core_spec.configs import DemucsConfig, demucs_preset
from core_spec.params import WeightsMismatchError, nb_parameters, parameter_inventory
from core_spec.reference.apply import apply_model as ref_apply_model
from core_spec.reference.apply import separate_track as ref_separate_track
from core_spec.reference.demucs import demucs as ref_demucs
from core_spec.reference.demucs import demucs_trace_keys
from core_spec.seeded import random_audio, random_weights
from core_spec.shapes import valid_length
from core_spec.tolerances import check
from parity_tests import fixtures_demucs
from parity_tests.fixtures import load
from parity_tests.torch.helpers import (
    DTYPES,
    TORCH_DTYPES,
    Replay,
    demucs_julius_kernels,
    np_of,
    oracle,
    real_clip,
    torch,
    torch_device,
)
from umx_torch import Demucs, apply_model, center_trim, load_weights, separate_track

CONFIGS = {
    "demucs_unittest": demucs_preset("demucs_unittest"),
    "mid16": dataclasses.replace(demucs_preset("demucs"), channels=16),
}
# small segments and shifts so that split and shifts are exercised on short signals
APPLY_CONFIG = dataclasses.replace(demucs_preset("demucs_unittest"), samplerate=4000, segment_length=8000)
APPLY_LENGTH = 20000


@lru_cache(maxsize=4)
def weights_of(config: DemucsConfig, seed: int = 0):
    return random_weights(config, seed)


def ours(config: DemucsConfig, dtype: str, device: str, julius: bool) -> Demucs:
    model = Demucs.from_config(config, torch_device(device), TORCH_DTYPES[dtype])
    load_weights(model, weights_of(config))
    if julius:
        model.set_resample_kernels(demucs_julius_kernels())
    return model


@contextmanager
def upstream_default_dtype(dtype: str):
    """Upstream's split overlap-add accumulates in torch's default dtype: make it the run's dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(TORCH_DTYPES[dtype])
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def upstream_trace(config: DemucsConfig, x: np.ndarray, dtype: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Upstream forward with hooks on every traced module (and on its two julius calls)."""
    import julius

    model = oracle.demucs_model(config, weights_of(config), TORCH_DTYPES[dtype])
    trace: dict[str, np.ndarray] = {}

    def hook(key: str):
        def grab(module, args, output):
            trace[key] = (output[0] if isinstance(output, tuple) else output).detach().numpy().copy()

        return grab

    handles = [m.register_forward_hook(hook(f"encoder.{i}")) for i, m in enumerate(model.encoder)]
    handles += [m.register_forward_hook(hook(f"decoder.{j}")) for j, m in enumerate(model.decoder)]
    handles += [
        model.lstm.register_forward_hook(hook("lstm")),
        model.lstm.lstm.register_forward_hook(hook("lstm.lstm")),
    ]
    original = julius.resample_frac

    def recording(x, old, new, *args, **kwargs):
        out = original(x, old, new, *args, **kwargs)
        trace["resample.up" if new > old else "resample.down"] = out.detach().numpy().copy()
        return out

    julius.resample_frac = recording
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(x).to(TORCH_DTYPES[dtype])).numpy()
    finally:
        julius.resample_frac = original
        for h in handles:
            h.remove()
    return trace, out


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    name = request.param
    config = CONFIGS[name]
    x = random_audio(valid_length(6000, config), 2, seed=1, nb_samples=2)
    ref_trace: dict[str, np.ndarray] = {}
    ref_out = ref_demucs(weights_of(config), config, x, trace=ref_trace)
    return name, config, x, ref_trace, ref_out


def _our_trace(config, x, dtype, device, julius):
    model = ours(config, dtype, device, julius)
    trace: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        xt = torch.from_numpy(x).to(torch_device(device), TORCH_DTYPES[dtype])
        out = model(xt, trace=trace)
        fast = model(xt)  # the in-place inference path
    np.testing.assert_array_equal(np_of(fast), np_of(out))
    return {k: np_of(v) for k, v in trace.items()}, np_of(out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_and_output_vs_upstream(case, dtype, device):
    name, config, x, _, _ = case
    up_trace, up_out = upstream_trace(config, x.astype(dtype), dtype)
    trace, out = _our_trace(config, x.astype(dtype), dtype, device, julius=True)
    assert set(trace) == set(up_trace) == set(demucs_trace_keys(config))
    for key in demucs_trace_keys(config):
        check(trace[key], up_trace[key], "demucs.layer", dtype, device, what=f"torch {name} {key} {dtype} vs upstream")
    check(out, up_out, "demucs.output", dtype, device, what=f"torch {name} output {dtype} vs upstream")
    _, out = _our_trace(config, x.astype(dtype), dtype, device, julius=False)
    check(out, up_out, "demucs.own_kernels", dtype, device, what=f"torch {name} output {dtype} own kernels vs upstream")


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_and_output_vs_reference(case, dtype, device):
    name, config, x, ref_trace, ref_out = case
    trace, out = _our_trace(config, x.astype(dtype), dtype, device, julius=False)
    for key in demucs_trace_keys(config):
        check(trace[key], ref_trace[key], "demucs.layer", dtype, device, what=f"torch {name} {key} {dtype} vs ref")
    check(out, ref_out, "demucs.output", dtype, device, what=f"torch {name} output {dtype} vs ref")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(fixtures_demucs.FORWARD_CASES))
def test_forward_fixtures(name, dtype, device):
    """The committed upstream traces (incl. normalize=True and resample=False), julius's kernels injected."""
    from core_spec.configs import config_from_json

    fx, meta = load(f"demucs_forward_{name}")
    config = config_from_json(meta["config"])
    model = Demucs.from_config(config, torch_device(device), TORCH_DTYPES[dtype])
    load_weights(model, random_weights(config, meta["weights_seed"]))
    model.set_resample_kernels(fixtures_demucs.kernels_dict(fx))
    trace: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out = np_of(model(torch.from_numpy(fx["mix"]).to(torch_device(device), TORCH_DTYPES[dtype]), trace=trace))
    for key in demucs_trace_keys(config):
        up = fx[f"trace.{key}.{dtype}"]
        check(np_of(trace[key]), up, "demucs.layer", dtype, device, what=f"torch {name} {key} {dtype} vs upstream fx")
    check(out, fx[f"output.{dtype}"], "demucs.output", dtype, device, what=f"torch {name} {dtype} vs upstream fx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(fixtures_demucs.APPLY_CASES))
def test_apply_fixtures(name, dtype, device):
    """``apply_model(split=True)`` against the committed upstream outputs (float64: run under torch's default
    dtype float64, since upstream accumulates the overlap-add in the default dtype)."""
    from core_spec.configs import config_from_json

    fx, meta = load(f"demucs_apply_{name}")
    case = fixtures_demucs.APPLY_CASES[name]
    config = config_from_json(meta["config"])
    model = Demucs.from_config(config, torch_device(device), TORCH_DTYPES[dtype])
    load_weights(model, random_weights(config, meta["weights_seed"]))
    model.set_resample_kernels(fixtures_demucs.kernels_dict(fx))
    mix = torch.from_numpy(fx["mix"]).to(torch_device(device), TORCH_DTYPES[dtype])
    out = np_of(apply_model(model, mix, split=True, overlap=case.overlap, transition_power=case.transition_power))
    check(out, fx[f"output.{dtype}"], "demucs.apply", dtype, device, what=f"torch apply {name} {dtype} vs upstream fx")


APPLY_CASES = [(0, True, "float64"), (0, True, "float32"), (0, False, "float32"), (2, True, "float64")]


@pytest.mark.parametrize("shifts,split,dtype", APPLY_CASES)
def test_apply_model_vs_upstream(shifts, split, dtype, device):
    import random

    from demucs.utils import apply_model as upstream_apply_model

    config = APPLY_CONFIG
    x = torch.from_numpy(random_audio(APPLY_LENGTH, 2, seed=2)).to(TORCH_DTYPES[dtype])
    up = oracle.demucs_model(config, weights_of(config), TORCH_DTYPES[dtype])
    random.seed(3)
    with upstream_default_dtype(dtype):
        expected = upstream_apply_model(up, x, shifts=shifts, split=split).numpy()
    model = ours(config, dtype, device, julius=True)
    out = np_of(apply_model(model, x.to(torch_device(device)), shifts=shifts, split=split, rng=Replay(3)))
    what = f"torch apply_model shifts={shifts} split={split} {dtype}"
    check(out, expected, "demucs.apply", dtype, device, what=f"{what} vs upstream")
    if shifts == 0 and split:
        model.set_resample_kernels(None)
        out = np_of(apply_model(model, x.to(torch_device(device)), split=True))
        check(out, expected, "demucs.own_kernels", dtype, device, what=f"{what} own kernels vs upstream")


def test_apply_model_vs_reference(device):
    config = APPLY_CONFIG
    x = random_audio(APPLY_LENGTH, 2, seed=2)
    model = ours(config, "float64", device, julius=False)
    xt = torch.from_numpy(x).to(torch_device(device))
    for shifts in (0, 1):
        out = np_of(apply_model(model, xt, shifts=shifts, split=True, rng=5))
        expected = ref_apply_model(weights_of(config), config, x, shifts=shifts, split=True, rng=5)
        check(out, expected, "demucs.apply", "float64", device, what=f"torch apply_model shifts={shifts} vs ref")


def test_apply_model_batch(device):
    config = APPLY_CONFIG
    x = random_audio(APPLY_LENGTH, 2, seed=4, nb_samples=2)
    model = ours(config, "float64", device, julius=False)
    batch = np_of(apply_model(model, torch.from_numpy(x).to(torch_device(device)), split=True))
    for b in range(2):
        expected = ref_apply_model(weights_of(config), config, x[b], split=True)
        check(batch[b], expected, "demucs.apply", "float64", device, what=f"torch apply_model batch item {b} vs ref")


def test_separate_track(device):
    config = APPLY_CONFIG
    wav = 0.3 * random_audio(APPLY_LENGTH, 2, seed=6) + 0.05
    model = ours(config, "float64", device, julius=False)
    out = np_of(separate_track(model, wav, split=True))
    expected = ref_separate_track(weights_of(config), config, wav, split=True)
    check(out[0], expected, "demucs.apply", "float64", device, what="torch separate_track vs ref")
    silence = np_of(separate_track(model, np.zeros((2, 9000))))
    assert np.all(silence == 0)
    assert np.all(np.isnan(np_of(separate_track(model, np.zeros((2, 9000)), silence_guard=False))))


def test_real_clip_apply_model_vs_upstream(device):
    """The stempeg example (sum of its stems, seconds 1 to 4), normalised as demucs's separate.py, split into 1 s
    segments, shifts 0, float32, demucs_unittest shapes."""
    from demucs.utils import apply_model as upstream_apply_model

    config = dataclasses.replace(demucs_preset("demucs_unittest"), segment_length=44100)
    wav = real_clip()[:, 44100 : 4 * 44100].astype(np.float32)
    ref = wav.mean(0)
    wav = torch.from_numpy((wav - ref.mean()) / ref.std(ddof=1))
    up = oracle.demucs_model(config, weights_of(config), torch.float32)
    expected = upstream_apply_model(up, wav, split=True).numpy()
    model = ours(config, "float32", device, julius=True)
    out = np_of(apply_model(model, wav.to(torch_device(device)), split=True))
    for k, source in enumerate(config.sources):
        check(out[k], expected[k], "demucs.apply", "float32", device, what=f"torch demucs real clip {source}")
    model.set_resample_kernels(None)
    out = np_of(apply_model(model, wav.to(torch_device(device)), split=True))
    check(out, expected, "demucs.own_kernels", "float32", device, what="torch demucs real clip, own kernels")


@pytest.mark.parametrize("zip_format", [True, False])
def test_loads_upstream_written_state_dicts(zip_format):
    config = CONFIGS["demucs_unittest"]
    up = oracle.demucs_model(config, weights_of(config, 7), torch.float32)
    buffer = io.BytesIO()
    torch.save(up.state_dict(), buffer, _use_new_zipfile_serialization=zip_format)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    model = Demucs.from_config(config)
    model.load_state_dict(state)
    model.set_resample_kernels(demucs_julius_kernels())
    assert list(model.state_dict()) == list(state)
    x = torch.from_numpy(random_audio(valid_length(5000, config), 2, seed=8, nb_samples=1)).float()
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), up(x).numpy())
    del state["lstm.linear.bias"]
    state["encoder.0.0.weight"] = torch.zeros(1)
    state["extra"] = torch.zeros(2)
    with pytest.raises(WeightsMismatchError) as error:
        model.load_state_dict(state)
    text = str(error.value)
    assert "missing     lstm.linear.bias" in text and "mis-shaped  encoder.0.0.weight" in text
    assert "unexpected  extra" in text


def test_full_size_structure():
    """The pretrained size (channels 64, 265,679,496 parameters), built without memory on the meta device."""
    config = demucs_preset("demucs")
    with torch.device("meta"):
        model = Demucs.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == dict(parameter_inventory(config))
    assert sum(p.numel() for p in model.parameters()) == nb_parameters(config) == 265_679_496


def test_valid_length_and_center_trim_match_upstream():
    from demucs.utils import center_trim as upstream_center_trim

    for name, config in CONFIGS.items():
        up = oracle.demucs_model(config, None, torch.float32)
        model = Demucs.from_config(config)
        for length in (1, 1000, 44100, 441000):
            assert model.valid_length(length) == up.valid_length(length), (name, length)
    x = torch.arange(11.0)[None]
    for n in (11, 8, 7, 0):
        assert torch.equal(center_trim(x, n), upstream_center_trim(x, n))
    with pytest.raises(ValueError, match="shorter than the reference"):
        center_trim(x, 12)


def test_too_short_input_is_a_clear_error():
    model = Demucs.from_config(CONFIGS["demucs_unittest"])
    with pytest.raises(ValueError, match="fewer than its"):
        model(torch.zeros(1, 2, 100))
