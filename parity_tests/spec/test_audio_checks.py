"""``core_spec.audio.prepare_audio``: the input checks every port's separator runs first."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.audio import AudioError, prepare_audio


def test_layouts():
    x = np.arange(12.0)
    assert prepare_audio(x, 8, 8).shape == (1, 2, 12)  # mono duplicated to stereo
    assert prepare_audio(np.stack([x, -x]), 8, 8).shape == (1, 2, 12)
    time_major = prepare_audio(np.stack([x, -x], axis=1), 8, 8)  # (time, channels) as soundfile returns
    np.testing.assert_array_equal(time_major[0, 1], -x)
    assert prepare_audio(np.zeros((3, 2, 12)), 8, 8).shape == (3, 2, 12)
    mono = prepare_audio(x[None], 8, 8)
    np.testing.assert_array_equal(mono[0, 0], mono[0, 1])


def test_mono_model_keeps_one_channel():
    assert prepare_audio(np.zeros(10), 16000, 16000, nb_channels=1).shape == (1, 1, 10)


def test_too_many_channels():
    with pytest.raises(AudioError, match="3 channels"):
        prepare_audio(np.zeros((3, 100)), 44100, 44100)
    with pytest.raises(AudioError, match="6 channels"):
        prepare_audio(np.zeros((100, 6)), 44100, 44100)


def test_sample_rate_mismatch_names_both_rates():
    with pytest.raises(AudioError, match=r"48000 Hz but the model runs at 44100 Hz"):
        prepare_audio(np.zeros((2, 100)), 48000, 44100)


def test_resampling_on_request():
    x = np.sin(np.linspace(0, 20, 4800))
    y = prepare_audio(np.stack([x, x]), 48000, 44100, resample=True)
    assert y.shape == (1, 2, 4410)


def test_nan_and_inf_are_located():
    x = np.zeros((2, 44100))
    x[1, 22050] = np.nan
    x[0, 30000] = np.inf
    with pytest.raises(
        AudioError, match=r"2 NaN or Inf samples; the first at \(sample, channel, time\) = \(0, 0, 30000\)"
    ):
        prepare_audio(x, 44100, 44100)


@pytest.mark.parametrize("shape", [(0,), (2, 0), (1, 2, 0)])
def test_empty_is_an_error(shape):
    with pytest.raises(AudioError, match="empty"):
        prepare_audio(np.zeros(shape), 44100, 44100)


def test_too_many_dimensions():
    with pytest.raises(AudioError, match="4 dimensions"):
        prepare_audio(np.zeros((1, 1, 2, 10)), 44100, 44100)


def test_complex_is_refused():
    with pytest.raises(AudioError, match="real-valued"):
        prepare_audio(np.zeros(10, dtype=complex), 44100, 44100)


def test_dtype():
    assert prepare_audio(np.zeros((2, 10), dtype=np.int16), 8, 8, dtype=np.float32).dtype == np.float32
