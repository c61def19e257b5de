"""umx_torch STFT / ISTFT / magnitude against upstream (fixtures) and the NumPy reference."""

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
from umx_torch.transforms import ShortSignalError, complex_norm, hann_window, istft, stft

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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_stft(fx, preset, dtype, device):
    cfg = umx_preset(preset).separator.stft
    audio = fx[f"{preset}.audio"]
    window = _t(fx[f"{preset}.window.{dtype}"], dtype, device)
    X = np_of(stft(_t(audio, dtype, device), cfg.n_fft, cfg.n_hop, window=window))
    check(X, fx[f"{preset}.stft.{dtype}"], "stft", dtype, device, what=f"torch {preset} stft {dtype} vs upstream")
    X = np_of(stft(_t(audio, dtype, device), cfg.n_fft, cfg.n_hop))
    check(X, ref.stft(audio, cfg.n_fft, cfg.n_hop), "stft", dtype, device, what=f"torch {preset} stft {dtype} vs ref")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_istft(fx, preset, dtype, device):
    cfg = umx_preset(preset).separator.stft
    length = fx[f"{preset}.audio"].shape[-1]
    X = fx[f"{preset}.stft.{dtype}"]
    window = _t(fx[f"{preset}.window.{dtype}"], dtype, device)
    y = np_of(istft(_t(X, dtype, device), cfg.n_fft, cfg.n_hop, length=length, window=window))
    check(y, fx[f"{preset}.istft.{dtype}"], "istft", dtype, device, what=f"torch {preset} istft {dtype} vs upstream")
    X = fx[f"{preset}.stft.float64"]
    y = np_of(istft(_t(X, dtype, device), cfg.n_fft, cfg.n_hop, length=length))
    expected = ref.istft(X, cfg.n_fft, cfg.n_hop, length=length)
    check(y, expected, "istft", dtype, device, what=f"torch {preset} istft {dtype} vs ref")


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


@pytest.mark.parametrize("length", [0, 1, 2048])
def test_short_input_is_a_clear_error(length):
    with pytest.raises(ShortSignalError, match=f"signal of {length} samples is too short for n_fft=4096"):
        stft(torch.zeros(2, length), 4096, 1024)


def test_shortest_input_and_length_padding():
    x = torch.from_numpy(random_audio(2049, 2, seed=7))
    X = stft(x, 4096, 1024)
    assert X.shape == (2, 2049, 3)
    y = istft(X, 4096, 1024, length=3000)
    assert y.shape == (2, 3000)
    check(np_of(y[:, :2049]), x.numpy(), "round_trip", "float64", what="torch shortest input round trip")
