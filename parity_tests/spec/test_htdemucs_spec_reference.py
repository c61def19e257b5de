"""The HTDemucs spectrogram wrapper of the spec (core_spec.reference.htdemucs_spec) on its own, NumPy only.

``ispec(spec(x))`` is not the identity: ``spec`` drops the Nyquist bin and the two outer frames on either side,
which ``ispec`` re-adds as zeros. It is exact where no dropped coefficient carried anything: for a sum of cosines
at bin frequencies ``k <= nfft / 2 - 2`` (a Hann-windowed frame of such a signal has no Nyquist content), at the
samples that only frames lying wholly inside the signal cover (``[4 hop, L - 5 hop)``).
"""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.reference.htdemucs_spec import (
    NORM_EPS,
    denormalise_output,
    ispec,
    magnitude,
    mask_cac,
    normalise_input,
    pad1d,
    spec,
    spec_padding,
)
from core_spec.seeded import random_audio
from core_spec.tolerances import check, check_distinct


def bin_cosines(length: int, nfft: int, seed: int) -> np.ndarray:
    """``(2, 2, length)`` sums of cosines at bins ``1 .. nfft/2 - 2`` with random amplitudes and phases."""
    rng = np.random.default_rng(seed)
    bins = rng.choice(np.arange(1, nfft // 2 - 1), size=(2, 2, 6))
    amps = rng.uniform(0.1, 1.0, size=(2, 2, 6, 1))
    phases = rng.uniform(0, 2 * np.pi, size=(2, 2, 6, 1))
    turns = (bins[..., None] * np.arange(length)) % nfft  # exact integers: every frame sees the same samples
    return np.sum(amps * np.cos(2 * np.pi * turns / nfft + phases), axis=2)


@pytest.mark.parametrize("nfft,length", [(4096, 343_980), (4096, 40_000), (512, 5_000), (512, 4_097)])
def test_round_trip_interior_of_band_limited_signal(nfft, length):
    hop = nfft // 4
    x = bin_cosines(length, nfft, seed=length)
    z = spec(x, nfft, hop)
    assert z.shape == (2, 2, nfft // 2, -(-length // hop))
    y = ispec(z, length, nfft, hop)
    assert y.shape == x.shape
    inner = slice(4 * hop, length - 5 * hop)
    check(y[..., inner], x[..., inner], "round_trip", "float64", what=f"ispec(spec(x)) interior nfft={nfft} L={length}")


def test_round_trip_loses_the_dropped_bin_and_frames():
    # white noise has Nyquist content, and the edges lose the dropped frames: the same row tells it apart
    x = random_audio(20_000, 2, seed=3)
    check_distinct(ispec(spec(x, 512, 128), 20_000, 512, 128), x, "round_trip", "float64", what="noise round trip")


def test_spec_padding_at_the_training_segment():
    # 7.8 s at 44.1 kHz: 336 frames, 1620 samples padded on the right (347 136 in all, 340 STFT frames)
    assert spec_padding(343_980, 1024) == (336, 1536, 1620)
    assert 343_980 + 1536 + 1620 == 347_136


def test_pad1d_reflects_and_zero_pads_short_signals():
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(pad1d(x, 2, 1), [3, 2, 1, 2, 3, 2])
    # L <= max pad: 2 zeros on the right first, then reflect (2, 2) over [1, 2, 3, 0, 0]
    np.testing.assert_array_equal(pad1d(x, 2, 4), [3, 2, 1, 2, 3, 0, 0, 0, 3])
    # the left pad longest: the right takes what it can (1), the rest (3) goes left
    np.testing.assert_array_equal(pad1d(x, 6, 1), [1, 0, 0, 0, 0, 0, 1, 2, 3, 0])


def test_pad1d_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        pad1d(np.array([1.0, np.nan, 2.0]), 1, 1)


@pytest.mark.parametrize("length", [1, 100, 1000])
def test_short_signals_frame_like_long_ones(length):
    x = random_audio(length, 2, seed=length)
    z = spec(x, 4096, 1024)
    assert z.shape == (2, 2048, -(-length // 1024))
    assert ispec(z, length, 4096, 1024).shape == (2, length)


def test_spec_requires_the_quarter_hop():
    with pytest.raises(ValueError, match="hop"):
        spec(np.zeros((1, 8192)), 4096, 512)


def test_complex_as_channels_order_and_inverse():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 5, 4)) + 1j * rng.standard_normal((2, 3, 5, 4))
    m = magnitude(z)
    assert m.shape == (2, 6, 5, 4) and m.dtype == np.float64
    np.testing.assert_array_equal(m[:, 0::2], z.real)
    np.testing.assert_array_equal(m[:, 1::2], z.imag)
    np.testing.assert_array_equal(mask_cac(np.stack([m, 2 * m], axis=1)), np.stack([z, 2 * z], axis=1))
    np.testing.assert_array_equal(magnitude(z, cac=False), np.abs(z))


def test_normalise_input_uses_the_unbiased_std():
    x = np.array([[[1.0, 3.0]], [[0.0, 4.0]]])  # (2, 1, 2)
    y, mean, std = normalise_input(x)
    np.testing.assert_array_equal(mean.ravel(), [2.0, 2.0])
    np.testing.assert_array_equal(std.ravel(), [np.sqrt(2.0), np.sqrt(8.0)])
    assert mean.shape == std.shape == (2, 1, 1)
    np.testing.assert_array_equal(y, (x - mean) / (NORM_EPS + std))
    out = denormalise_output(np.stack([y, y], axis=1), mean, std)  # (2, S=2, 1, 2)
    np.testing.assert_array_equal(out, np.stack([y * std + mean] * 2, axis=1))
