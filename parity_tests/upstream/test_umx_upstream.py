"""Open-Unmix spec against the live upstream code (main environment: torch, openunmix 1.3.0)."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.configs import UMX_PRESETS, umx_preset
from core_spec.params import check_weights, nb_parameters, parameter_inventory
from core_spec.reference.separator import separate
from core_spec.reference.transforms import istft, stft
from core_spec.seeded import random_audio, random_weights
from core_spec.tolerances import SDR_DIFF_DB, check
from parity_tests import oracle, real_clip
from parity_tests.fixtures import load
from parity_tests.fixtures_umx import separator_weights
from parity_tests.oracle import torch

# parameters per target of the released models (upstream-notes 1.3), running statistics not counted
RELEASED_PARAMETERS = {"umx": 8_893_348, "umxhq": 8_893_348, "umxl": 28_257_188, "umxse": 1_583_622}


@pytest.mark.parametrize("preset", sorted(UMX_PRESETS))
def test_inventory_equals_upstream_state_dict(preset):
    from openunmix.model import OpenUnmix

    cfg = umx_preset(preset).model
    model = OpenUnmix(
        nb_bins=cfg.nb_bins, nb_channels=cfg.nb_channels, hidden_size=cfg.hidden_size, max_bin=cfg.max_bin
    )
    upstream = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert parameter_inventory(cfg) == upstream
    trainable = sum(p.numel() for p in model.parameters())
    assert trainable == RELEASED_PARAMETERS[preset]
    running = sum(v.numel() for k, v in model.state_dict().items() if "running_" in k)
    assert nb_parameters(cfg) == trainable + running


def test_max_bin_from_bandwidth():
    from openunmix.utils import bandwidth_to_max_bin

    for preset in UMX_PRESETS:
        cfg = umx_preset(preset)
        expected = bandwidth_to_max_bin(cfg.separator.sample_rate, cfg.separator.stft.n_fft, 16000)
        assert cfg.model.max_bin == expected
    assert umx_preset("umxhq").model.max_bin == 1487 and umx_preset("umxse").model.max_bin == 513


def test_seeded_weights_load_strictly_into_upstream():
    cfg = umx_preset("umxhq").model
    weights = random_weights(cfg, seed=3)
    model = oracle.umx_model(cfg, weights)
    for name, value in model.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(value.numpy(), weights[name].astype(np.float64))
    assert all(v.dtype == np.float32 for v in weights.values())
    assert min(float(weights[k].min()) for k in weights if k.endswith("running_var")) > 0


def test_legacy_keys_are_ignored_and_everything_else_is_named():
    cfg = umx_preset("umxhq").model
    weights = random_weights(cfg)
    legacy = {"sample_rate": np.array(44100), "stft.window": np.zeros(4096), "transform.0.window": np.zeros(4096)}
    legacy["bn1.num_batches_tracked"] = np.array(0)
    assert list(check_weights({**weights, **legacy}, cfg)) == list(weights)
    broken = dict(weights)
    del broken["fc2.weight"]
    broken["fc1.weight"] = np.zeros((512, 100), np.float32)
    broken["extra.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as err:
        check_weights(broken, cfg, "vocals.pth")
    text = str(err.value)
    assert "vocals.pth" in text
    assert "missing     fc2.weight: expected shape (512, 1024)" in text
    assert "unexpected  extra.bias: shape (3,)" in text
    assert "mis-shaped  fc1.weight: expected (512, 2974), got (512, 100)" in text


def test_fixtures_were_made_by_the_installed_upstream():
    meta = load("umx_model_umxhq")[1]
    current = oracle.versions()
    for key in ("torch", "openunmix"):
        assert meta["versions"][key] == current[key], "fixtures are stale: run 'make fixtures'"


def test_batched_separation_matches_upstream():
    cfg = umx_preset("umxse")
    weights = separator_weights(cfg, seed=5)
    audio = random_audio(6000, 2, seed=11, nb_samples=2)
    with torch.no_grad():
        separator = oracle.umx_separator(cfg, weights, torch.float64)
        expected = separator(torch.from_numpy(audio)).numpy()
        window = separator.stft.window.numpy()
    check(separate(audio, weights, cfg, window=window), expected, "separator", "float64", what="umxse batch of 2")


@pytest.fixture(scope="module")
def clip() -> real_clip.Clip:
    return real_clip.load_clip()


def test_real_clip_round_trip(clip):
    n_fft, n_hop = 4096, 1024
    y = istft(stft(clip.mixture, n_fft, n_hop), n_fft, n_hop, length=clip.mixture.shape[-1])
    check(y, clip.mixture, "round_trip", "float64", what="stempeg clip STFT -> ISTFT")


@pytest.mark.slow
def test_oracle_separation_sdr_equals_upstream(clip):
    sep = real_clip.oracle_config(niter=1)
    ours = real_clip.sdr_per_source(clip, real_clip.oracle_reference(clip, sep))
    theirs = real_clip.sdr_per_source(clip, real_clip.oracle_upstream(clip, sep))
    for name in real_clip.STEM_NAMES:
        assert abs(ours[name] - theirs[name]) <= SDR_DIFF_DB, (name, ours[name], theirs[name])
        assert ours[name] > 5.0  # the oracle filter separates: a sanity floor, far below what it reaches
