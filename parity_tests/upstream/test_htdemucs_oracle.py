"""core_spec's HTDemucs inventory against live demucs 4.1.0 (main environment, through parity_tests.oracle4).

One oracle subprocess builds ``demucs.htdemucs.HTDemucs`` at every config below (the presets at their released
sizes, on torch's meta device: names and shapes only, no memory) and a ``BagOfModels``, and sends back each
``state_dict()``'s names and shapes; every name is compared, none missing, none extra, each shape equal, in order.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

import pytest

from core_spec.configs import HTDEMUCS_PRESETS, BagConfig, HTDemucsConfig, constructor_kwargs, htdemucs_preset
from core_spec.params import nb_parameters, parameter_inventory
from parity_tests.oracle4 import run_oracle4

pytestmark = pytest.mark.upstream

_SMALL = HTDemucsConfig(channels=8, nfft=2048, bottom_channels=16, t_layers=2, t_heads=2, dconv_mode=3)

VARIANTS: dict[str, HTDemucsConfig] = {
    "htdemucs": htdemucs_preset("htdemucs"),
    "htdemucs_6s": htdemucs_preset("htdemucs_6s"),
    "defaults": HTDemucsConfig(),
    "small": _SMALL,
    # GroupNorms from layer 1, wider rewrites, decoder-only DConv, cross layer first, growth 3
    "norms_contexts": dataclasses.replace(
        _SMALL,
        depth=3,
        nfft=1024,
        norm_starts=1,
        norm_groups=2,
        context_enc=1,
        context=2,
        dconv_mode=2,
        dconv_depth=3,
        dconv_comp=2,
        t_layers=3,
        t_cross_first=True,
        growth=3,
    ),
    # everything optional off: no rewrite, no CaC, no freq embedding, no DConv, no LayerScale/norm_out/norm_in
    "plain": dataclasses.replace(
        _SMALL,
        sources=("a", "b", "c"),
        audio_channels=1,
        rewrite=False,
        cac=False,
        freq_emb=0.0,
        dconv_mode=0,
        t_layer_scale=False,
        t_norm_out=False,
        t_norm_in=False,
        t_emb="scaled",
        t_max_positions=100,
        t_hidden_scale=2.5,
        kernel_size=6,
    ),
    "group_norms_post_norm": dataclasses.replace(
        _SMALL, t_norm_first=False, t_group_norm=True, t_norm_in=False, t_norm_in_group=True, bottom_channels=0
    ),
    "no_transformer": dataclasses.replace(_SMALL, t_layers=0),
}

BAG = BagConfig(models=(VARIANTS["small"],) * 3, weights=((1, 0, 0, 1), (0, 1, 0, 0), (0, 0, 1, 0)))

_SNIPPET = """
from fractions import Fraction
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs

def build(kwargs):
    kwargs = dict(kwargs, segment=Fraction(*kwargs["segment"]))
    with torch.device("meta"):
        return HTDemucs(**kwargs)

def names_shapes(model):
    return [[name, list(t.shape)] for name, t in model.state_dict().items()]

for name, kwargs in ARGS["models"].items():
    RESULT[name] = names_shapes(build(kwargs))
bag = ARGS["bag"]
RESULT["bag"] = names_shapes(BagOfModels([build(k) for k in bag["models"]], weights=bag["weights"]))
"""


def _json_kwargs(config: HTDemucsConfig) -> dict[str, Any]:
    kwargs = constructor_kwargs(config)
    kwargs["segment"] = list(config.segment)
    return kwargs


@cache
def _oracle_run() -> tuple[dict[str, list[tuple[str, tuple[int, ...]]]] | None, str]:
    """One oracle run for the module, its failure cached too (not rerun by every test)."""
    args = {
        "models": {name: _json_kwargs(config) for name, config in VARIANTS.items()},
        "bag": {"models": [_json_kwargs(m) for m in BAG.models], "weights": [list(r) for r in BAG.source_weights()]},
    }
    try:
        result, _ = run_oracle4(_SNIPPET, args=args)
    except Exception as err:  # reported by every test that needs it
        return None, f"{type(err).__name__}: {err}"
    return {name: [(n, tuple(s)) for n, s in items] for name, items in result.items()}, ""


def upstream_state_dicts() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    state, error = _oracle_run()
    if state is None:
        pytest.fail(error, pytrace=False)
    return state


def _compare(expected: list[tuple[str, tuple[int, ...]]], actual: list[tuple[str, tuple[int, ...]]]) -> None:
    exp, act = dict(expected), dict(actual)
    assert len(exp) == len(expected) and len(act) == len(actual), "duplicate names"
    missing = sorted(set(act) - set(exp))  # upstream has them, the inventory does not
    extra = sorted(set(exp) - set(act))
    misshaped = sorted((n, exp[n], act[n]) for n in set(exp) & set(act) if exp[n] != act[n])
    assert not missing and not extra and not misshaped, (
        f"inventory lacks {missing}; has extra {extra}; shapes (inventory, upstream) differ: {misshaped}"
    )
    assert [n for n, _ in expected] == [n for n, _ in actual], "same names, another order than upstream's state_dict"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_inventory_is_upstream_state_dict(name: str) -> None:
    _compare(parameter_inventory(VARIANTS[name]), upstream_state_dicts()[name])


def test_released_counts_from_upstream() -> None:
    state = upstream_state_dicts()
    for name, count, tensors in (("htdemucs", 41_984_456, 533), ("htdemucs_6s", 27_414_996, None)):
        total = 0
        for _, shape in state[name]:
            n = 1
            for s in shape:
                n *= s
            total += n
        assert total == count == nb_parameters(HTDEMUCS_PRESETS[name])
        assert tensors is None or len(state[name]) == tensors


def test_bag_inventory_is_upstream_bag_of_models() -> None:
    _compare(parameter_inventory(BAG), upstream_state_dicts()["bag"])
