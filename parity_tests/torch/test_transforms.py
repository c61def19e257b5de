"""umx_torch STFT / ISTFT / magnitude against upstream (fixtures) and the NumPy reference.

The shared stage tests (``parity_tests/harness.py``, run by ``test_parity.py``) cover the STFT and ISTFT against
the reference and against upstream (with upstream's float32-built window, both dtypes), the shortest signal and
the ``ShortSignalError`` below it. Here: the port's own window, the magnitude on upstream's STFT of both presets
in both dtypes, the normalized transform and batch dimensions.
"""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.configs import umx_preset
from core_spec.reference import transforms as ref
from core_spec.seeded import random_audio
from core_spec.tolerances import check
from parity_tests.fixtures import load
from parity_tests.fixtures_umx import TRANSFORM_PRESETS
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, np_of, torch, torch_device
from umx_torch.transforms import complex_norm, hann_window, istft, stft

PRESETS = sorted(TRANSFORM_PRESETS)


@pytest.fixture(scope="module")
def fx() -> dict[str, np.ndarray]:
    return load("umx_transforms")[0]


def _t(x: np.ndarray, dtype: str, device: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch_device(device))
    return t.to(TORCH_DTYPES[dtype]) if not np.iscomplexobj(x) else t.to(TORCH_DTYPES[dtype].to_complex())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_window(fx, preset, dtype, device):
    n_fft = umx_preset(preset).separator.stft.n_fft
    w = np_of(hann_window(n_fft, TORCH_DTYPES[dtype], torch_device(device)))
    if dtype == "float32":  # upstream's window is exactly torch.hann_window in float32
        np.testing.assert_array_equal(w, fx[f"{preset}.window.float32"])
    check(w, ref.hann_window(n_fft), "stft", dtype, device, what=f"torch {preset} window {dtype} vs reference")


@pytest.mark.parametrize("mono", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_magnitude(fx, preset, dtype, mono, device):
    key = f"{preset}.magnitude{'_mono' if mono else ''}.{dtype}"
    mag = np_of(complex_norm(_t(fx[f"{preset}.stft.{dtype}"], dtype, device), mono=mono))
    check(mag, fx[key], "magnitude", dtype, device, what=f"torch {key} vs upstream")
    X = fx[f"{preset}.stft.float64"]
    mag = np_of(complex_norm(_t(X, dtype, device), mono=mono))
    check(mag, ref.complex_norm(X, mono), "magnitude", dtype, device, what=f"torch {key} vs ref")


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_and_batch_dims(dtype, normalized, device):
    x = random_audio(3 * 1024 + 17, 2, seed=5, nb_samples=3)
    X = stft(_t(x, dtype, device), 1024, 256, normalized=normalized)
    assert X.shape == (3, 2, 513, 1 + x.shape[-1] // 256)
    check(np_of(X), ref.stft(x, 1024, 256, normalized=normalized), "stft", dtype, device, what="stft normalized")
    y = np_of(istft(X, 1024, 256, normalized=normalized, length=x.shape[-1]))
    check(y, x, "round_trip", dtype, device, what=f"torch round trip {dtype} normalized={normalized}")
    one = np_of(stft(_t(x[1, 0], dtype, device), 1024, 256, normalized=normalized))
    np.testing.assert_array_equal(one, np_of(X)[1, 0])
