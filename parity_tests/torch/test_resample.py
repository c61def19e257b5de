"""umx_torch.resample (a strided conv1d, no julius) against ``julius.resample_frac`` and the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.reference.resample import resample_frac as ref_resample
from core_spec.reference.resample import resample_kernels
from core_spec.tolerances import check
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, julius_kernels, np_of, torch, torch_device
from umx_torch.resample import ResampleFrac, resample_frac

RATIOS = [(1, 2), (2, 1), (3, 2), (441, 160)]  # Demucs's up/down, a fractional one, 44.1 kHz -> 16 kHz
# julius builds its kernels in float32: for large reduced ratios (441 -> 160) they are only ~1e-5 accurate, so
# the spec's float64 kernels are compared with julius's where they are close (the ratios Demucs uses)
OWN_KERNEL_RATIOS = [(1, 2), (2, 1), (3, 2)]
LENGTHS = [999, 1000]


def _signal(length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, length])
    return rng.standard_normal((2, 2, length)) * np.linspace(0.1, 1.0, length)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("old,new", RATIOS)
def test_against_julius(old, new, dtype, length, device):
    import julius

    x = _signal(length)
    xt = torch.from_numpy(x).to(TORCH_DTYPES[dtype])
    expected = julius.resample_frac(xt, old, new).numpy()
    dev = torch_device(device)
    ours = np_of(resample_frac(xt.to(dev), old, new, kernels=julius_kernels(old, new)))
    assert ours.shape == expected.shape == (2, 2, new * length // old)
    check(ours, expected, "resample", dtype, device, what=f"torch resample {old}->{new} {dtype} julius kernels")
    if (old, new) in OWN_KERNEL_RATIOS:
        ours = np_of(resample_frac(xt.to(dev), old, new))  # the spec's float64-built kernels, cast
        stage = "resample.kernels"
        check(ours, expected, stage, dtype, device, what=f"torch resample {old}->{new} {dtype} own kernels vs julius")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("old,new", RATIOS)
def test_against_reference(old, new, dtype, device):
    x = _signal(777, seed=1)
    ours = np_of(resample_frac(torch.from_numpy(x).to(torch_device(device), TORCH_DTYPES[dtype]), old, new))
    check(ours, ref_resample(x, old, new), "resample", dtype, device, what=f"torch resample {old}->{new} {dtype} ref")


def test_kernels_and_constants():
    up = ResampleFrac(2, 4)  # reduced by the gcd
    assert (up.old_sr, up.new_sr) == (1, 2)
    np.testing.assert_array_equal(up.kernels, resample_kernels(1, 2))
    check(up.kernels, julius_kernels(1, 2), "resample.kernels", "float64", what="torch resample kernels vs julius")
    x = torch.full((3, 50), 0.25, dtype=torch.float64)
    check(up(x).numpy(), np.full((3, 100), 0.25), "identity", "float64", what="resampling a constant")
    assert ResampleFrac(5, 5)(x) is x
    assert up.state_dict() == {}
    with pytest.raises(ValueError, match="must have shape"):
        ResampleFrac(1, 2, kernels=np.zeros((1, 53)))
    with pytest.raises(ValueError, match="integers"):
        ResampleFrac(1.5, 2)  # type: ignore[arg-type]
