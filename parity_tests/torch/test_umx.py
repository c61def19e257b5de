"""umx_torch.OpenUnmix layer by layer against upstream openunmix 1.3.0 (fixtures) and the NumPy reference.

That the forward records exactly the spec's trace keys, in order, is checked by the shared stage tests
(``parity_tests/harness.py::test_port_umx_layers``, run by ``test_parity.py``).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from core_spec.configs import UMXConfig, umx_preset
from core_spec.params import WeightsMismatchError
from core_spec.reference.umx import UMX_TRACE_KEYS as REF_TRACE_KEYS
from core_spec.reference.umx import open_unmix
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from parity_tests.fixtures import load, weights_sha256
from parity_tests.fixtures_umx import MODEL_PRESETS
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, np_of, oracle, torch, torch_device
from umx_torch import LegacyKeysWarning, OpenUnmix, load_weights

PRESETS = sorted(MODEL_PRESETS)


@pytest.fixture(scope="module", params=PRESETS)
def case(request):
    preset = request.param
    arrays, meta = load(f"umx_model_{preset}")
    cfg = umx_preset(preset).model
    weights = random_weights(cfg, meta["weights_seed"])
    assert weights_sha256(weights) == meta["weights_sha256"]
    ref_trace: dict[str, np.ndarray] = {}
    ref_out = open_unmix(weights, cfg, arrays["input.float64"], trace=ref_trace)
    return preset, cfg, arrays, weights, ref_trace, ref_out


def _run(cfg: UMXConfig, weights, x: np.ndarray, dtype: str, device: str):
    model = OpenUnmix.from_config(cfg, torch_device(device), TORCH_DTYPES[dtype])
    load_weights(model, weights)
    trace: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        xt = torch.from_numpy(x).to(model.fc1.weight)
        out = model(xt, trace=trace)
        fast = model(xt)  # the in-place inference path
    np.testing.assert_array_equal(np_of(fast), np_of(out))
    return {k: np_of(v) for k, v in trace.items()}, np_of(out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_and_output(case, dtype, device):
    preset, cfg, arrays, weights, ref_trace, ref_out = case
    trace, out = _run(cfg, weights, arrays[f"input.{dtype}"], dtype, device)
    for key in REF_TRACE_KEYS:
        up = arrays[f"trace.{key}.{dtype}"]
        check(trace[key], up, "umx.layer", dtype, device, what=f"torch {preset} {key} {dtype} vs upstream")
        check(trace[key], ref_trace[key], "umx.layer", dtype, device, what=f"torch {preset} {key} {dtype} vs ref")
    check(
        out, arrays[f"output.{dtype}"], "umx.output", dtype, device, what=f"torch {preset} output {dtype} vs upstream"
    )
    check(out, ref_out, "umx.output", dtype, device, what=f"torch {preset} output {dtype} vs ref")


def test_batch_is_independent_items(case, device):
    _, cfg, arrays, weights, _, _ = case
    x = arrays["input.float64"]
    batch = np.concatenate([x, 0.5 * x[..., ::-1]], axis=0)
    _, out = _run(cfg, weights, batch, "float64", device)
    _, first = _run(cfg, weights, batch[1:], "float64", device)
    check(out[1:], first, "umx.output", "float64", device, what="torch umx batch item vs alone")


@pytest.mark.parametrize("unidirectional", [False, True])
def test_small_configs_against_live_upstream(unidirectional, device):
    cfg = UMXConfig(nb_bins=65, nb_channels=2, hidden_size=16, nb_layers=2, unidirectional=unidirectional, max_bin=40)
    weights = random_weights(cfg, seed=3)
    x = np.abs(np.random.default_rng(0).standard_normal((2, 2, 65, 9)))
    for dtype in DTYPES:
        up = oracle.umx_model(cfg, weights, TORCH_DTYPES[dtype])
        with torch.no_grad():
            expected = up(torch.from_numpy(x).to(TORCH_DTYPES[dtype])).numpy()
        _, out = _run(cfg, weights, x.astype(dtype), dtype, device)
        check(out, expected, "umx.output", dtype, device, what=f"torch umx uni={unidirectional} {dtype} vs upstream")
        check(out, open_unmix(weights, cfg, x), "umx.output", dtype, device, what=f"torch umx uni={unidirectional} ref")


def test_gradients_match_upstream():
    cfg = UMXConfig(nb_bins=33, nb_channels=2, hidden_size=8, nb_layers=2, max_bin=20)
    weights = random_weights(cfg, seed=4)
    x = torch.from_numpy(np.abs(np.random.default_rng(1).standard_normal((2, 2, 33, 5))))
    up = oracle.umx_model(cfg, weights, torch.float64)
    ours = OpenUnmix.from_config(cfg, dtype=torch.float64)
    load_weights(ours, weights)
    grads = []
    for model in (up, ours):
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append({k: p.grad.numpy().copy() for k, p in model.named_parameters()})
    for name, g in grads[0].items():
        check(grads[1][name], g, "umx.layer", "float64", what=f"torch umx gradient {name}")


def _upstream_file(cfg: UMXConfig, weights, zip_format: bool, extra: dict | None = None):
    up = oracle.umx_model(cfg, weights, torch.float32)
    state = up.state_dict()
    state.update(extra or {})
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=zip_format)
    buffer.seek(0)
    return up, torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("zip_format", [True, False])
def test_loads_upstream_written_state_dicts(zip_format):
    cfg = umx_preset("umxhq").model
    weights = random_weights(cfg, seed=5)
    up, state = _upstream_file(cfg, weights, zip_format)
    assert any(k.endswith("num_batches_tracked") for k in state)
    ours = OpenUnmix.from_config(cfg)
    ours.load_state_dict(state)
    assert list(ours.state_dict()) == list(state)  # same names, same order
    x = torch.from_numpy(np.abs(np.random.default_rng(2).standard_normal((1, 2, 2049, 4)))).float()
    with torch.no_grad():
        np.testing.assert_array_equal(ours(x).numpy(), up(x).numpy())


def test_legacy_2019_keys_are_dropped_with_a_warning():
    cfg = umx_preset("umxhq").model
    legacy = {
        "sample_rate": torch.tensor(44100),
        "stft.window": torch.hann_window(4096),
        "transform.0.window": torch.hann_window(4096),
    }
    _, state = _upstream_file(cfg, random_weights(cfg, seed=6), True, legacy)
    ours = OpenUnmix.from_config(cfg)
    with pytest.warns(LegacyKeysWarning, match="sample_rate"):
        ours.load_state_dict(state)


def test_missing_unexpected_and_misshaped_keys_are_named():
    cfg = umx_preset("umxhq").model
    state = {k: torch.from_numpy(v) for k, v in random_weights(cfg, seed=7).items()}
    del state["fc2.weight"]
    state["fc4.weight"] = torch.zeros(3)
    state["bn1.bias"] = torch.zeros(7)
    ours = OpenUnmix.from_config(cfg)
    with pytest.raises(WeightsMismatchError) as error:
        ours.load_state_dict(state)
    text = str(error.value)
    assert "missing     fc2.weight" in text and "unexpected  fc4.weight" in text and "mis-shaped  bn1.bias" in text
    state["bn1.bias"] = torch.zeros(512)
    ours.load_state_dict(state, strict=False)  # upstream's escape hatch: missing and unexpected keys ignored


def test_wrong_input_shape_is_a_clear_error():
    model = OpenUnmix.from_config(umx_preset("umxhq").model)
    with pytest.raises(ValueError, match=r"expects \(nb_samples, 2, 2049, nb_frames\)"):
        model(torch.zeros(1, 2, 1025, 4))
