"""The NumPy UMX separator (waveform in, stems out) against upstream ``openunmix.model.Separator``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_spec.audio import prepare_audio
from core_spec.configs import umx_preset
from core_spec.reference.separator import separate, target_names
from core_spec.tolerances import check
from parity_tests.fixtures import load, weights_sha256
from parity_tests.fixtures_umx import SEPARATOR_CASES, separator_weights


@pytest.fixture(scope="module")
def fx():
    return load("umx_separator")


@pytest.mark.parametrize("name", sorted(SEPARATOR_CASES))
def test_separator_matches_upstream(fx, name):
    arrays, meta = fx
    cfg, length = SEPARATOR_CASES[name]
    weights = separator_weights(cfg)
    assert {t: weights_sha256(w) for t, w in weights.items()} == meta["weights_sha256"][name]
    audio = arrays[f"{name}.audio"]
    assert audio.shape == (1, 2, length)
    # upstream's float32-rounded Hann window (see core_spec.reference.transforms); the window stage is tested alone
    preset = "umxse" if cfg.model.nb_channels == 1 else "umxhq"
    window = load("umx_transforms")[0][f"{preset}.window.float64"]
    out = separate(audio, weights, cfg, window=window)
    assert out.shape == (1, len(target_names(cfg)), 2, length)
    check(out, arrays[f"{name}.out.float64"], "separator", "float64", what=f"separator {name}")


def _with(cfg, **wiener):
    sep = dataclasses.replace(cfg.separator, wiener=dataclasses.replace(cfg.separator.wiener, **wiener))
    return dataclasses.replace(cfg, separator=sep)


@pytest.mark.parametrize("preset", ["umxhq", "umxse"])
def test_digital_silence_separates_into_silence(preset):
    cfg = _with(umx_preset(preset), niter=1)
    weights = separator_weights(cfg)
    rate = cfg.separator.sample_rate
    audio = prepare_audio(np.zeros((2, 6000)), rate, rate)
    out = separate(audio, weights, cfg)
    assert np.all(np.isfinite(out)) and np.all(out == 0)


@pytest.mark.parametrize("atan2", ["upstream", "exact"])
def test_silence_with_residual_is_silent(atan2):
    # upstream's atan2 writes 1.0 into every zero bin and the residual keeps it, but a frame whose every bin is
    # 1.0 inverts to an impulse at n = 0, where the Hann window is 0: the waveform stays silent either way.
    cfg = _with(umx_preset("umxse"), niter=1, residual=True, atan2=atan2)
    out = separate(np.zeros((1, 2, 6000)), separator_weights(cfg), cfg)
    check(out, np.zeros_like(out), "silence", "float64", what=f"separator of silence, residual, {atan2} atan2")


def test_one_target_with_em_needs_a_residual():
    cfg = umx_preset("umxse")
    cfg = dataclasses.replace(cfg, separator=dataclasses.replace(cfg.separator, targets=("speech",)))
    with pytest.raises(ValueError, match="at least two sources"):
        separate(np.zeros((1, 2, 4000)), separator_weights(cfg), cfg)
