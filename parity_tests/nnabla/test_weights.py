"""Canonical weights <-> NNabla parameters and the native ``.h5`` file: bit-exact round trips, the layouts,
overwrite protection, the writer the main environment's ``unmix-convert --to nnabla`` runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from core_spec.canonical import join_targets, save_canonical
from core_spec.configs import DEMUCS_PRESETS, DemucsConfig, UMXConfig, umx_preset
from core_spec.params import WeightsMismatchError, parameter_inventory
from core_spec.seeded import random_weights
from parity_tests.fixtures_umx import separator_weights
from umx_nnabla import build
from umx_nnabla import weights as nw

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = {
    "umxse": umx_preset("umxse").model,
    "umx_unidirectional_2layers": UMXConfig(
        nb_bins=65, nb_channels=2, hidden_size=16, nb_layers=2, unidirectional=True, max_bin=40
    ),
    "demucs_unittest": DEMUCS_PRESETS["demucs_unittest"],
    "demucs_norewrite_reluonly": DemucsConfig(channels=4, depth=3, rewrite=False, glu=False, lstm_layers=1),
}


def _bit_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32, k
        assert a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_h5_round_trip_bit_exact(tmp_path: Path, name: str) -> None:
    config = CONFIGS[name]
    weights = random_weights(config, seed=5)
    written = nw.save_native(tmp_path / "model", weights, config)
    assert [p.name for p in written] == ["model.h5", "model.json"]
    loaded, loaded_config = nw.load_native(tmp_path / "model")
    assert loaded_config == config
    _bit_equal(loaded, weights)
    # the .h5 holds exactly the NNabla parameters, bit for bit
    params = nw.parameters_from_canonical(weights, config)
    with h5py.File(written[0], "r") as f:
        stored = {}
        f.visititems(lambda k, v: stored.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset) else None)
    _bit_equal(stored, dict(params))
    # and a model built from it gives the canonical weights back
    model = build.load_module(tmp_path / "model.h5")
    _bit_equal(nw.to_canonical(model), weights)


def test_separator_round_trip_and_names(tmp_path: Path) -> None:
    config = umx_preset("umxse")
    per_target = separator_weights(config)
    flat = join_targets(per_target)
    nw.save_native(tmp_path / "sep.h5", flat, config)
    loaded, loaded_config = nw.load_native(tmp_path / "sep.json")
    assert loaded_config == config
    _bit_equal(loaded, flat)
    separator = build.from_canonical(config, per_target)  # {target: weights} works as well
    names = separator.get_parameters()
    assert "speech/fc1/affine/W" in names and "noise/lstm/lstm/weight_l0" in names
    _bit_equal(nw.to_canonical(separator), flat)


def test_layouts_follow_nnabla() -> None:
    config = umx_preset("umxhq").model
    w = random_weights(config, seed=1)
    p = nw.parameters_from_canonical(w, config)
    H, crop = config.hidden_size, config.crop_bins
    h = config.lstm_hidden_size
    assert p["fc1/affine/W"].shape == (2 * crop, H)
    np.testing.assert_array_equal(p["fc1/affine/W"], w["fc1.weight"].T)
    assert p["bn3/bn/var"].shape == (1, 1, 2 * config.nb_bins)
    assert p["lstm/lstm/weight_l0"].shape == (2, 4, h, H + h)
    assert p["lstm/lstm/weight"].shape == (2, 2, 4, h, 2 * h + h)
    assert p["lstm/lstm/bias"].shape == (3, 2, 4, h)
    # gate g (index 2) of the reverse direction of layer 1: rows 2h..3h of weight_ih_l1_reverse
    np.testing.assert_array_equal(
        p["lstm/lstm/weight"][0, 1, 2, :, : 2 * h], w["lstm.weight_ih_l1_reverse"][2 * h : 3 * h]
    )
    np.testing.assert_array_equal(
        p["lstm/lstm/bias"][0, 0], (w["lstm.bias_ih_l0"] + w["lstm.bias_hh_l0"]).reshape(4, h)
    )
    d = DEMUCS_PRESETS["demucs_unittest"]
    p = nw.parameters_from_canonical(random_weights(d), d)
    assert p["decoder/0/2/deconv/W"].shape == (d.channels * 32, d.channels * 16, 8)  # (in, out, k) as upstream
    assert p["lstm/linear/affine/W"].shape == (2 * d.channels * 32, d.channels * 32)


def test_folded_bias_only(tmp_path: Path) -> None:
    """A file whose LSTM lacks upstream's bias pair (e.g. trained in NNabla) comes back as bias_ih = the folded
    bias, bias_hh = 0: the same network."""
    config = CONFIGS["umx_unidirectional_2layers"]
    w = random_weights(config, seed=2)
    params = nw.parameters_from_canonical(w, config)
    del params["lstm/lstm/bias_ih"], params["lstm/lstm/bias_hh"]
    back = nw.canonical_from_parameters(params, config)
    np.testing.assert_array_equal(back["lstm.bias_ih_l1"], w["lstm.bias_ih_l1"] + w["lstm.bias_hh_l1"])
    assert not back["lstm.bias_hh_l1"].any()
    params = nw.parameters_from_canonical(w, config)
    params["lstm/lstm/bias"] = params["lstm/lstm/bias"] + 1  # stale pair: ignored
    back = nw.canonical_from_parameters(params, config)
    np.testing.assert_array_equal(back["lstm.bias_ih_l0"], (w["lstm.bias_ih_l0"] + w["lstm.bias_hh_l0"]) + 1)


def test_overwrite_refused_atomic_and_checked(tmp_path: Path) -> None:
    config = CONFIGS["umx_unidirectional_2layers"]
    w = random_weights(config)
    nw.save_native(tmp_path / "m", w, config)
    before = (tmp_path / "m.h5").read_bytes()
    with pytest.raises(FileExistsError, match="force"):
        nw.save_native(tmp_path / "m", random_weights(config, seed=9), config)
    assert (tmp_path / "m.h5").read_bytes() == before
    nw.save_native(tmp_path / "m", random_weights(config, seed=9), config, force=True)
    assert (tmp_path / "m.h5").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.json"]  # no temporary files left
    bad = dict(w)
    bad["fc1.weight"] = bad["fc1.weight"][:, :-1]
    del bad["bn1.bias"]
    with pytest.raises(WeightsMismatchError) as e:
        nw.save_native(tmp_path / "bad", bad, config)
    assert "bn1.bias" in str(e.value) and "fc1.weight" in str(e.value)
    assert not (tmp_path / "bad.h5").exists()
    header = json.loads((tmp_path / "m.json").read_text())
    assert header["format"] == nw.FORMAT
    with pytest.raises(FileNotFoundError):
        nw.load_native(tmp_path / "missing")


def test_cli_from_canonical(tmp_path: Path) -> None:
    """``python -m unmix.convert_targets nnabla IN OUT``: the writer ``unmix-convert --to nnabla`` runs in this
    environment (the port's ``save_native``), refusing to overwrite; and the in-process call of the same writer."""
    config = umx_preset("umxse")
    flat = join_targets(separator_weights(config))
    save_canonical(tmp_path / "canon", flat, config)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "unmix.convert_targets", "nnabla", str(tmp_path / "canon.safetensors")]
    result = subprocess.run([*cmd, str(tmp_path / "nn")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [str(tmp_path / "nn.h5"), str(tmp_path / "nn.json")]
    _bit_equal(nw.load_native(tmp_path / "nn")[0], flat)
    again = subprocess.run([*cmd, str(tmp_path / "nn")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert again.returncode == 1 and "exists" in again.stderr
    from unmix.convert_targets import save_native as convert_save_native

    written = convert_save_native("nnabla", tmp_path / "via-convert", flat, config)
    assert [p.suffix for p in written] == [".h5", ".json"]
    _bit_equal(nw.load_native(written[0])[0], flat)


def test_inventory_covered() -> None:
    """Every inventory entry maps to a parameter and back (no name left behind by the rules)."""
    for config in CONFIGS.values():
        names = [n for n, _ in parameter_inventory(config)]
        back = nw.canonical_from_parameters(nw.parameters_from_canonical(random_weights(config), config), config)
        assert list(back) == names


def test_reloading_weights_rebuilds_graphs() -> None:
    """``infer`` keeps a graph per shape; loading other weights must not reuse graphs holding the old arrays."""
    config = CONFIGS["umx_unidirectional_2layers"]
    x = np.abs(np.random.default_rng(0).standard_normal((1, 2, 65, 5))).astype(np.float32)
    model = build.from_canonical(config, random_weights(config, seed=1))
    first = model.infer(x)
    assert len(model.graphs) == 1
    nw.load_weights(model, random_weights(config, seed=2))
    assert len(model.graphs) == 0
    np.testing.assert_array_equal(model.infer(x), build.from_canonical(config, random_weights(config, seed=2)).infer(x))
    assert not np.array_equal(first, model.infer(x))
