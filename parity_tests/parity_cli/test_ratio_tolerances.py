"""The rows relative to upstream (``core_spec.tolerances``: ``snr_margin_db``) and :func:`degrade`, on synthetic
arrays. Every port's check against its fixtures is in ``parity_tests/harness.py`` (``compare``)."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.tolerances import REGRESSION_DB, check, degrade, judge, metrics, tolerance

RATIO_ROWS = [("wiener", True), ("separator", False), ("separator.music", False)]


def _noisy(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """``x`` plus white noise at exactly ``snr_db`` (through :func:`degrade` from a tiny error)."""
    rng = np.random.default_rng(seed)
    start = x + 1e-12 * np.abs(x).max() * rng.standard_normal(x.shape)
    return degrade(start, x, metrics(start, x).snr_db - snr_db, seed=seed)


@pytest.mark.parametrize("stage, complex_data", RATIO_ROWS)
def test_degrade_lowers_the_snr_by_exactly_db(stage: str, complex_data: bool) -> None:
    rng = np.random.default_rng(1)
    expected = rng.standard_normal((3, 400)) + (1j * rng.standard_normal((3, 400)) if complex_data else 0)
    actual = _noisy(expected, 120.0, seed=2)
    worse = degrade(actual, expected, REGRESSION_DB, seed=3)
    assert worse.dtype == actual.dtype and worse.shape == actual.shape
    assert metrics(actual, expected).snr_db - metrics(worse, expected).snr_db == pytest.approx(REGRESSION_DB, abs=1e-6)
    with pytest.raises(ValueError, match="infinite SNR"):
        degrade(expected, expected)


@pytest.mark.parametrize("stage, complex_data", RATIO_ROWS)
def test_port_is_judged_against_upstreams_own_error(stage: str, complex_data: bool) -> None:
    tol = tolerance(stage, "float32")
    assert tol.snr_margin_db is not None and tol.snr_db is not None
    rng = np.random.default_rng(4)
    expected = rng.standard_normal((2, 2, 500)) + (1j * rng.standard_normal((2, 2, 500)) if complex_data else 0)
    upstream_snr = tol.snr_db + 2 * REGRESSION_DB  # well above the absolute floor
    upstream = _noisy(expected, upstream_snr, seed=5)
    just_inside = _noisy(expected, upstream_snr - tol.snr_margin_db + 0.1, seed=6)
    just_outside = _noisy(expected, upstream_snr - tol.snr_margin_db - 0.1, seed=7)
    verdict = judge(just_inside, expected, stage, "float32", upstream=upstream)
    assert verdict.ok and verdict.snr_bound_db == pytest.approx(upstream_snr - tol.snr_margin_db, abs=1e-6)
    assert not judge(just_outside, expected, stage, "float32", upstream=upstream).ok
    # without upstream's output only the absolute floor judges: the same output passes
    assert judge(just_outside, expected, stage, "float32").ok
    with pytest.raises(AssertionError, match="bound"):
        check(just_outside, expected, stage, "float32", what="synthetic", upstream=upstream)
    # a regression of REGRESSION_DB fails even for a port better than upstream by less than that minus the margin
    better = _noisy(expected, upstream_snr + REGRESSION_DB - tol.snr_margin_db - 1.0, seed=8)
    assert judge(better, expected, stage, "float32", upstream=upstream).ok
    assert not judge(degrade(better, expected), expected, stage, "float32", upstream=upstream).ok


def test_rows_without_a_margin_ignore_upstream() -> None:
    assert tolerance("stft", "float32").snr_margin_db is None
    rng = np.random.default_rng(9)
    expected = rng.standard_normal(1000)
    actual = _noisy(expected, 130.0, seed=10)
    much_better_upstream = _noisy(expected, 200.0, seed=11)
    assert judge(actual, expected, "stft", "float32", upstream=much_better_upstream).ok
