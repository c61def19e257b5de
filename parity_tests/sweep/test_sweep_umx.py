"""The parity sweep at umxhq shapes (``parity_tests.sweep.cases``): 9 cases (issue 22's reproduction and 8 more
seeds) on three excerpts of real music, every stage of every port in float32 and float64 (NNabla: float32)."""

from __future__ import annotations

import pytest

from .cases import PORT_DTYPES, UMX_CASES, describe, judge_port, judge_upstream, record

pytestmark = [pytest.mark.upstream, pytest.mark.slow]

PORTS = ("upstream", *PORT_DTYPES)
PARAMS = [pytest.param(case, port, id=f"{case.id}-{port}") for case in UMX_CASES for port in PORTS]


@pytest.mark.parametrize(("case", "port"), PARAMS)
def test_umx_sweep(case, port: str) -> None:
    rows = judge_upstream(case) if port == "upstream" else judge_port(case, port, PORT_DTYPES[port])
    assert rows
    record(case, rows)
    failed = [r for r in rows if not r.ok]
    assert not failed, f"{case.id}, {len(failed)} of {len(rows)} comparisons out of tolerance:\n" + describe(failed)
