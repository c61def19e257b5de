"""The NumPy Demucs reference against the demucs 2.0.3 fixtures, stage by stage; shape rules; edge cases.

Torch-free: runs in both environments. Upstream's resampling kernels are computed by julius in float32 even in a
float64 run; the fixtures store them, and the stage checks inject them (``resample_kernels=``) so that every other
step is proven to float64 rounding. The spec's own float64 kernels are checked separately (stages
``resample.kernels`` and ``demucs.own_kernels``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_spec.configs import DEMUCS_PRESETS, DemucsConfig, config_from_json
from core_spec.reference.apply import TensorChunk, apply_model, separate_track
from core_spec.reference.demucs import demucs, demucs_trace_keys
from core_spec.reference.resample import resample_frac, resample_kernels
from core_spec.seeded import random_weights
from core_spec.shapes import center_trim, chunk_window, output_length, valid_length
from core_spec.tolerances import check
from parity_tests import fixtures_demucs as fx
from parity_tests.fixtures import load, weights_sha256

C6D4 = DemucsConfig(channels=6, depth=4)


def _case(prefix: str, name: str) -> tuple[dict[str, np.ndarray], dict, DemucsConfig, dict[str, np.ndarray]]:
    arrays, meta = load(f"demucs_{prefix}_{name}")
    config = config_from_json(meta["config"])
    return arrays, meta, config, random_weights(config, meta["weights_seed"])


# --- the fixtures are what the cases say ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "name"), [("forward", n) for n in fx.FORWARD_CASES] + [("apply", n) for n in fx.APPLY_CASES]
)
def test_fixture_matches_its_case(prefix: str, name: str) -> None:
    arrays, meta, config, weights = _case(prefix, name)
    case = (fx.FORWARD_CASES if prefix == "forward" else fx.APPLY_CASES)[name]
    assert config == case.config
    assert weights_sha256(weights) == meta["weights_sha256"], "random_weights changed since the fixtures were made"
    mix = fx.forward_mix(case) if prefix == "forward" else fx.apply_mix(case)
    np.testing.assert_array_equal(arrays["mix"], mix)


# --- resampler ------------------------------------------------------------------------------------------------


def test_resample_kernels_against_julius() -> None:
    arrays, _ = load("demucs_resample")
    for direction, (old, new) in {"up": (1, 2), "down": (2, 1)}.items():
        check(resample_kernels(old, new), arrays[f"kernels.{direction}"], "resample.kernels", "float64", what=direction)


@pytest.mark.parametrize("dtype", fx.DTYPES)
def test_resample_against_julius(dtype: str) -> None:
    arrays, _ = load("demucs_resample")
    audio = arrays["audio"]
    for direction, (old, new) in {"up": (1, 2), "down": (2, 1)}.items():
        expected = arrays[f"{direction}.{dtype}"]
        out = resample_frac(audio, old, new, kernels=arrays[f"kernels.{direction}"])
        assert out.shape == expected.shape
        check(out, expected, "resample", dtype, what=f"resample {direction} (julius kernels) vs {dtype}")
        if dtype == "float64":
            own = resample_frac(audio, old, new)
            check(own, expected, "resample.kernels", dtype, what=f"resample {direction} (spec kernels)")


# --- forward, every stage -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(fx.FORWARD_CASES))
@pytest.mark.parametrize("dtype", fx.DTYPES)
def test_forward_every_stage(name: str, dtype: str) -> None:
    arrays, meta, config, weights = _case("forward", name)
    trace: dict[str, np.ndarray] = {}
    out = demucs(weights, config, arrays["mix"], trace=trace, resample_kernels=fx.kernels_dict(arrays))
    assert tuple(trace) == demucs_trace_keys(config)
    assert sorted(trace) == meta["trace_keys"]
    for key, value in trace.items():
        check(value, arrays[f"trace.{key}.{dtype}"], "demucs.layer", dtype, what=f"demucs {name} {key} vs {dtype}")
    assert out.shape[-1] == output_length(arrays["mix"].shape[-1], config)
    check(out, arrays[f"output.{dtype}"], "demucs.output", dtype, what=f"demucs {name} output vs {dtype}")


@pytest.mark.parametrize("name", list(fx.FORWARD_CASES))
def test_forward_with_spec_kernels(name: str) -> None:
    arrays, _, config, weights = _case("forward", name)
    out = demucs(weights, config, arrays["mix"])
    check(out, arrays["output.float64"], "demucs.own_kernels", "float64", what=f"demucs {name} output (spec kernels)")


# --- apply_model with split -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(fx.APPLY_CASES))
def test_apply_model_split(name: str) -> None:
    arrays, meta, config, weights = _case("apply", name)
    assert arrays["mix"].shape[-1] > config.segment_length
    kwargs = dict(split=True, overlap=meta["overlap"], transition_power=meta["transition_power"])
    out = apply_model(weights, config, arrays["mix"], resample_kernels=fx.kernels_dict(arrays), **kwargs)
    check(out, arrays["output.float64"], "demucs.apply", "float64", what=f"apply {name} vs float64")
    # upstream float64 model, overlap-add in torch's default float32: only float32-accurate
    check(out, arrays["output.float64_default_float32"], "demucs.apply", "float32", what=f"apply {name} vs default")
    check(out, arrays["output.float32"], "demucs.apply", "float32", what=f"apply {name} vs float32")
    own = apply_model(weights, config, arrays["mix"], **kwargs)
    check(own, arrays["output.float64"], "demucs.own_kernels", "float64", what=f"apply {name} (spec kernels)")


# --- silence and short inputs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c6d4_weights() -> dict[str, np.ndarray]:
    return random_weights(C6D4, 0)


def test_separate_track_silence(c6d4_weights: dict[str, np.ndarray]) -> None:
    silence = np.zeros((2, 900))
    out = separate_track(c6d4_weights, C6D4, silence, segment_length=400)
    assert out.shape == (4, 2, 900)
    assert np.all(out == 0.0), "with the guard, digital silence gives silence"
    upstream_like = separate_track(c6d4_weights, C6D4, silence, segment_length=400, silence_guard=False)
    assert np.all(np.isnan(upstream_like)), "without the guard, 0 / 0 as in demucs 2.0.3 separate.py"
    dc = np.full((2, 300), 0.3)
    np.testing.assert_array_equal(separate_track(c6d4_weights, C6D4, dc), np.full((4, 2, 300), 0.3))
    one = separate_track(c6d4_weights, C6D4, np.array([[0.5], [0.1]]))
    np.testing.assert_array_equal(one, np.full((4, 2, 1), 0.3))  # one sample: mono is constant


def test_separate_track_denormalises(c6d4_weights: dict[str, np.ndarray]) -> None:
    wav = np.random.default_rng(3).standard_normal((2, 700)) * 0.2 + 0.05
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std(ddof=1)
    expected = apply_model(c6d4_weights, C6D4, (wav - mean) / std, split=True, segment_length=500) * std + mean
    out = separate_track(c6d4_weights, C6D4, wav, segment_length=500)
    check(out, expected, "demucs.apply", "float64", what="separate_track = normalise, apply_model, denormalise")


def test_forward_on_silence_is_finite(c6d4_weights: dict[str, np.ndarray]) -> None:
    out = demucs(c6d4_weights, C6D4, np.zeros((1, 2, valid_length(1, C6D4))))
    assert np.all(np.isfinite(out))
    normalised = DemucsConfig(channels=6, depth=4, normalize=True)
    out = demucs(random_weights(normalised, 0), normalised, np.zeros((1, 2, valid_length(1, normalised))))
    assert np.all(np.isfinite(out)), "normalize=True divides by 1e-5 + std: finite on silence"


def test_forward_rejects_too_short_input(c6d4_weights: dict[str, np.ndarray]) -> None:
    shortest = valid_length(1, C6D4)
    demucs(c6d4_weights, C6D4, np.zeros((1, 2, shortest)))
    with pytest.raises(ValueError, match="valid_length"):
        demucs(c6d4_weights, C6D4, np.zeros((1, 2, 10)))
    with pytest.raises(ValueError):
        output_length(10, C6D4)
    with pytest.raises(ValueError, match=r"audio_channels|nb_samples"):
        demucs(c6d4_weights, C6D4, np.zeros((2, shortest)))


@pytest.mark.parametrize("length", [1, 7, 300, 301, 401])
def test_apply_model_short_tracks(c6d4_weights: dict[str, np.ndarray], length: int) -> None:
    mix = np.random.default_rng(length).standard_normal((2, length))
    whole = apply_model(c6d4_weights, C6D4, mix)
    assert whole.shape == (4, 2, length) and np.all(np.isfinite(whole))
    split = apply_model(c6d4_weights, C6D4, mix, split=True, segment_length=400)
    if length <= 300:  # one offset (stride 300): the cross-fade weight cancels
        check(split, whole, "demucs.apply", "float64", what=f"split of a {length}-sample track")


def test_apply_model_shifts_are_seeded(c6d4_weights: dict[str, np.ndarray]) -> None:
    config = DemucsConfig(channels=6, depth=4, samplerate=200)  # max_shift 100 samples
    mix = np.random.default_rng(0).standard_normal((2, 300))
    a = apply_model(c6d4_weights, config, mix, shifts=2, rng=5)
    b = apply_model(c6d4_weights, config, mix, shifts=2, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, apply_model(c6d4_weights, config, mix, shifts=2, rng=6))


# --- shape rules ----------------------------------------------------------------------------------------------

SHAPE_CONFIGS = [
    C6D4,
    DemucsConfig(channels=6, depth=4, resample=False),
    DemucsConfig(channels=6, depth=3, glu=False),
    DemucsConfig(channels=6, depth=3, rewrite=False, lstm_layers=0),
    DemucsConfig(channels=6, depth=3, context=1, stride=2, kernel_size=5),
]


@pytest.mark.parametrize("config", SHAPE_CONFIGS, ids=lambda c: f"r{c.resample:d}g{c.glu:d}w{c.rewrite:d}k{c.context}")
def test_output_length_matches_forward(config: DemucsConfig) -> None:
    weights = random_weights(config, 1)
    for length in (1, 300, 1001):
        padded = valid_length(length, config)
        out = demucs(weights, config, np.random.default_rng(length).standard_normal((1, 2, padded)) * 0.1)
        assert out.shape == (1, 4, 2, output_length(padded, config))
        assert out.shape[-1] >= length


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 10_000_000), name=st.sampled_from(sorted(DEMUCS_PRESETS)))
def test_valid_length_properties(length: int, name: str) -> None:
    config = DEMUCS_PRESETS[name]
    valid = valid_length(length, config)
    assert valid >= length
    assert valid_length(length + 1, config) >= valid, "non-decreasing"
    assert output_length(valid, config) >= length, "the output can be centre-trimmed back to the input length"


def test_center_trim_edges() -> None:
    x = np.arange(10)
    np.testing.assert_array_equal(center_trim(x, 10), x)
    np.testing.assert_array_equal(center_trim(x, 7), [1, 2, 3, 4, 5, 6, 7])  # delta 3: 1 left, 2 right
    np.testing.assert_array_equal(center_trim(x, 0), [])
    np.testing.assert_array_equal(center_trim(np.ones((2, 3, 9)), 4).shape, (2, 3, 4))
    with pytest.raises(ValueError, match="shorter"):
        center_trim(x, 11)


def test_chunk_window_edges() -> None:
    w = chunk_window(100, 40, 20, 20)  # no padding needed
    assert (w.start, w.stop, w.pad_left, w.pad_right) == (40, 60, 0, 0)
    w = chunk_window(100, 40, 20, 31)  # odd delta: the extra sample on the right
    assert (w.start, w.stop, w.pad_left, w.pad_right) == (35, 66, 0, 0)
    w = chunk_window(100, 2, 20, 30)  # real samples on the right, zeros beyond the start
    assert (w.start, w.stop, w.pad_left, w.pad_right) == (0, 27, 3, 0)
    w = chunk_window(100, 90, 20, 20)  # the chunk is cut to the 10 samples left; zeros beyond the end
    assert (w.start, w.stop, w.pad_left, w.pad_right) == (85, 100, 0, 5)
    w = chunk_window(10, 0, 10, 30)  # longer than the whole track: zeros on both sides
    assert (w.start, w.stop, w.pad_left, w.pad_right) == (0, 10, 10, 10)
    with pytest.raises(ValueError):
        chunk_window(100, 0, 20, 19)
    track = np.arange(1, 11, dtype=float)[None]
    np.testing.assert_array_equal(TensorChunk(track, 8, 5).padded(6), [[7, 8, 9, 10, 0, 0]])
    with pytest.raises(ValueError):
        TensorChunk(track, 10)
