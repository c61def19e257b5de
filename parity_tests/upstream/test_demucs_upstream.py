"""core_spec's Demucs inventory, shape rules and reference against live demucs 2.0.3 (main environment, torch).

The big presets are built on torch's meta device (names and shapes only, no memory). The live parity checks use
small models and run upstream in float64 under ``torch.set_default_dtype(torch.float64)``, because upstream's
``apply_model`` accumulates its overlap-add in tensors of the default dtype (see ``core_spec.reference.apply``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_spec.configs import DEMUCS_PRESETS, DemucsConfig
from core_spec.params import parameter_inventory
from core_spec.reference.apply import TensorChunk as SpecChunk
from core_spec.reference.apply import apply_model, separate_track
from core_spec.reference.demucs import demucs
from core_spec.seeded import random_audio, random_weights
from core_spec.shapes import center_trim, chunk_window, output_length, valid_length
from core_spec.tolerances import check
from parity_tests.oracle import demucs_model, torch

pytestmark = pytest.mark.upstream

VARIANTS = {
    **DEMUCS_PRESETS,
    "c6d4": DemucsConfig(channels=6, depth=4),
    "c6d3_glu_off": DemucsConfig(channels=6, depth=3, glu=False),
    "c6d3_rewrite_off_no_lstm": DemucsConfig(channels=6, depth=3, rewrite=False, lstm_layers=0),
    "c5d5_mono_3src_k5s2_ctx1": DemucsConfig(
        sources=("a", "b", "c"), audio_channels=1, channels=5, depth=5, kernel_size=5, stride=2, context=1
    ),
    "c6d4_growth1.5_lstm1": DemucsConfig(channels=6, depth=4, growth=1.5, lstm_layers=1),
}


@cache
def _meta_model(name: str):
    with torch.device("meta"):
        return demucs_model(VARIANTS[name], None, torch.float32)


@cache
def _julius_kernels() -> dict[str, np.ndarray]:
    from julius.resample import ResampleFrac

    return {
        "up": ResampleFrac(1, 2).kernel.reshape(2, -1).double().numpy(),
        "down": ResampleFrac(2, 1).kernel.reshape(1, -1).double().numpy(),
    }


@contextlib.contextmanager
def _default_float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# --- inventory ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_inventory_matches_state_dict(name: str) -> None:
    state = _meta_model(name).state_dict()
    upstream = [(k, tuple(v.shape)) for k, v in state.items()]
    assert parameter_inventory(VARIANTS[name]) == upstream  # same names, shapes and order


# --- shape rules ----------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 20_000_000), name=st.sampled_from(sorted(VARIANTS)))
def test_valid_length_matches_upstream(length: int, name: str) -> None:
    assert valid_length(length, VARIANTS[name]) == _meta_model(name).valid_length(length)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(0, 300), data=st.data())
def test_center_trim_matches_upstream(length: int, data: st.DataObject) -> None:
    from demucs.utils import center_trim as upstream_center_trim

    reference = data.draw(st.integers(0, length + 3))
    x = np.arange(2 * length, dtype=np.float64).reshape(2, length)
    try:
        expected = upstream_center_trim(torch.from_numpy(x), reference).numpy()
    except ValueError:
        with pytest.raises(ValueError):
            center_trim(x, reference)
        return
    np.testing.assert_array_equal(center_trim(x, reference), expected)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 400), data=st.data())
def test_chunk_padding_matches_upstream(total: int, data: st.DataObject) -> None:
    from demucs.utils import TensorChunk

    offset = data.draw(st.integers(0, total - 1))
    length = data.draw(st.one_of(st.none(), st.integers(1, 500)))
    target = data.draw(st.integers(0, 1200))
    track = np.arange(1, 2 * total + 1, dtype=np.float64).reshape(2, total)
    upstream = TensorChunk(torch.from_numpy(track), offset, length)
    spec = SpecChunk(track, offset, length)
    assert spec.length == upstream.length
    if target < upstream.length:
        with pytest.raises(AssertionError):
            upstream.padded(target)
        with pytest.raises(ValueError):
            chunk_window(total, offset, upstream.length, target)
        return
    np.testing.assert_array_equal(spec.padded(target), upstream.padded(target).numpy())


@pytest.mark.parametrize("name", ["c6d4", "c6d3_glu_off", "c6d3_rewrite_off_no_lstm", "c5d5_mono_3src_k5s2_ctx1"])
def test_output_length_matches_upstream_forward(name: str) -> None:
    config = VARIANTS[name]
    model = demucs_model(config, random_weights(config, 0), torch.float32)
    for length in (valid_length(1, config), valid_length(777, config), 3001):
        with torch.no_grad():
            out = model(torch.zeros(1, config.audio_channels, length))
        assert out.shape[-1] == output_length(length, config)


# --- live parity ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["c6d3_glu_off", "c6d3_rewrite_off_no_lstm", "c5d5_mono_3src_k5s2_ctx1"])
def test_forward_variants_match_upstream(name: str) -> None:
    config = VARIANTS[name]
    weights = random_weights(config, 3)
    mix = random_audio(valid_length(1500, config), config.audio_channels, seed=4, nb_samples=2)
    with torch.no_grad():
        expected = demucs_model(config, weights, torch.float64)(torch.from_numpy(mix)).numpy()
    out = demucs(weights, config, mix, resample_kernels=_julius_kernels())
    check(out, expected, "demucs.output", "float64", what=f"demucs {name} (live)")


UNITTEST_SPLIT = dataclasses.replace(DEMUCS_PRESETS["demucs_unittest"], segment_length=2500)


@pytest.fixture(scope="module")
def unittest_model():
    weights = random_weights(UNITTEST_SPLIT, 9)
    return weights, demucs_model(UNITTEST_SPLIT, weights, torch.float64)


def test_apply_model_split_matches_upstream(unittest_model) -> None:
    from demucs.utils import apply_model as upstream_apply_model

    weights, model = unittest_model
    mix = random_audio(6100, seed=10)  # 3 segments of 2500, stride 1875, the last one short
    with torch.no_grad(), _default_float64():
        expected = upstream_apply_model(model, torch.from_numpy(mix), shifts=0, split=True).numpy()
    out = apply_model(weights, UNITTEST_SPLIT, mix, split=True, resample_kernels=_julius_kernels())
    check(out, expected, "demucs.apply", "float64", what="apply_model split (live)")


class _ReplayedRandom:
    """Replays upstream's ``random.randint(0, max_shift)`` draws through the ``rng.integers`` interface."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def integers(self, low: int, high: int) -> int:
        return self._random.randint(low, high - 1)


def test_apply_model_shifts_match_upstream_with_replayed_draws(unittest_model) -> None:
    from demucs.utils import apply_model as upstream_apply_model

    weights, model = unittest_model
    mix = random_audio(2000, seed=11)
    state = random.getstate()
    try:
        random.seed(1234)
        with torch.no_grad(), _default_float64():
            expected = upstream_apply_model(model, torch.from_numpy(mix), shifts=2, split=False).numpy()
    finally:
        random.setstate(state)
    out = apply_model(
        weights, UNITTEST_SPLIT, mix, shifts=2, rng=_ReplayedRandom(1234), resample_kernels=_julius_kernels()
    )
    check(out, expected, "demucs.apply", "float64", what="apply_model shifts=2 (live, replayed draws)")


def test_separate_track_matches_upstream_separate_py(unittest_model) -> None:
    from demucs.utils import apply_model as upstream_apply_model

    weights, model = unittest_model
    wav = random_audio(3000, seed=12) + 0.02
    # demucs 2.0.3 separate.py, the lines between load_track and writing the stems
    x = torch.from_numpy(wav)
    ref = x.mean(0)
    with torch.no_grad(), _default_float64():
        sources = upstream_apply_model(model, (x - ref.mean()) / ref.std(), shifts=0, split=True, overlap=0.25)
    expected = (sources * ref.std() + ref.mean()).numpy()
    for guard in (False, True):
        out = separate_track(weights, UNITTEST_SPLIT, wav, silence_guard=guard, resample_kernels=_julius_kernels())
        check(out, expected, "demucs.apply", "float64", what=f"separate_track guard={guard} (live)")
    silence = torch.zeros(2, 100, dtype=torch.float64)
    with torch.no_grad():
        upstream_silence = upstream_apply_model(model, silence / silence.mean(0).std(), split=True)
    assert torch.isnan(upstream_silence).all(), "upstream: digital silence gives NaN"
    assert np.isnan(separate_track(weights, UNITTEST_SPLIT, np.zeros((2, 100)), silence_guard=False)).all()


def test_upstream_split_accumulates_in_default_dtype(unittest_model) -> None:
    """The quirk documented in core_spec.reference.apply: float64 model, float32 overlap-add."""
    from demucs.utils import apply_model as upstream_apply_model

    _, model = unittest_model
    mix = torch.from_numpy(random_audio(3000, seed=13))
    with torch.no_grad():
        assert upstream_apply_model(model, mix, split=True).dtype == torch.float32
        assert upstream_apply_model(model, mix, split=False).dtype == torch.float64
        with _default_float64():
            assert upstream_apply_model(model, mix, split=True).dtype == torch.float64
