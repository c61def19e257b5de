"""The HTDemucs spec against demucs 4.1.0's committed fixtures (``parity_tests/fixtures_htdemucs.py``), every stage.

NumPy only: runs in both environments. The released-shape cases (a minute of NumPy each) run in the main
environment only, from ``parity_tests/upstream/test_htdemucs_released_fixtures.py``, with the functions here.

For every forward case and every trace key, the spec's float64 value is compared with upstream's float64 run
(row ``htdemucs.layer``; the output ``htdemucs.output``), and upstream's own float32 run with the spec's float64
value under the float32 rows, which bound upstream's float32 error (the rows a float32 port is held to).
``apply_model`` cases (split, overlap, shifts replayed from upstream's draws, a segment argument, bags with one-hot
and unit weights) likewise under ``htdemucs.apply``.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from core_spec.configs import config_from_json
from core_spec.reference.htdemucs import htdemucs
from core_spec.reference.htdemucs_apply import apply_model
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from parity_tests.fixtures import load, weights_sha256
from parity_tests.fixtures_htdemucs import (
    APPLY_CASES,
    FORWARD_CASES,
    ReplayDraws,
    apply_mix,
    apply_weights,
    forward_mix,
)


def _stage(key: str) -> str:
    return "htdemucs.output" if key == "output" else "htdemucs.layer"


@cache
def _forward(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """``(spec trace incl. "output", fixture arrays, fixture meta)`` of a forward case."""
    case = FORWARD_CASES[name]
    arrays, meta = load(f"htdemucs_forward_{name}")
    weights = random_weights(case.config, case.weights_seed)
    assert meta["weights_sha256"] == weights_sha256(weights), "seeded weights changed: run 'make fixtures'"
    assert config_from_json(meta["config"]) == case.config
    np.testing.assert_array_equal(arrays["mix"], forward_mix(case))
    trace: dict[str, np.ndarray] = {} if case.traced else None
    # at the released length torch's float64 std is 1e-11 off (core_spec.reference.htdemucs): upstream's is injected
    stats = None if case.traced else {k: arrays[f"stats.{k}.float64"] for k in ("mean", "std", "mean_t", "std_t")}
    out = htdemucs(weights, case.config, arrays["mix"], trace=trace, stats=stats)
    return {**(trace or {}), "output": out}, arrays, meta


TRACED = [name for name, case in FORWARD_CASES.items() if case.traced]
RELEASED = [name for name, case in FORWARD_CASES.items() if not case.traced]


def _forward_keys(names: list[str]) -> list[tuple[str, str]]:
    return [(name, key) for name in names for key in load(f"htdemucs_forward_{name}")[1]["trace_keys"]]


def check_forward_stage_float64(name: str, key: str) -> None:
    spec, arrays, _ = _forward(name)
    expected = arrays[f"trace.{key}.float64" if key != "output" else "output.float64"]
    check(spec[key], expected, _stage(key), "float64", what=f"{name} {key}")


def check_upstream_float32_stage(name: str, key: str) -> None:
    spec, arrays, _ = _forward(name)
    upstream = arrays[f"trace.{key}.float32" if key != "output" else "output.float32"]
    assert upstream.dtype == np.float32
    check(upstream, spec[key], _stage(key), "float32", what=f"upstream float32 {name} {key}")


@pytest.mark.parametrize(("name", "key"), _forward_keys(TRACED))
def test_forward_stage_float64(name: str, key: str) -> None:
    check_forward_stage_float64(name, key)


@pytest.mark.parametrize(("name", "key"), _forward_keys(TRACED))
def test_upstream_float32_stage_within_the_float32_row(name: str, key: str) -> None:
    check_upstream_float32_stage(name, key)


def test_every_trace_key_is_in_the_traced_fixtures() -> None:
    from core_spec.reference.htdemucs import htdemucs_trace_keys

    for name, case in FORWARD_CASES.items():
        if case.traced:
            _, meta = load(f"htdemucs_forward_{name}")
            assert meta["trace_keys"] == list(htdemucs_trace_keys(case.config)), name


@cache
def _apply(name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    case = APPLY_CASES[name]
    arrays, meta = load(f"htdemucs_apply_{name}")
    per_model = apply_weights(case)
    assert meta["weights_sha256"] == [weights_sha256(w) for w in per_model], "seeded weights changed"
    np.testing.assert_array_equal(arrays["mix"], apply_mix(case))
    draws = ReplayDraws(arrays["draws.float64"])
    weights = per_model if case.bag else per_model[0]
    out = apply_model(
        weights,
        case.config,
        arrays["mix"],
        shifts=case.shifts,
        split=True,
        overlap=case.overlap,
        transition_power=case.transition_power,
        segment=case.segment,
        rng=draws,
    )
    assert draws.exhausted, "the spec drew fewer shifts than upstream"
    return out, arrays


@pytest.mark.parametrize("name", list(APPLY_CASES))
def test_apply_model_float64(name: str) -> None:
    out, arrays = _apply(name)
    check(out, arrays["output.float64"], "htdemucs.apply", "float64", what=name)


@pytest.mark.parametrize("name", list(APPLY_CASES))
def test_upstream_apply_float32_within_the_float32_row(name: str) -> None:
    out, arrays = _apply(name)
    np.testing.assert_array_equal(arrays["draws.float32"], arrays["draws.float64"])  # same seed, same draws
    check(arrays["output.float32"], out, "htdemucs.apply", "float32", what=f"upstream float32 {name}")
