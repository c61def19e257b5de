"""HTDemucs (v4) configs, presets and parameter inventory, without torch (both environments).

The inventory's names and shapes are proven against live demucs 4.1.0 in
``parity_tests/upstream/test_htdemucs_oracle.py``; here: JSON round trips, the released parameter counts
(``../shared/reference/htdemucs-notes.md`` §1.4), the segment as an exact fraction, and the refusals.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

from core_spec.configs import (
    HTDEMUCS_PRESETS,
    BagConfig,
    HTDemucsConfig,
    config_from_arguments,
    config_from_json,
    config_to_json,
    constructor_kwargs,
    htdemucs_preset,
    segment_fraction,
)
from core_spec.params import WeightsMismatchError, check_weights, nb_parameters, parameter_inventory

HTDEMUCS = htdemucs_preset("htdemucs")
HTDEMUCS_6S = htdemucs_preset("htdemucs_6s")
HTDEMUCS_FT = htdemucs_preset("htdemucs_ft")


@pytest.mark.parametrize("name", sorted(HTDEMUCS_PRESETS))
def test_every_preset_round_trips_through_json(name: str) -> None:
    config = HTDEMUCS_PRESETS[name]
    text = config_to_json(config)
    back = config_from_json(text)
    assert back == config
    assert type(back) is type(config)
    assert config_to_json(back) == text


def test_released_parameter_counts() -> None:
    assert nb_parameters(HTDEMUCS) == 41_984_456
    assert nb_parameters(HTDEMUCS_6S) == 27_414_996
    assert nb_parameters(HTDEMUCS_FT) == 4 * 41_984_456
    assert len(parameter_inventory(HTDEMUCS)) == 533  # tensors in the released file (notes §1.4)


def test_released_kwargs() -> None:
    assert HTDEMUCS.sources == ("drums", "bass", "other", "vocals")
    assert HTDEMUCS_6S.sources == ("drums", "bass", "other", "vocals", "guitar", "piano")
    for config in (HTDEMUCS, HTDEMUCS_6S):
        assert (config.channels, config.depth, config.nfft, config.cac) == (48, 4, 4096, True)
        assert (config.dconv_mode, config.dconv_comp, config.t_layers, config.t_heads) == (3, 8, 5, 8)
        assert config.segment_fraction == Fraction(39, 5)
        assert config.segment_samples == 343_980
    assert (HTDEMUCS.bottom_channels, HTDEMUCS.transformer_channels) == (512, 512)
    assert (HTDEMUCS_6S.bottom_channels, HTDEMUCS_6S.transformer_channels) == (0, 384)
    inv = dict(parameter_inventory(HTDEMUCS_6S))
    assert inv["crosstransformer.layers.0.self_attn.in_proj_weight"] == (1152, 384)
    assert inv["crosstransformer.layers.1.linear1.weight"] == (1536, 384)
    assert inv["decoder.3.conv_tr.weight"] == (48, 6 * 2 * 2, 8, 1)
    assert not any(name.startswith("channel_") for name in inv)
    assert dict(parameter_inventory(HTDEMUCS))["decoder.0.rewrite.weight"] == (768, 384, 3, 3)


def test_the_ft_bag() -> None:
    assert HTDEMUCS_FT.models == (HTDEMUCS,) * 4
    assert HTDEMUCS_FT.weights == tuple(tuple(float(i == j) for j in range(4)) for i in range(4))
    assert HTDEMUCS_FT.segment is None
    inv = parameter_inventory(HTDEMUCS_FT)
    assert inv[: len(parameter_inventory(HTDEMUCS))] == [(f"models.0.{n}", s) for n, s in parameter_inventory(HTDEMUCS)]
    assert BagConfig(models=(HTDEMUCS,)).source_weights() == ((1.0,) * 4,)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(39, 5), (39, 5)),
        ((39, 5), (39, 5)),
        ([78, 10], (39, 5)),
        ("39/5", (39, 5)),
        ("7.8", (39, 5)),
        (7.8, (39, 5)),
        (10, (10, 1)),
    ],
)
def test_segment_is_an_exact_fraction(value: object, expected: tuple[int, int]) -> None:
    assert HTDemucsConfig(segment=value).segment == expected
    assert segment_fraction(value) == Fraction(*expected)


@pytest.mark.parametrize("value", [0, -1, (1, 0), True, None, 1.5j])
def test_bad_segments_are_refused(value: object) -> None:
    with pytest.raises((ValueError, TypeError, ZeroDivisionError)):
        HTDemucsConfig(segment=value)


def test_constructor_kwargs_are_upstream_types() -> None:
    kwargs = constructor_kwargs(HTDEMUCS)
    assert kwargs["segment"] == Fraction(39, 5) and isinstance(kwargs["segment"], Fraction)
    assert kwargs["sources"] == ["drums", "bass", "other", "vocals"]
    assert kwargs["t_cape_glob_loc_scale"] == [5000.0, 1.0, 1.4]
    assert "kind" not in kwargs
    assert config_from_arguments(HTDemucsConfig, kwargs) == HTDEMUCS
    # a checkpoint's kwargs: missing keys take upstream's constructor defaults, unknown keys are ignored
    partial = config_from_arguments(HTDemucsConfig, {"sources": ["a"], "segment": Fraction(39, 5), "unknown": 1})
    assert (partial.dconv_mode, partial.bottom_channels, partial.segment) == (1, 0, (39, 5))


def test_check_weights_names_what_is_wrong() -> None:
    class Shaped:
        def __init__(self, shape: tuple[int, ...]) -> None:
            self.shape = shape

    weights = {name: Shaped(shape) for name, shape in parameter_inventory(HTDEMUCS_6S)}
    assert list(check_weights(weights, HTDEMUCS_6S)) == [n for n, _ in parameter_inventory(HTDEMUCS_6S)]
    with pytest.raises(WeightsMismatchError) as err:
        check_weights(weights, HTDEMUCS)  # a 6s state for an htdemucs config
    assert any(name == "channel_upsampler.weight" for name, _ in err.value.missing)
    assert any(name == "decoder.3.conv_tr.weight" for name, _, _ in err.value.misshaped)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"multi_freqs": (0.3,)}, "multi_freqs"),
        ({"channels_time": 32}, "channels_time"),
        ({"depth": 5}, "depth"),
    ],
)
def test_unmodelled_configs_are_refused_by_name(change: dict, named: str) -> None:
    with pytest.raises(NotImplementedError, match=named):
        parameter_inventory(dataclasses.replace(HTDEMUCS, **change))


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="dconv_mode"):
        HTDemucsConfig(dconv_mode=4)
    with pytest.raises(ValueError, match="t_emb"):
        HTDemucsConfig(t_emb="rope")
    with pytest.raises(ValueError, match="sources"):
        BagConfig(models=(HTDEMUCS, HTDEMUCS_6S))
    with pytest.raises(ValueError, match="weights"):
        BagConfig(models=(HTDEMUCS,), weights=((1.0, 1.0),))
    with pytest.raises(KeyError, match="htdemucs_6s"):
        htdemucs_preset("htdemucs_7s")
