"""End to end in the NNabla environment: files in, stems out.

- a canonical file (``core_spec.canonical.save_canonical`` of seeded weights) loads and separates like upstream;
- the real stempeg clip (``nnabla_clip`` fixture, made by ``make_clip_fixture.py`` in the main environment: this
  environment cannot decode stem files): umxhq-shaped separator against upstream's stems and the reference;
- an upstream-written model folder (``torch.save`` by openunmix's own layout), converted here by ``unmix-convert``
  (torch-free reader) to the canonical and the NNabla formats, separates the 8 kHz clip like upstream's own loader;
- the public entry points: ``Separator.separate`` input handling, Demucs ``separate_track`` and ``apply_model``
  with shifts against the spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core_spec.audio import AudioError
from core_spec.canonical import join_targets, load_canonical, save_canonical, split_targets
from core_spec.configs import umx_preset
from core_spec.reference import apply as ref_apply
from core_spec.reference.separator import separate
from core_spec.seeded import random_audio, random_weights
from core_spec.tolerances import check
from parity_tests import fixtures_demucs, fixtures_umx
from parity_tests.fixtures import load, weights_sha256
from umx_nnabla import Separator, apply_model, build, separate_track

from .helpers import run_on

ROOT = Path(__file__).resolve().parents[2]
DTYPE = "float32"


def test_canonical_file_separates(tmp_path: Path, device: str) -> None:
    fx, _ = load("umx_separator")
    name = "umxse_niter1"
    config, _ = fixtures_umx.SEPARATOR_CASES[name]
    save_canonical(tmp_path / "umxse", join_targets(fixtures_umx.separator_weights(config)), config)
    weights, loaded_config, _ = load_canonical(tmp_path / "umxse")
    assert loaded_config == config
    audio = fx[f"{name}.audio"]
    with run_on(device):
        separator = build.from_canonical(loaded_config, weights)
        out = separator.separate(audio[0].T)  # time-major (nb_timesteps, 2), as soundfile reads it
    assert out.shape == (1, 2, 2, audio.shape[-1]) and out.dtype == np.float32
    check(out, fx[f"{name}.out.float32"], "separator", DTYPE, device, what=f"canonical file {name} vs upstream")


@pytest.fixture(scope="module")
def clip():
    return load("nnabla_clip")


def test_real_clip_umxhq(clip, device: str) -> None:
    """umxhq shapes (8.9 M parameters a target), 4 targets, niter 1, on 1.2 s of the real clip."""
    from parity_tests.nnabla.make_clip_fixture import umxhq_config

    arrays, meta = clip
    config = umxhq_config()
    weights = fixtures_umx.separator_weights(config)
    assert {t: weights_sha256(w) for t, w in weights.items()} == meta["umxhq_weights_sha256"]
    mixture = arrays["mixture"]
    with run_on(device):
        out = build.from_canonical(config, weights)(mixture)
    check(out, arrays["umxhq.out"], "separator", DTYPE, device, what="real clip umxhq vs upstream")
    check(out, separate(mixture, weights, config), "separator", DTYPE, device, what="real clip umxhq vs reference")


def test_upstream_checkpoint_converted_separates(clip, tmp_path: Path, device: str) -> None:
    from unmix.convert import convert

    arrays, meta = clip
    folder = ROOT / meta["tiny_folder"]
    convert(folder, out=tmp_path / "tiny", targets=meta["tiny_targets"], to=["nnabla"])
    weights, config, _ = load_canonical(tmp_path / "tiny")
    assert config.separator.sample_rate == meta["tiny_rate"] and config.separator.targets == tuple(meta["tiny_targets"])
    mixture = arrays["mixture_8k"]
    with run_on(device):
        from_canonical = build.from_canonical(config, weights)(mixture)
        from_h5 = build.load_module(tmp_path / "tiny-nnabla")(mixture)
    check(from_canonical, arrays["tiny.out"], "separator", DTYPE, device, what="upstream model folder vs upstream")
    per_target = split_targets(weights, config.separator.targets)
    reference = separate(mixture.astype(np.float64), per_target, config)
    check(from_canonical, reference, "separator", DTYPE, device, what="upstream model folder vs reference")
    np.testing.assert_array_equal(from_h5, from_canonical)


def test_separate_input_handling(device: str) -> None:
    config = umx_preset("umxse")
    with run_on(device):
        separator = Separator.from_config(config, fixtures_umx.separator_weights(config))
        stereo = random_audio(4000, 2, seed=4).astype(np.float32)
        out = separator.separate(stereo)
        assert out.shape == (1, 2, 2, 4000)
        mono = separator.separate(stereo[0])  # duplicated to stereo, as upstream
        np.testing.assert_array_equal(mono, separator.separate(np.stack([stereo[0]] * 2)))
        assert np.isfinite(mono).all()  # equal channels: a singular Gram part in the Wiener filter, no 0 / 0
        with pytest.raises(AudioError, match="44100 Hz but the model runs at 16000"):
            separator.separate(stereo, sample_rate=44100)
        assert separator.separate(stereo, sample_rate=32000, resample=True).shape == (1, 2, 2, 2000)
        silence = separator.separate(np.zeros((2, 4000), np.float32))
        assert not silence.any()
        assert set(separator.to_dict(out)) == {"speech", "noise"}
        assert separator.target_names == ("speech", "noise")
        assert separator.config == config


@pytest.mark.parametrize("shifts", [0, 2])
def test_demucs_separate_track(shifts: int, device: str) -> None:
    case = fixtures_demucs.APPLY_CASES["c6d4"]
    config = case.config
    weights = random_weights(config, case.weights_seed)
    wav = 0.5 + fixtures_demucs.apply_mix(case)  # an offset: the track normalisation matters
    reference = ref_apply.separate_track(weights, config, wav, shifts=shifts, rng=0)
    with run_on(device):
        model = build.from_canonical(config, weights)
        out = separate_track(model, wav, shifts=shifts, rng=0)
        assert out.shape == (1, *reference.shape)
        check(out[0], reference, "demucs.apply", DTYPE, device, what=f"separate_track shifts={shifts}")
        silent = separate_track(model, np.full((2, 3000), 0.25))
        np.testing.assert_array_equal(silent, np.full((1, 4, 2, 3000), 0.25, np.float32))
        no_split = apply_model(model, fixtures_demucs.apply_mix(case))
        expected = ref_apply.apply_model(weights, config, fixtures_demucs.apply_mix(case))
        check(no_split, expected, "demucs.apply", DTYPE, device, what="apply_model without split")


def test_oracle_cli(tmp_path: Path) -> None:
    """``python -m umx_nnabla oracle-npz``: what ``make demo``'s NNabla column runs, through files."""
    import json
    import os
    import subprocess
    import sys

    from core_spec.configs import config_to_json
    from core_spec.reference.separator import filter_and_invert
    from core_spec.reference.transforms import complex_norm, stft
    from parity_tests.real_clip import oracle_config

    sep = oracle_config(niter=1)
    stems = np.stack([random_audio(30000, 2, seed=20 + i) * (i + 1) for i in range(4)])
    mixture = stems.sum(axis=0)
    np.savez(tmp_path / "in.npz", mixture=mixture, stems=stems, config=config_to_json(sep))
    cmd = [sys.executable, "-m", "umx_nnabla", "oracle-npz", "--input", str(tmp_path / "in.npz")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([*cmd, "--output", str(tmp_path / "out.npz")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    estimates = np.load(tmp_path / "out.npz")["estimates"]
    fft = sep.stft
    v = np.stack([complex_norm(stft(s[None], fft.n_fft, fft.n_hop)) for s in stems], axis=-1)
    reference = filter_and_invert(stft(mixture[None], fft.n_fft, fft.n_hop), v, sep, mixture.shape[-1])[0]
    check(estimates, reference, "separator", DTYPE, "cpu", what="oracle separation (python -m umx_nnabla oracle-npz)")
    assert json.loads(config_to_json(sep))["__class__"] == "SeparatorConfig"
