"""The benchmarks' OpenMP wait policy (``--omp-wait``): none set by default, as users run the commands;
``passive`` reaches every measured process's environment."""

from __future__ import annotations

import pytest

from benchmarks import common
from benchmarks.impls import common_env


@pytest.fixture(autouse=True)
def _restore():
    before = common.omp_wait()
    yield
    common.set_omp_wait(before)


def test_default_sets_no_policy(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    common.set_omp_wait("default")
    assert "OMP_WAIT_POLICY" not in common_env() and "OMP_WAIT_POLICY" not in common.child_env(common.TIMING_ENV)
    assert common.omp_wait() == "default"


def test_passive_reaches_every_measured_process() -> None:
    common.set_omp_wait("passive")
    assert common_env()["OMP_WAIT_POLICY"] == "PASSIVE"
    assert common.child_env(common.TIMING_ENV)["OMP_WAIT_POLICY"] == "PASSIVE"
    assert common.omp_wait() == "passive"
    with pytest.raises(KeyError):
        common.set_omp_wait("spin")
