"""The NumPy Open-Unmix forward against upstream openunmix 1.3.0, layer by layer (float64 fixtures)."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.configs import umx_preset
from core_spec.reference.umx import UMX_TRACE_KEYS, open_unmix
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from parity_tests.fixtures import load, weights_sha256
from parity_tests.fixtures_umx import MODEL_PRESETS

PRESETS = sorted(MODEL_PRESETS)


@pytest.fixture(scope="module", params=PRESETS)
def case(request):
    preset = request.param
    arrays, meta = load(f"umx_model_{preset}")
    cfg = umx_preset(preset).model
    weights = random_weights(cfg, meta["weights_seed"])
    trace: dict[str, np.ndarray] = {}
    out = open_unmix(weights, cfg, arrays["input.float64"], trace=trace)
    return preset, arrays, meta, weights, trace, out


def test_seeded_weights_are_those_of_the_fixture(case):
    _, _, meta, weights, _, _ = case
    assert weights_sha256(weights) == meta["weights_sha256"]


@pytest.mark.parametrize("key", UMX_TRACE_KEYS)
def test_layer_matches_upstream(case, key):
    preset, arrays, _, _, trace, _ = case
    check(trace[key], arrays[f"trace.{key}.float64"], "umx.layer", "float64", what=f"{preset} {key}")


def test_output_matches_upstream(case):
    preset, arrays, _, _, _, out = case
    check(out, arrays["output.float64"], "umx.output", "float64", what=f"{preset} output")


def test_output_is_a_mask_of_the_mixture(case):
    _, arrays, _, _, _, out = case
    assert np.all(out >= 0)
    assert np.all(out[arrays["input.float64"] == 0] == 0)


def test_wrong_input_shape_is_a_clear_error():
    cfg = umx_preset("umxhq").model
    with pytest.raises(ValueError, match=r"expects \(nb_samples, 2, 2049, nb_frames\)"):
        open_unmix(random_weights(cfg), cfg, np.zeros((1, 2, 1025, 4)))
