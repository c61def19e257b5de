"""The NumPy STFT/ISTFT/magnitude against upstream's (torch.stft via openunmix.transforms), float64 fixtures."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.configs import umx_preset
from core_spec.reference.transforms import ShortSignalError, complex_norm, hann_window, istft, min_length, stft
from core_spec.seeded import random_audio
from core_spec.tolerances import check
from parity_tests.fixtures import load
from parity_tests.fixtures_umx import TRANSFORM_PRESETS

PRESETS = sorted(TRANSFORM_PRESETS)


@pytest.fixture(scope="module")
def fx() -> dict[str, np.ndarray]:
    return load("umx_transforms")[0]


@pytest.mark.parametrize("preset", PRESETS)
def test_window_is_upstream_hann_up_to_float32_rounding(fx, preset):
    cfg = umx_preset(preset).separator.stft
    check(hann_window(cfg.n_fft), fx[f"{preset}.window.float64"], "window", "float64", what=f"{preset} window")


@pytest.mark.parametrize("preset", PRESETS)
def test_stft_matches_upstream(fx, preset):
    cfg = umx_preset(preset).separator.stft
    X = stft(fx[f"{preset}.audio"], cfg.n_fft, cfg.n_hop, window=fx[f"{preset}.window.float64"])
    assert X.shape[-1] == cfg.nb_frames(fx[f"{preset}.audio"].shape[-1])
    check(X, fx[f"{preset}.stft.float64"], "stft", "float64", what=f"{preset} stft")


@pytest.mark.parametrize("preset", PRESETS)
def test_istft_matches_upstream(fx, preset):
    cfg = umx_preset(preset).separator.stft
    length = fx[f"{preset}.audio"].shape[-1]
    y = istft(fx[f"{preset}.stft.float64"], cfg.n_fft, cfg.n_hop, length=length, window=fx[f"{preset}.window.float64"])
    check(y, fx[f"{preset}.istft.float64"], "istft", "float64", what=f"{preset} istft")


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("mono", [False, True])
def test_magnitude_matches_upstream(fx, preset, mono):
    key = f"{preset}.magnitude_mono.float64" if mono else f"{preset}.magnitude.float64"
    check(complex_norm(fx[f"{preset}.stft.float64"], mono=mono), fx[key], "magnitude", "float64", what=key)


@pytest.mark.parametrize("n_fft,n_hop", [(4096, 1024), (1024, 512), (512, 128)])
@pytest.mark.parametrize("normalized", [False, True])
def test_round_trip(n_fft, n_hop, normalized):
    x = random_audio(3 * n_fft + 17, 2, seed=5)
    y = istft(stft(x, n_fft, n_hop, normalized=normalized), n_fft, n_hop, normalized=normalized, length=x.shape[-1])
    check(y, x, "round_trip", "float64", what=f"round trip n_fft={n_fft} normalized={normalized}")


def test_periodic_hann():
    w = hann_window(8)
    assert w[0] == 0 and w[4] == 1
    check(w[1:4], w[7:4:-1], "identity", "float64", what="periodic Hann symmetry")


def test_istft_length_pads_with_zeros():
    x = random_audio(5000, 1, seed=6)
    X = stft(x, 1024, 256)
    y = istft(X, 1024, 256, length=8000)
    assert y.shape == (1, 8000)
    assert np.all(y[..., 5376:] == 0)  # beyond the last frame's reach: zeros, as torch.istft pads


@pytest.mark.parametrize("length", [0, 1, 2048])
def test_short_input_is_a_clear_error(length):
    assert min_length(4096) == 2049
    with pytest.raises(ShortSignalError, match=f"signal of {length} samples is too short for n_fft=4096"):
        stft(np.zeros((2, length)), 4096, 1024)


def test_shortest_accepted_input():
    x = random_audio(2049, 2, seed=7)
    X = stft(x, 4096, 1024)
    assert X.shape == (2, 2049, 3)
    check(istft(X, 4096, 1024, length=2049), x, "round_trip", "float64", what="shortest input round trip")
