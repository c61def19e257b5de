"""The parity sweep at Demucs v2's structure (``parity_tests.sweep.cases.DEMUCS``: 8 channels): 4 seeds on three
excerpts of real music, every stage of every port in float32 and float64 (NNabla: float32)."""

from __future__ import annotations

import pytest

from .cases import DEMUCS_CASES, PORT_DTYPES, describe, judge_port, judge_upstream, record

pytestmark = [pytest.mark.upstream, pytest.mark.slow]

PARAMS = [
    pytest.param(case, port, id=f"{case.id}-{port}") for case in DEMUCS_CASES for port in ("upstream", *PORT_DTYPES)
]


@pytest.mark.parametrize(("case", "port"), PARAMS)
def test_demucs_sweep(case, port: str) -> None:
    rows = judge_upstream(case) if port == "upstream" else judge_port(case, port, PORT_DTYPES[port])
    assert rows
    record(case, rows)
    failed = [r for r in rows if not r.ok]
    assert not failed, f"{case.id}, {len(failed)} of {len(rows)} comparisons out of tolerance:\n" + describe(failed)
