"""The TensorFlow port of HTDemucs against live demucs 4.1.0 (:mod:`parity_tests.oracle4`), on seeds no fixture uses.

- upstream's ``HTDemucs.state_dict()`` names and shapes are the inventory, and the port's canonical weights carry
  exactly those (small and released configs);
- the small model's forward with every stage traced (fresh weights and mixture, a batch of three, an input shorter
  than the segment, a wider encoder rewrite), float64 and float32 (rows ``htdemucs.layer`` / ``htdemucs.output``,
  float32 against upstream's own float32 error);
- ``apply_model`` on a bag of two with per-source weights, two shifts each (upstream's draws replayed), a segment
  argument and 0.3 overlap, both dtypes (row ``htdemucs.apply``).
"""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from core_spec.canonical import MODEL_PREFIX
from core_spec.configs import HTDemucsConfig, htdemucs_preset
from core_spec.params import parameter_inventory
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from parity_tests.fixtures_htdemucs import (
    APPLY_CASES,
    FORWARD_CASES,
    SMALL,
    ApplyCase,
    ForwardCase,
    ReplayDraws,
    apply_mix,
    apply_weights,
    forward_mix,
    oracle_apply,
    oracle_forward,
    trace_keys,
)
from parity_tests.oracle4 import run_oracle4
from parity_tests.tf.helpers import DTYPES, on_device
from umx_tf.build import from_canonical
from umx_tf.htdemucs import forward
from umx_tf.htdemucs_apply import apply_model
from umx_tf.weights import to_canonical

pytestmark = pytest.mark.upstream

FRESH_FORWARD = ForwardCase(dataclasses.replace(SMALL, context_enc=1), 3, 2001, weights_seed=230, mix_seed=231)
FRESH_APPLY = ApplyCase(
    (SMALL, dataclasses.replace(SMALL, norm_starts=3)),
    ((0.5, 1.0, 0.0, 2.0), (1.5, 1.0, 1.0, 0.0)),
    True,
    5000,
    2,
    0.3,
    1.0,
    (1, 25),
    weights_seed=232,
    mix_seed=233,
    draws_seed=234,
)


def _kwargs(config: HTDemucsConfig) -> dict:
    """Constructor kwargs as JSON (the segment as a pair, sequences as lists)."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def test_fresh_cases_are_not_the_fixtures() -> None:
    assert all(c.weights_seed != FRESH_FORWARD.weights_seed for c in FORWARD_CASES.values())
    assert all(c.weights_seed != FRESH_APPLY.weights_seed for c in APPLY_CASES.values())


_STATE_SNIPPET = """
from fractions import Fraction
from demucs.htdemucs import HTDemucs
for name, kwargs in ARGS["configs"].items():
    kwargs = dict(kwargs)
    kwargs["segment"] = Fraction(*kwargs["segment"])
    model = HTDemucs(**kwargs)
    RESULT[name] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
"""


@cache
def _upstream_state_dicts() -> dict[str, list]:
    configs = {"small": SMALL, "htdemucs": htdemucs_preset("htdemucs"), "htdemucs_6s": htdemucs_preset("htdemucs_6s")}
    result, _ = run_oracle4(_STATE_SNIPPET, args={"configs": {k: _kwargs(c) for k, c in configs.items()}})
    return result


@pytest.mark.parametrize("name", ["small", "htdemucs", "htdemucs_6s"])
def test_upstream_state_dict_is_the_inventory_and_the_ports_names(name: str) -> None:
    config = SMALL if name == "small" else htdemucs_preset(name)
    upstream = [(k, tuple(shape)) for k, shape in _upstream_state_dicts()[name]]
    assert upstream == parameter_inventory(config)
    if name == "small":
        port = to_canonical(from_canonical(config, random_weights(config, 235)))
        assert [(k, v.shape) for k, v in port.items()] == upstream


@cache
def _oracle_forward() -> dict[str, np.ndarray]:
    return oracle_forward(FRESH_FORWARD)


@cache
def _port_forward(dtype: str, device: str) -> dict[str, np.ndarray]:
    case = FRESH_FORWARD
    with on_device(device):
        weights = random_weights(case.config, case.weights_seed)
        model = from_canonical(case.config, weights, dtype=dtype, device=device)
        out, trace = forward(model, forward_mix(case), traced=True)
        result = {k: np.asarray(v) for k, v in trace.items()}
    result["output"] = np.asarray(out)
    return result


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", trace_keys(FRESH_FORWARD))
def test_forward_stage_on_fresh_seeds(key: str, dtype: str, device: str) -> None:
    arrays = _oracle_forward()
    port = _port_forward(dtype, device)
    name = "output" if key == "output" else f"trace.{key}"
    upstream = arrays[f"{name}.float32"] if dtype == "float32" else None
    stage = "htdemucs.output" if key == "output" else "htdemucs.layer"
    check(port[key], arrays[f"{name}.float64"], stage, dtype, device, what=f"tf fresh {key}", upstream=upstream)


@cache
def _oracle_apply() -> dict[str, np.ndarray]:
    return oracle_apply(FRESH_APPLY)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bag_apply_on_fresh_seeds(dtype: str, device: str) -> None:
    arrays = _oracle_apply()
    assert len(arrays[f"draws.{dtype}"]) == 4  # two models x two shifts
    weights = {f"{MODEL_PREFIX}{i}.{k}": v for i, w in enumerate(apply_weights(FRESH_APPLY)) for k, v in w.items()}
    draws = ReplayDraws(arrays[f"draws.{dtype}"])
    with on_device(device):
        bag = from_canonical(FRESH_APPLY.config, weights, dtype=dtype, device=device)
        out = apply_model(
            bag,
            apply_mix(FRESH_APPLY),
            shifts=FRESH_APPLY.shifts,
            overlap=FRESH_APPLY.overlap,
            transition_power=FRESH_APPLY.transition_power,
            segment=FRESH_APPLY.segment,
            rng=draws,
        )
    assert draws.exhausted
    upstream = arrays["output.float32"] if dtype == "float32" else None
    check(np.asarray(out), arrays["output.float64"], "htdemucs.apply", dtype, device, what="tf fresh bag",
          upstream=upstream)  # fmt: skip
