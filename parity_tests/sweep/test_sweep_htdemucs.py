"""The parity sweep at HTDemucs's structure (``parity_tests.sweep.cases.HTDEMUCS``: 16 channels, a 64-wide
transformer, 1-s segments): 3 seeds on three excerpts of real music (one mono), every stage of the spec's trace, the
output and apply_model per stem, for upstream demucs 4.1.0 (float32: the ratio rows' baseline) and every port
(torch, TF, JAX in float32 and float64; NNabla in float32)."""

from __future__ import annotations

import pytest

from .cases import HTDEMUCS_CASES, HTDEMUCS_PORTS, PORT_DTYPES, describe, judge_port, judge_upstream, record

pytestmark = [pytest.mark.upstream, pytest.mark.slow]

PORTS = ("upstream", *HTDEMUCS_PORTS)
PARAMS = [pytest.param(case, port, id=f"{case.id}-{port}") for case in HTDEMUCS_CASES for port in PORTS]


@pytest.mark.parametrize(("case", "port"), PARAMS)
def test_htdemucs_sweep(case, port: str) -> None:
    rows = judge_upstream(case) if port == "upstream" else judge_port(case, port, PORT_DTYPES[port])
    assert rows
    record(case, rows)
    failed = [r for r in rows if not r.ok]
    assert not failed, f"{case.id}, {len(failed)} of {len(rows)} comparisons out of tolerance:\n" + describe(failed)
