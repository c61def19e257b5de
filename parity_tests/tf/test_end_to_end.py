"""The TensorFlow port end to end against the live upstream code: the UMX separator on the real stempeg clip (from a
canonical file), Demucs ``apply_model`` with split; and the package's own guarantees (backend selection, errors).
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_spec.audio import AudioError
from core_spec.canonical import join_targets, save_canonical
from core_spec.configs import demucs_preset, umx_preset
from core_spec.reference import apply as ref_apply
from core_spec.reference.transforms import ShortSignalError
from core_spec.seeded import random_audio, random_weights
from core_spec.tolerances import check
from parity_tests.tf.helpers import on_device, oracle_tf, tf
from umx_tf import Separator, apply_model, from_canonical, from_canonical_file, load_module, stft

ROOT = Path(__file__).resolve().parents[2]
CLIP_SECONDS = 3.0


@pytest.mark.slow
@pytest.mark.upstream
def test_separator_from_converted_checkpoints_on_real_clip(tmp_path, device):
    """umxhq-shaped seeded weights in a canonical file (``core_spec.canonical.save_canonical``), read with
    ``umx_tf.from_canonical_file``, separate 3 s of the stempeg clip (niter 1) through the compiled graph
    (``Separator.separate``: XLA on CPU) like upstream ``openunmix.model.Separator`` in float32. The same weights
    saved by upstream (``torch.save`` of each target's ``OpenUnmix.state_dict()``) and converted by
    ``unmix-convert --to tf`` (``unmix.convert``) load (``umx_tf.load_module``) into the very same
    Keras variables, bit for bit.
    """
    from parity_tests import oracle, real_clip
    from parity_tests.oracle import torch
    from unmix.convert import convert

    clip = real_clip.load_clip()  # a clear error without ffmpeg
    audio = clip.mixture[:, : int(CLIP_SECONDS * clip.rate)].astype(np.float32)
    config = umx_preset("umxhq")
    assert config.separator.wiener.niter == 1
    weights = {t: random_weights(config.model, seed=40 + i) for i, t in enumerate(config.separator.targets)}
    upstream_models = {t: oracle.umx_model(config.model, w, torch.float32) for t, w in weights.items()}
    (tmp_path / "upstream").mkdir()
    for target, model in upstream_models.items():
        torch.save(model.state_dict(), tmp_path / "upstream" / f"{target}.pth")
    convert(tmp_path / "upstream", tmp_path / "converted" / "umxhq", model="umxhq", to=["tf"], progress="never")
    save_canonical(tmp_path / "umxhq", join_targets(weights), config)
    with torch.no_grad():
        upstream = oracle.umx_separator(config, weights, torch.float32)(torch.from_numpy(audio[None])).numpy()

    with on_device(device):
        separator = from_canonical_file(tmp_path / "umxhq.safetensors")
        converted = load_module(tmp_path / "converted" / "umxhq-tf.weights.h5")
        assert isinstance(separator, Separator) and isinstance(converted, Separator)
        ours = separator.separate(audio).numpy()
    assert len(converted.weights) == len(separator.weights)
    for a, b in zip(converted.weights, separator.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
    assert ours.shape == upstream.shape == (1, 4, 2, audio.shape[-1])
    check(ours, upstream, "separator", "float32", device, what="tf separator real clip vs upstream float32")


@pytest.mark.slow
@pytest.mark.upstream
def test_oracle_separation_of_real_clip(device):
    """The ``make demo`` column: oracle Wiener separation (true magnitudes, niter 1) of 3 s of the real clip, TF
    float32 against the NumPy reference and upstream openunmix (float64; its float32-built window is within float32
    rounding). The filter's EM runs in float64 (``umx_tf.filtering``), so the float32 run stays within float32
    rounding of its inputs on real music, where float32 EM (upstream's) loses most digits."""
    from parity_tests import real_clip

    clip = real_clip.load_clip()
    n = int(CLIP_SECONDS * clip.rate)
    clip = real_clip.Clip(clip.mixture[:, :n], {k: v[:, :n] for k, v in clip.stems.items()}, clip.rate)
    sep = real_clip.oracle_config(niter=1)
    with on_device(device):
        ours = oracle_tf(clip, sep)
    for name, expected in (("reference", real_clip.oracle_reference), ("upstream", real_clip.oracle_upstream)):
        what = f"tf oracle real clip vs {name}"
        check(ours, expected(clip, sep), "wiener.em_float64", "float32", device, what=what)


class _Replay:
    """Draws like upstream's ``random.randint(0, max_shift)`` after ``random.seed(seed)``."""

    def __init__(self, seed: int):
        self._random = random.Random(seed)

    def integers(self, low: int, high: int) -> int:
        return self._random.randint(low, high - 1)


@pytest.mark.upstream
@pytest.mark.parametrize("shifts", [0, 1])
def test_demucs_apply_model_split_vs_upstream(device, shifts):
    """``umx_tf.apply_model(split=True)`` on demucs_unittest against ``demucs.utils.apply_model``, float32 (the
    network XLA-compiled without shifts); with one shift, upstream's random draw replayed."""
    from demucs.utils import apply_model as upstream_apply

    from parity_tests import oracle
    from parity_tests.oracle import torch

    config = dataclasses.replace(demucs_preset("demucs_unittest"), segment_length=4000)
    weights = random_weights(config, seed=9)
    mix = random_audio(9000, 2, seed=10)
    kwargs = dict(split=True, overlap=0.25, transition_power=1.0)
    model = oracle.demucs_model(config, weights, torch.float32)
    random.seed(123)
    with torch.no_grad():
        upstream = upstream_apply(model, torch.from_numpy(mix.astype(np.float32)), shifts=shifts, **kwargs).numpy()
    with on_device(device):
        ours = apply_model(from_canonical(config, weights), mix, shifts=shifts, rng=_Replay(123), **kwargs).numpy()
    check(ours, upstream, "demucs.apply", "float32", device, what=f"tf apply_model shifts={shifts} vs upstream")
    if not shifts:
        reference = ref_apply.apply_model(weights, config, mix, **kwargs)
        check(ours, reference, "demucs.apply", "float32", device, what="tf apply_model vs reference")


def test_short_signal_and_bad_audio():
    with pytest.raises(ShortSignalError, match="needs at least 2049 samples"):
        stft(tf.zeros((1, 2, 2048)), 4096, 1024)
    separator = Separator.from_config(umx_preset("umxse"))
    with pytest.raises(AudioError, match="sample rate"):
        separator.separate(np.zeros((2, 8000)), sample_rate=44100)
    with pytest.raises(AudioError, match="NaN"):
        separator.separate(np.full((2, 8000), np.nan))


def test_backend_is_selected_and_checked():
    """``import umx_tf`` selects Keras's TensorFlow backend without KERAS_BACKEND, and refuses a Keras that was
    imported with another backend."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = str(ROOT)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    code = "import os, umx_tf, keras; print(keras.backend.backend(), os.environ['KERAS_BACKEND'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["tensorflow", "tensorflow"]
    code = "import keras\nimport umx_tf"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "KERAS_BACKEND": "numpy"}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert "umx_tf needs Keras on the TensorFlow backend, but Keras runs on 'numpy'" in out.stderr
