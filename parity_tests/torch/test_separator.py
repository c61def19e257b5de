"""umx_torch.Separator (waveform in, stems out) against upstream ``openunmix.model.Separator`` and the reference."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import pytest

from core_spec.audio import AudioError
from core_spec.configs import umx_preset
from core_spec.reference.separator import separate, target_names
from core_spec.tolerances import check
from parity_tests.fixtures import load, weights_sha256
from parity_tests.fixtures_umx import SEPARATOR_CASES
from parity_tests.fixtures_umx import separator_weights as _separator_weights
from parity_tests.torch.helpers import DTYPES, TORCH_DTYPES, np_of, oracle, real_clip, torch, torch_device
from umx_torch import Separator


@lru_cache(maxsize=8)
def separator_weights(config, seed: int = 0):
    """The fixtures' seeded weights (cached: they are read-only here)."""
    return _separator_weights(config, seed)


@pytest.fixture(scope="module")
def fx():
    return load("umx_separator")


@pytest.fixture(scope="module")
def windows() -> dict[str, np.ndarray]:
    return load("umx_transforms")[0]


def _with(cfg, **wiener):
    sep = dataclasses.replace(cfg.separator, wiener=dataclasses.replace(cfg.separator.wiener, **wiener))
    return dataclasses.replace(cfg, separator=sep)


def _separator(cfg, weights, dtype: str, device: str, **kwargs) -> Separator:
    return Separator.from_config(cfg, weights, device=torch_device(device), dtype=TORCH_DTYPES[dtype], **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SEPARATOR_CASES))
def test_separator_matches_upstream(fx, windows, name, dtype, device):
    arrays, meta = fx
    cfg, length = SEPARATOR_CASES[name]
    weights = separator_weights(cfg)
    assert {t: weights_sha256(w) for t, w in weights.items()} == meta["weights_sha256"][name]
    audio = arrays[f"{name}.audio"]
    window = windows[f"{'umxse' if cfg.model.nb_channels == 1 else 'umxhq'}.window.{dtype}"]
    sep = _separator(cfg, weights, dtype, device, window=window)  # upstream's float32-built window
    out = np_of(sep.separate(audio))
    assert out.shape == (1, len(target_names(cfg)), 2, length)
    check(
        out,
        arrays[f"{name}.out.{dtype}"],
        "separator",
        dtype,
        device,
        what=f"torch separator {name} {dtype} vs upstream",
    )
    # against the reference (float64 with the exact atan2): test_parity.py::test_port_separator


def test_batch_and_chunks(device):
    """Two items (each its own max_abs), 4-frame Wiener chunks, residual, float64 reference."""
    cfg = _with(umx_preset("umxse"), niter=1, residual=True, wiener_win_len=4, atan2="exact")
    weights = separator_weights(cfg)
    rng = np.random.default_rng(4)
    audio = 0.1 * rng.standard_normal((2, 2, 6000))
    audio[1] *= 40.0
    out = np_of(_separator(cfg, weights, "float64", device).separate(audio))
    check(out, separate(audio, weights, cfg), "separator", "float64", device, what="torch separator batch, win 4")


def test_real_clip_against_upstream(device):
    """The stempeg example (sum of its stems, seconds 1 to 4), umxhq shapes, seeded weights, niter=1, float32."""
    cfg = _with(umx_preset("umxhq"), niter=1)
    weights = separator_weights(cfg, seed=9)
    audio = real_clip()[None, :, 44100 : 4 * 44100].astype(np.float32)
    upstream = oracle.umx_separator(cfg, weights, torch.float32)
    with torch.no_grad():
        expected = upstream(torch.from_numpy(audio)).numpy()
    out = np_of(_separator(cfg, weights, "float32", device).separate(audio))
    for k, target in enumerate(cfg.separator.targets):
        check(out[:, k], expected[:, k], "separator", "float32", device, what=f"torch separator real clip {target}")


def test_inputs_go_through_prepare_audio():
    cfg = _with(umx_preset("umxse"), niter=0)
    sep = _separator(cfg, separator_weights(cfg), "float64", "cpu")
    mono = np.random.default_rng(1).standard_normal(5000)
    out = sep.separate(mono)
    np.testing.assert_array_equal(out.numpy(), sep.separate(np.stack([mono, mono])).numpy())
    np.testing.assert_array_equal(out.numpy(), sep.separate(np.stack([mono, mono], axis=1)).numpy())  # time-major
    with pytest.raises(AudioError, match="44100 Hz but the model runs at 16000 Hz"):
        sep.separate(mono, sample_rate=44100)
    bad = mono.copy()
    bad[7] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        sep.separate(bad)
    assert sep.separate(mono, sample_rate=32000, resample=True).shape == (1, 2, 2, 2500)


@pytest.mark.parametrize("atan2", ["upstream", "exact"])
def test_silence(atan2):
    cfg = _with(umx_preset("umxse"), niter=1, residual=True, atan2=atan2)
    sep = _separator(cfg, separator_weights(cfg), "float64", "cpu")
    out = sep.separate(np.zeros((2, 6000))).numpy()
    assert np.all(np.isfinite(out)) and np.all(out == 0)
    # upstream's atan2 writes 1.0 into exactly-zero mixture bins and the residual picks it up (documented quirk;
    # a wholly silent frame inverts to an impulse at the window's zero, so it does not reach the waveform)
    mix = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 2, 513, 6)) + 0j)
    mix[..., 2:4, 1] = 0
    spectrograms = mix.abs()[:, None, :1].expand(1, 2, 1, 513, 6) * 0.3
    y = sep.filter(spectrograms, mix)
    assert torch.all(y[:, :-1, :, 2:4, 1] == 0)
    residual = y[0, -1, :, 2:4, 1]
    if atan2 == "exact":
        assert torch.all(residual == 0)
    else:
        assert torch.all(residual.abs() > 0.5)


def test_one_target_with_em_needs_a_residual():
    cfg = umx_preset("umxse")
    cfg = dataclasses.replace(cfg, separator=dataclasses.replace(cfg.separator, targets=("speech",)))
    with pytest.raises(ValueError, match="at least two sources"):
        _separator(cfg, separator_weights(cfg), "float32", "cpu").separate(np.zeros((2, 4000)))


def test_to_dict_and_config():
    cfg = _with(umx_preset("umxse"), niter=0, residual=True)
    sep = _separator(cfg, separator_weights(cfg), "float32", "cpu")
    assert sep.config == cfg
    out = sep.separate(np.random.default_rng(0).standard_normal((2, 3000)))
    parts = sep.to_dict(out)
    assert list(parts) == ["speech", "noise", "residual"]
    total = sep.to_dict(out, {"all": ["speech", "noise", "residual"]})["all"]
    torch.testing.assert_close(total, out.sum(dim=1))
