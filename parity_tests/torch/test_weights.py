"""umx_torch.weights: canonical files <-> torch modules, and the checks every load goes through."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_spec.canonical import join_targets, load_canonical, save_canonical
from core_spec.configs import demucs_preset, umx_preset
from core_spec.params import WeightsMismatchError
from core_spec.seeded import random_audio, random_weights
from parity_tests.fixtures_umx import separator_weights
from parity_tests.torch.helpers import oracle, torch
from umx_torch import (
    Demucs,
    OpenUnmix,
    Separator,
    from_canonical_file,
    load_canonical_into,
    load_module,
    load_native,
    load_weights,
    save_canonical_from,
    save_native,
    state_dict_from_canonical,
)
from umx_torch.weights import canonical_from_state_dict


def _same_arrays(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_open_unmix_round_trip(tmp_path):
    cfg = umx_preset("umxse").model
    weights = random_weights(cfg, seed=1)
    model = OpenUnmix.from_config(cfg)
    load_weights(model, weights)
    save_canonical_from(model, tmp_path / "speech", provenance={"note": "test"})
    arrays, config, provenance = load_canonical(tmp_path / "speech")
    assert config == cfg and provenance == {"note": "test"}
    _same_arrays(arrays, weights)
    again = from_canonical_file(tmp_path / "speech.safetensors", dtype=torch.float64)
    assert isinstance(again, OpenUnmix) and again.fc1.weight.dtype == torch.float64 and not again.training
    _same_arrays(canonical_from_state_dict(again.state_dict(), cfg), weights)
    with pytest.raises(FileExistsError):
        save_canonical_from(model, tmp_path / "speech")
    save_canonical_from(model, tmp_path / "speech", force=True)


def test_separator_round_trip_and_upstream_separator_state(tmp_path):
    cfg = umx_preset("umxse")
    weights = separator_weights(cfg)
    sep = Separator.from_config(cfg, weights, dtype=torch.float64)
    save_canonical_from(sep, tmp_path / "umxse")
    arrays, config, _ = load_canonical(tmp_path / "umxse")
    assert config == cfg
    assert sorted(arrays) == sorted(f"target_models.{t}.{k}" for t, w in weights.items() for k in w)
    other = from_canonical_file(tmp_path / "umxse", niter=0)
    assert isinstance(other, Separator) and other.niter == 0
    audio = random_audio(4000, 2, seed=3)
    np.testing.assert_array_equal(
        other.separate(audio).numpy(), Separator.from_config(cfg, weights, niter=0).separate(audio).numpy()
    )
    # upstream's whole-separator state dict: its sample_rate / stft.window / istft.window buffers are dropped
    upstream = oracle.umx_separator(cfg, weights, torch.float32)
    fresh = Separator.from_config(cfg)
    fresh.load_state_dict(upstream.state_dict())
    load_canonical_into(sep, tmp_path / "umxse")


def test_demucs_round_trip(tmp_path):
    cfg = demucs_preset("demucs_unittest")
    weights = random_weights(cfg, seed=2)
    path = tmp_path / "unittest"
    save_canonical(path, weights, cfg)
    model = Demucs.from_config(cfg)
    load_canonical_into(model, path)
    _same_arrays(canonical_from_state_dict(model.state_dict(), cfg), weights)
    save_canonical_from(model, tmp_path / "again")
    _same_arrays(load_canonical(tmp_path / "again")[0], weights)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("preset", ["umxse", "demucs_unittest"])
def test_from_canonical_builds_on_meta_and_copies(preset, dtype):
    """``from_canonical`` with weights (``umx_torch.build._materialize``: built on the ``meta`` device, no
    initialisation) gives the state dict of PyTorch's initialisation + ``load_weights``, key for key and bit for bit,
    in ``dtype``, with nothing left on ``meta``, in eval mode, trainable, and never aliasing the caller's arrays."""
    from umx_torch import from_canonical

    cfg = umx_preset(preset).model if preset == "umxse" else demucs_preset(preset)
    weights = random_weights(cfg, seed=3)
    model = from_canonical(cfg, weights, dtype=dtype)
    reference = (OpenUnmix if preset == "umxse" else Demucs).from_config(cfg, dtype=getattr(torch, dtype))
    load_weights(reference, weights)
    got, want = model.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and not got[name].is_meta, name
        assert torch.equal(got[name], want[name]), name
    assert not model.training and all(p.requires_grad for p in model.parameters())
    for array in weights.values():
        array[...] = 0  # the caller's arrays change; the model's tensors must not
    assert all(torch.equal(got[name], want[name]) for name in want)


def test_config_mismatch_is_a_clear_error(tmp_path):
    cfg = demucs_preset("demucs_unittest")
    save_canonical(tmp_path / "unittest", random_weights(cfg), cfg)
    other = Demucs.from_config(dataclasses.replace(cfg, segment_length=1000))
    with pytest.raises(ValueError, match="segment_length: file 1764000, model 1000"):
        load_canonical_into(other, tmp_path / "unittest")
    with pytest.raises(ValueError, match="holds a DemucsConfig"):
        load_canonical_into(OpenUnmix.from_config(umx_preset("umxse").model), tmp_path / "unittest")


def test_state_dict_from_canonical_checks_the_inventory():
    cfg = demucs_preset("demucs_unittest")
    weights = random_weights(cfg)
    state = state_dict_from_canonical(weights, cfg, dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in state.values())
    del weights["decoder.5.2.bias"]
    with pytest.raises(WeightsMismatchError, match=r"missing     decoder\.5\.2\.bias"):
        state_dict_from_canonical(weights, cfg)
    sep_cfg = umx_preset("umxse")
    with pytest.raises(KeyError, match=r"lacks the 'target_models\.<target>\.' prefix"):
        state_dict_from_canonical({"fc1.weight": np.zeros(1)}, sep_cfg)


@pytest.mark.parametrize("preset", ["umxse", "demucs_unittest"])
def test_native_file_round_trip_loads_into_upstream(tmp_path, preset):
    """``save_native`` writes a ``.pth`` that upstream's ``load_state_dict`` reads as it is; ``load_native`` gives
    back the canonical arrays bit for bit, ``load_module`` a ready model; no overwrite without ``force``."""
    if preset == "umxse":
        cfg = umx_preset(preset)
        weights = join_targets(separator_weights(cfg))
    else:
        cfg = demucs_preset(preset)
        weights = random_weights(cfg, seed=2)
    paths = save_native(tmp_path / f"{preset}.v1-torch", weights, cfg)
    assert paths == [tmp_path / f"{preset}.v1-torch.pth", tmp_path / f"{preset}.v1-torch.json"]
    loaded, config = load_native(paths[0])
    assert config == cfg
    _same_arrays(loaded, weights)
    with pytest.raises(FileExistsError, match="force"):
        save_native(tmp_path / f"{preset}.v1-torch", weights, cfg)
    save_native(tmp_path / f"{preset}.v1-torch", weights, cfg, force=True)

    state = torch.load(paths[0], weights_only=True)
    if preset == "umxse":
        for target in cfg.separator.targets:
            prefix = f"target_models.{target}."
            oracle.umx_model(cfg.model, {k[len(prefix) :]: v.numpy() for k, v in state.items() if k.startswith(prefix)})
        assert isinstance(load_module(paths[0], niter=0), Separator)
    else:
        oracle.demucs_model(cfg, {k: v.numpy() for k, v in state.items()})  # upstream loads it strictly
        assert isinstance(load_module(paths[1], dtype=torch.float64), Demucs)


def test_load_native_names_a_foreign_file(tmp_path):
    cfg = umx_preset("umxse").model
    save_native(tmp_path / "m", random_weights(cfg, seed=1), cfg)
    (tmp_path / "m.json").write_text('{"format": "something-else", "config": {}}')
    with pytest.raises(ValueError, match="format 'something-else'"):
        load_native(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_native(tmp_path / "missing")
