"""The NumPy Wiener/EM filter against upstream ``openunmix.filtering.wiener`` (float64 fixtures)."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.reference.filtering import (
    PI_FLOAT32,
    expectation_maximization,
    upstream_atan2,
    wiener,
    wiener_planar,
)
from core_spec.tolerances import check
from parity_tests.fixtures import load
from parity_tests.fixtures_umx import WIENER_CASES, wiener_inputs


@pytest.fixture(scope="module")
def fx() -> dict[str, np.ndarray]:
    return load("umx_wiener")[0]


def _name(i: int) -> str:
    c = WIENER_CASES[i]
    init = "softmask" if c["softmask"] else "phase"
    sources = "residual" if c["residual"] else "targets"
    return f"niter{c['niter']}-{init}-{sources}-C{c['spec_channels']}"


@pytest.mark.parametrize("i", range(len(WIENER_CASES)), ids=_name)
def test_wiener_matches_upstream(fx, i):
    c = WIENER_CASES[i]
    v, mix = wiener_inputs(i)
    np.testing.assert_array_equal(v, fx[f"{i}.v"])  # the seeded inputs are those of the fixture
    np.testing.assert_array_equal(mix, fx[f"{i}.mix"])
    out = wiener(v, mix, c["niter"], softmask=c["softmask"], residual=c["residual"])
    check(out, fx[f"{i}.out.float64"], "wiener", "float64", what=f"wiener {_name(i)}")


def test_upstream_atan2_quirks():
    y = np.array([0.0, 1.0, 1.0, -1.0, 2.0, -2.0])
    x = np.array([0.0, -1.0, 0.0, -1.0, 3.0, 0.0])
    angle, x_mod = upstream_atan2(y, x)
    np.testing.assert_array_equal(x_mod, [1.0, -1.0, 0.0, -1.0, 3.0, 0.0])  # zero bins get real part 1
    assert angle[0] == 0.0
    assert angle[1] == np.arctan(-1.0) + PI_FLOAT32  # pi rounded to float32, not np.pi
    assert angle[2] == PI_FLOAT32 / 2 and angle[5] == -PI_FLOAT32 / 2
    assert abs(PI_FLOAT32 - np.pi) > 8e-8
    check(angle, np.arctan2(y, x), "wiener.atan2", "float64", what="upstream atan2 vs np.arctan2")


def test_exact_atan2_leaves_silent_bins_silent():
    v, mix = wiener_inputs(WIENER_CASES.index(dict(niter=1, softmask=False, residual=True, spec_channels=2)))
    silent = np.all(mix == 0, axis=-1)  # (T, F)
    upstream = wiener(v, mix, 1, residual=True)
    exact = wiener(v, mix, 1, residual=True, atan2="exact")
    assert np.all(exact[silent] == 0)
    assert np.all(np.abs(upstream[silent][..., -1]) > 0.5)  # upstream's residual picks up the 1.0 it wrote


@pytest.mark.parametrize("niter", [0, 1])
def test_exact_atan2_differs_only_by_the_float32_pi_without_residual(niter):
    v, mix = wiener_inputs(WIENER_CASES.index(dict(niter=niter, softmask=False, residual=False, spec_channels=2)))
    mix = np.where(mix == 0, 1e-3, mix)  # no exactly-zero bin: only the float32 pi remains
    upstream = wiener(v, mix, niter)
    exact = wiener(v, mix, niter, atan2="exact")
    check(exact, upstream, "wiener.atan2", "float64", what=f"exact vs upstream atan2, niter {niter}")


def test_em_with_no_iteration_returns_the_input():
    v, mix = wiener_inputs(0)
    y0 = wiener(v, mix, 0)
    y, _, _ = expectation_maximization(y0, mix, iterations=0)
    np.testing.assert_array_equal(y, y0)


def test_em_batches_do_not_change_the_result():
    v, mix = wiener_inputs(WIENER_CASES.index(dict(niter=2, softmask=False, residual=False, spec_channels=2)))
    y0 = wiener(v, mix, 0)
    a = expectation_maximization(y0, mix, 2, batch_size=200)[0]
    b = expectation_maximization(y0, mix, 2, batch_size=5)[0]
    check(b, a, "wiener", "float64", what="EM batch_size 5 vs 200")


def test_more_than_two_channels_is_a_clear_error():
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((4, 5, 3)) + 0j
    with pytest.raises(ValueError, match="1 or 2 channels"):
        wiener(np.abs(rng.standard_normal((4, 5, 3, 2))), mix, 1)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("niter", [0, 2])
def test_frame_mask_filters_padded_frames_as_if_absent(niter, residual):
    """A chunk padded with zero frames and masked (how a batched separator filters a track's last, shorter chunk)
    gives the unpadded call's output on its frames and zeros on the padding."""
    v, mix = wiener_inputs(WIENER_CASES.index(dict(niter=2, softmask=False, residual=False, spec_channels=2)))
    vp, xp = v.transpose(3, 2, 1, 0), mix.transpose(2, 1, 0)  # planar (S, C, F, T), (C, F, T)
    pad = 7
    v_pad = np.concatenate([vp, np.zeros(vp.shape[:-1] + (pad,))], axis=-1)
    x_pad = np.concatenate([xp, np.zeros(xp.shape[:-1] + (pad,))], axis=-1)
    mask = np.arange(xp.shape[-1] + pad) < xp.shape[-1]
    expected = wiener_planar(vp, xp, niter, residual=residual)
    out = wiener_planar(v_pad, x_pad, niter, residual=residual, frame_mask=mask)
    check(out[..., : xp.shape[-1]], expected, "wiener", "float64", what=f"masked padded chunk, niter {niter}")
    assert not np.any(out[..., xp.shape[-1] :])
    np.testing.assert_array_equal(wiener(v, mix, niter, residual=residual), expected.transpose(3, 2, 1, 0))
