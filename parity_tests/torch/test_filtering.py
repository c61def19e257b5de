"""umx_torch Wiener/EM against upstream ``openunmix.filtering`` (fixtures and live) and the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.configs import SeparatorConfig, STFTConfig, WienerConfig
from core_spec.reference import filtering as ref
from core_spec.reference import separator as ref_separator
from core_spec.shapes import wiener_chunks
from core_spec.tolerances import check
from parity_tests.fixtures import load
from parity_tests.fixtures_umx import WIENER_CASES, WIENER_MONO_CASES, wiener_inputs, wiener_mono_inputs
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, np_of, torch, torch_device
from umx_torch.filtering import expectation_maximization, initial_estimate, upstream_atan2, wiener, wiener_planar
from umx_torch.separator import filter_and_invert, filter_chunks


@pytest.fixture(scope="module")
def fx() -> dict[str, np.ndarray]:
    return load("umx_wiener")[0]


def _name(case: dict) -> str:
    return (
        f"niter{case['niter']}-{'softmask' if case['softmask'] else 'phase'}-"
        f"{'residual' if case['residual'] else 'targets'}-C{case.get('spec_channels', case.get('channels'))}"
    )


def _run(v: np.ndarray, mix: np.ndarray, dtype: str, device: str, **kwargs) -> np.ndarray:
    dev = torch_device(device)
    vt = torch.from_numpy(v).to(dev, TORCH_DTYPES[dtype])
    mt = torch.from_numpy(mix).to(dev, TORCH_DTYPES[dtype].to_complex())
    return np_of(wiener(vt, mt, **kwargs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("i", range(len(WIENER_CASES)), ids=[_name(c) for c in WIENER_CASES])
def test_wiener_two_channel_mixture(fx, i, dtype, device):
    """Fixture cases: 2-channel mixtures with silent frames/bins, 1- or 2-channel magnitudes."""
    c = WIENER_CASES[i]
    v, mix = wiener_inputs(i)
    kwargs = dict(iterations=c["niter"], softmask=c["softmask"], residual=c["residual"])
    out = _run(v, mix, dtype, device, **kwargs)
    check(out, fx[f"{i}.out.{dtype}"], "wiener", dtype, device, what=f"torch wiener {_name(c)} {dtype} vs upstream")
    check(out, ref.wiener(v, mix, **kwargs), "wiener", dtype, device, what=f"torch wiener {_name(c)} {dtype} vs ref")


@pytest.fixture(scope="module")
def upstream_mono() -> dict[tuple[int, str], np.ndarray]:
    """Upstream on 1-channel mixtures (not in the fixtures), run live; the shared stage tests compare every port
    with the spec on the same inputs (``harness.test_port_wiener_mono``)."""
    from openunmix.filtering import wiener as upstream_wiener

    out = {}
    for i, c in enumerate(WIENER_MONO_CASES):
        v, mix = wiener_mono_inputs(i)
        for dtype in DTYPES:
            mix_t = torch.from_numpy(np.stack([mix.real, mix.imag], -1)).to(TORCH_DTYPES[dtype])
            with torch.no_grad():
                y = upstream_wiener(
                    torch.from_numpy(v).to(TORCH_DTYPES[dtype]), mix_t, c["niter"], c["softmask"], c["residual"]
                )
            out[i, dtype] = y[..., 0, :].numpy() + 1j * y[..., 1, :].numpy()
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("i", range(len(WIENER_MONO_CASES)), ids=[_name(c) for c in WIENER_MONO_CASES])
def test_wiener_one_channel_mixture(upstream_mono, i, dtype, device):
    c = WIENER_MONO_CASES[i]
    v, mix = wiener_mono_inputs(i)
    kwargs = dict(iterations=c["niter"], softmask=c["softmask"], residual=c["residual"])
    out = _run(v, mix, dtype, device, **kwargs)
    check(out, upstream_mono[i, dtype], "wiener", dtype, device, what=f"torch wiener {_name(c)} {dtype} vs upstream")
    check(out, ref.wiener(v, mix, **kwargs), "wiener", dtype, device, what=f"torch wiener {_name(c)} {dtype} vs ref")


@pytest.mark.parametrize("residual", [False, True])
def test_exact_atan2(residual, device):
    i = WIENER_CASES.index(dict(niter=1, softmask=False, residual=residual, spec_channels=2))
    v, mix = wiener_inputs(i)
    out = _run(v, mix, "float64", device, iterations=1, residual=residual, atan2="exact")
    expected = ref.wiener(v, mix, 1, residual=residual, atan2="exact")
    check(out, expected, "wiener", "float64", device, what=f"torch wiener exact atan2 residual={residual} vs ref")
    silent = np.all(mix == 0, axis=-1)
    assert np.all(out[silent] == 0)  # silence stays silent, the residual included


def test_upstream_atan2_quirks():
    y = torch.tensor([0.0, 1.0, 1.0, -1.0, 2.0, -2.0, 0.0], dtype=torch.float64)
    x = torch.tensor([0.0, -1.0, 0.0, -1.0, 3.0, 0.0, -4.0], dtype=torch.float64)
    angle, x_mod = upstream_atan2(y, x)
    expected, expected_x = ref.upstream_atan2(y.numpy(), x.numpy())
    np.testing.assert_array_equal(x_mod.numpy(), expected_x)
    np.testing.assert_array_equal(angle.numpy(), expected)
    assert x[0] == 0  # the input is not modified (upstream writes 1.0 into it)


def test_leading_dimensions_are_independent_calls(device):
    dev = torch_device(device)
    cases = [wiener_inputs(WIENER_CASES.index(dict(niter=2, softmask=False, residual=True, spec_channels=2)))]
    cases.append((cases[0][0][::-1].copy(), 3.0 * cases[0][1][::-1]))  # a different max_abs
    v = torch.from_numpy(np.stack([c[0] for c in cases])).to(dev)
    mix = torch.from_numpy(np.stack([c[1] for c in cases])).to(dev)
    out = np_of(wiener(v, mix, 2, residual=True))
    for b, (vb, mb) in enumerate(cases):
        check(out[b], ref.wiener(vb, mb, 2, residual=True), "wiener", "float64", device, what=f"torch wiener batch {b}")


def test_upstream_real_layout_in_and_out(fx):
    i = WIENER_CASES.index(dict(niter=1, softmask=True, residual=False, spec_channels=1))
    v, mix = wiener_inputs(i)
    mix_real = torch.from_numpy(np.stack([mix.real, mix.imag], -1))
    out = wiener(torch.from_numpy(v), mix_real, 1, softmask=True)
    assert out.shape == mix_real.shape + (v.shape[-1],)
    out = out[..., 0, :].numpy() + 1j * out[..., 1, :].numpy()
    check(out, fx[f"{i}.out.float64"], "wiener", "float64", what="torch wiener real layout vs upstream")


@pytest.mark.parametrize("channels", [1, 2])
def test_expectation_maximization_returns_v_and_R(channels):
    rng = np.random.default_rng(3)
    shape = (8, 5, channels)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    y0 = (rng.standard_normal(shape + (3,)) + 1j * rng.standard_normal(shape + (3,))) * 0.5
    y, v, R = expectation_maximization(torch.from_numpy(y0), torch.from_numpy(x), iterations=2)
    ry, rv, rR = ref.expectation_maximization(y0, x, iterations=2)
    check(y.numpy(), ry, "wiener", "float64", what=f"torch EM y C={channels}")
    check(v.numpy(), rv, "wiener", "float64", what=f"torch EM v C={channels}")
    check(R.numpy(), rR, "wiener", "float64", what=f"torch EM R C={channels}")


@pytest.mark.parametrize("niter", [0, 1, 2])
def test_differentiable(niter):
    """Gradients through the whole filter (upstream's is not differentiable with niter > 0)."""
    rng = np.random.default_rng(5)
    v = torch.from_numpy(np.abs(rng.standard_normal((2, 2, 3, 4))) + 0.1).requires_grad_()
    mix = torch.from_numpy(rng.standard_normal((2, 2, 3, 4)) + 1j * rng.standard_normal((2, 2, 3, 4)))
    torch.autograd.gradcheck(lambda v: wiener_planar(v, mix, niter, residual=True).abs(), (v,))


def test_more_than_two_channels_is_a_clear_error():
    mix = torch.zeros(4, 5, 3, dtype=torch.complex128)
    with pytest.raises(ValueError, match="1 or 2 channels"):
        wiener(torch.ones(4, 5, 3, 2, dtype=torch.float64), mix, 1)


def _planar(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixture case ``i`` in the planar layout: ``v (S, C|1, F, T)``, ``mix (C, F, T)``."""
    v, mix = wiener_inputs(i)
    return v.transpose(3, 2, 1, 0).copy(), mix.transpose(2, 1, 0).copy()


@pytest.mark.parametrize("softmask", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_initial_estimate_is_the_spec(softmask, residual):
    """The estimates and the mixture the rest of the filter sees (upstream's atan2: 1.0 in the zero bins)."""
    v, mix = _planar(WIENER_CASES.index(dict(niter=2, softmask=False, residual=True, spec_channels=2)))
    y, seen = initial_estimate(torch.from_numpy(v), torch.from_numpy(mix), softmask, residual)
    ry, rseen = ref.initial_estimate(v, mix, softmask, residual)
    check(np_of(y), ry, "wiener", "float64", what=f"torch initial estimate softmask={softmask} residual={residual}")
    np.testing.assert_array_equal(np_of(seen), rseen)


@pytest.mark.parametrize("niter", [0, 2])
def test_frame_mask_is_the_unpadded_call(niter, device):
    """``wiener_planar(frame_mask=)``: a chunk padded with zero frames and masked gives the unpadded chunk's
    output, and zeros in the padding (the spec's rule; zero mixture bins get 1.0 from upstream's atan2, so the
    mask must apply after the initial estimate)."""
    dev = torch_device(device)
    v, mix = _planar(WIENER_CASES.index(dict(niter=2, softmask=False, residual=True, spec_channels=2)))
    nb_frames, pad = v.shape[-1], 3
    vpad = np.concatenate([v, np.zeros(v.shape[:-1] + (pad,))], axis=-1)
    mpad = np.concatenate([mix, np.zeros(mix.shape[:-1] + (pad,))], axis=-1)
    mask = np.arange(nb_frames + pad) < nb_frames
    t = {k: torch.from_numpy(a).to(dev) for k, a in dict(v=v, mix=mix, vpad=vpad, mpad=mpad, mask=mask).items()}
    padded = np_of(wiener_planar(t["vpad"], t["mpad"], niter, residual=True, frame_mask=t["mask"]))
    plain = np_of(wiener_planar(t["v"], t["mix"], niter, residual=True))
    check(padded[..., :nb_frames], plain, "wiener", "float64", device, what=f"torch masked vs unpadded niter={niter}")
    assert np.all(padded[..., nb_frames:] == 0)
    expected = ref.wiener_planar(vpad, mpad, niter, residual=True, frame_mask=mask)
    check(padded, expected, "wiener", "float64", device, what=f"torch masked vs the spec's masked niter={niter}")


def test_padded_chunks_in_a_batch_equal_the_chunk_loop(device):
    """The two strategies of :func:`core_spec.shapes.wiener_chunks`: :func:`filter_chunks` loops over the chunks
    (the last one shorter); all chunks as a leading axis, padded and masked, give the same frames."""
    dev = torch_device(device)
    v, mix = _planar(WIENER_CASES.index(dict(niter=2, softmask=False, residual=True, spec_channels=2)))
    win, nb_frames = 5, v.shape[-1]
    plan = wiener_chunks(nb_frames, win)
    assert plan.pad > 0
    wcfg = WienerConfig(niter=2, residual=True, wiener_win_len=win)
    loop = np_of(filter_chunks(torch.from_numpy(v[None]).to(dev), torch.from_numpy(mix[None]).to(dev), wcfg))[0]

    def chunked(x: np.ndarray) -> torch.Tensor:  # (..., T) -> (nb_chunks, ..., win)
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (plan.pad,), x.dtype)], axis=-1)
        return torch.from_numpy(np.moveaxis(x.reshape(x.shape[:-1] + (plan.nb_chunks, win)), -2, 0).copy()).to(dev)

    mask = torch.from_numpy(plan.frame_mask()).to(dev)
    batched = np_of(wiener_planar(chunked(v), chunked(mix), 2, residual=True, frame_mask=mask))
    batched = np.moveaxis(batched, 0, -2).reshape(loop.shape[:-1] + (-1,))
    check(batched[..., :nb_frames], loop, "wiener", "float64", device, what="torch padded chunks vs the chunk loop")
    expected = ref_separator.filter_chunks(v[None], mix[None], wcfg)[0]
    check(loop, expected, "wiener", "float64", device, what="torch filter_chunks vs the spec")


@pytest.mark.parametrize("niter", [0, 1])
def test_filter_and_invert_is_the_spec(niter, device):
    """Wiener chunk by chunk (the last chunk shorter), then the inverse STFT, from upstream-layout magnitudes."""
    dev = torch_device(device)
    rng = np.random.default_rng(21)
    sep = SeparatorConfig(
        targets=("a", "b"), stft=STFTConfig(n_fft=64, n_hop=16), wiener=WienerConfig(niter=niter, wiener_win_len=5)
    )
    nb_bins, nb_frames = sep.stft.nb_bins, 12
    mix_stft = rng.standard_normal((1, 2, nb_bins, nb_frames)) + 1j * rng.standard_normal((1, 2, nb_bins, nb_frames))
    spectrograms = np.abs(rng.standard_normal((1, 2, nb_bins, nb_frames, 2)))
    length = sep.stft.n_hop * (nb_frames - 1)
    out = filter_and_invert(torch.from_numpy(mix_stft).to(dev), torch.from_numpy(spectrograms).to(dev), sep, length)
    expected = ref_separator.filter_and_invert(mix_stft, spectrograms, sep, length)
    check(np_of(out), expected, "separator", "float64", device, what=f"torch filter_and_invert niter={niter}")
