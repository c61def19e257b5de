"""The HTDemucs spec against live demucs 4.1.0 on seeds the fixtures do not use (main environment).

The committed fixtures (``parity_tests/spec/test_htdemucs_fixtures.py``) pin a few seeds; here the oracle runs on
fresh ones, so a row that held only on the fixtures' seeds would fail: the small model's forward with every stage
traced (weights and mixture seeded anew, a batch of three, an input shorter than the segment), and
``apply_model`` on a bag of two with two shifts each, split and a segment argument, its draws replayed.
"""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from core_spec.reference.htdemucs import htdemucs
from core_spec.reference.htdemucs_apply import apply_model
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

pytestmark = pytest.mark.upstream

FRESH_FORWARD = ForwardCase(dataclasses.replace(SMALL, context_enc=1), 3, 2001, weights_seed=120, mix_seed=121)
FRESH_APPLY = ApplyCase(
    (SMALL, dataclasses.replace(SMALL, norm_starts=3)),
    ((0.5, 1.0, 0.0, 2.0), (1.5, 1.0, 1.0, 0.0)),
    True,
    5000,
    2,
    0.3,
    1.0,
    (1, 25),
    weights_seed=122,
    mix_seed=123,
    draws_seed=124,
)


def test_fresh_cases_are_not_the_fixtures() -> None:
    assert all(c.weights_seed != FRESH_FORWARD.weights_seed for c in FORWARD_CASES.values())
    assert all(c.weights_seed != FRESH_APPLY.weights_seed for c in APPLY_CASES.values())


@cache
def _forward() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    arrays = oracle_forward(FRESH_FORWARD)
    trace: dict[str, np.ndarray] = {}
    weights = random_weights(FRESH_FORWARD.config, FRESH_FORWARD.weights_seed)
    trace["output"] = htdemucs(weights, FRESH_FORWARD.config, forward_mix(FRESH_FORWARD), trace=trace)
    return trace, arrays


@pytest.mark.parametrize("key", trace_keys(FRESH_FORWARD))
def test_forward_stage_on_fresh_seeds(key: str) -> None:
    spec, arrays = _forward()
    expected = arrays["output.float64" if key == "output" else f"trace.{key}.float64"]
    check(spec[key], expected, "htdemucs.output" if key == "output" else "htdemucs.layer", "float64", what=key)


def test_bag_apply_on_fresh_seeds() -> None:
    arrays = oracle_apply(FRESH_APPLY)
    draws = ReplayDraws(arrays["draws.float64"])
    assert len(arrays["draws.float64"]) == 4  # two models x two shifts
    out = apply_model(
        apply_weights(FRESH_APPLY),
        FRESH_APPLY.config,
        apply_mix(FRESH_APPLY),
        shifts=FRESH_APPLY.shifts,
        overlap=FRESH_APPLY.overlap,
        segment=FRESH_APPLY.segment,
        rng=draws,
    )
    assert draws.exhausted
    check(out, arrays["output.float64"], "htdemucs.apply", "float64", what="bag of 2, 2 shifts")
