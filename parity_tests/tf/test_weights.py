"""umx_tf.weights: canonical weights <-> Keras variables, and the native ``.weights.h5`` file; umx_tf.build: models from
configs and files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_spec.canonical import join_targets, save_canonical
from core_spec.configs import DemucsConfig, demucs_preset, umx_preset
from core_spec.params import WeightsMismatchError
from core_spec.reference.layers import BATCH_NORM_EPS, BATCH_NORM_MOMENTUM
from core_spec.seeded import random_weights
from parity_tests.fixtures_umx import separator_weights
from parity_tests.tf.helpers import keras
from umx_tf import Demucs, OpenUnmix, Separator
from umx_tf import build as B
from umx_tf import weights as W


def _is_lstm_bias(name: str) -> bool:
    return "bias_ih_" in name or "bias_hh_" in name


def _folded(weights: dict, name: str) -> np.ndarray:
    partner = name.replace("bias_ih_", "bias_hh_")
    return (weights[name].astype(np.float64) + weights[partner].astype(np.float64)).astype(np.float32)


def _assert_round_trip(original: dict, back: dict) -> None:
    """Bit-exact, except that Keras holds one LSTM bias: ``bias_ih`` comes back as the (float32-rounded) sum of
    the two, ``bias_hh`` as zeros."""
    assert list(back) == list(original)
    for name, value in original.items():
        assert back[name].dtype == np.float32, name
        if "bias_ih_" in name:
            np.testing.assert_array_equal(back[name], _folded(original, name), err_msg=name)
        elif "bias_hh_" in name:
            np.testing.assert_array_equal(back[name], np.zeros_like(value), err_msg=name)
        else:
            np.testing.assert_array_equal(back[name], value, err_msg=name)


def _keras_values(model) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.weights]


CONFIGS = {
    "umxhq": umx_preset("umxhq").model,
    "umxse_unidirectional": dataclasses.replace(umx_preset("umxse").model, unidirectional=True, hidden_size=64),
    "demucs_unittest": demucs_preset("demucs_unittest"),
    "demucs_c4d3_relu_norewrite": DemucsConfig(channels=4, depth=3, glu=False, rewrite=False, lstm_layers=1),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_canonical_keras_canonical(name):
    config = CONFIGS[name]
    weights = random_weights(config, seed=5)
    model = B.from_canonical(config, weights)
    assert isinstance(model, Demucs if isinstance(config, DemucsConfig) else OpenUnmix)
    assert model.config == config
    back = W.to_canonical(model)
    _assert_round_trip(weights, back)
    # the folded form is a fixed point: canonical' -> Keras -> canonical' is the identity, bit for bit
    again = B.from_canonical(config, back)
    for a, b in zip(_keras_values(model), _keras_values(again)):
        np.testing.assert_array_equal(a, b)
    for key, value in W.to_canonical(again).items():
        np.testing.assert_array_equal(value, back[key], err_msg=key)
    # float64 holds every float32 value exactly, and the float64 sum of the two biases
    model64 = B.from_canonical(config, weights, dtype="float64")
    assert all(v.dtype == "float64" for v in model64.weights)
    _assert_round_trip(weights, W.to_canonical(model64))


def test_native_file_round_trip_is_bit_exact(tmp_path):
    config = umx_preset("umxse")
    weights = join_targets(separator_weights(config, seed=3))
    written = W.save_native(tmp_path / "umxse", weights, config)
    assert [p.name for p in written] == ["umxse.weights.h5", "umxse.json"]
    back, back_config = W.load_native(tmp_path / "umxse.weights.h5")
    assert back_config == config
    assert list(back) == list(weights)
    for key, value in weights.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)  # LSTM biases included
    # a plain Keras reader: build the model from the config, model.load_weights(.weights.h5)
    keras_model = Separator.from_config(config)
    keras_model.load_weights(str(written[0]))
    reference = B.from_canonical(config, weights)
    for a, b in zip(_keras_values(keras_model), _keras_values(reference)):
        np.testing.assert_array_equal(a, b)
    model64 = B.load_module(tmp_path / "umxse", dtype="float64", niter=0)
    assert isinstance(model64, Separator) and model64.niter == 0 and model64.compute_dtype == "float64"
    with pytest.raises(FileExistsError):
        W.save_native(tmp_path / "umxse.json", weights, config)
    W.save_native(tmp_path / "umxse", weights, config, force=True)


def test_native_file_written_by_keras_alone(tmp_path):
    """A ``.weights.h5`` saved by ``model.save_weights`` (no unmix_ports group) reads back in the folded form."""
    config = demucs_preset("demucs_unittest")
    weights = random_weights(config, seed=1)
    W.save_native(tmp_path / "d", weights, config)
    model = B.from_canonical(config, weights)
    model.save_weights(str(tmp_path / "plain.weights.h5"))
    (tmp_path / "plain.json").write_text((tmp_path / "d.json").read_text())
    back, _ = W.load_native(tmp_path / "plain")
    _assert_round_trip(weights, back)


def test_canonical_file_loads(tmp_path):
    config = demucs_preset("demucs_unittest")
    weights = random_weights(config, seed=4)
    save_canonical(tmp_path / "unittest", weights, config)
    model = B.from_canonical_file(tmp_path / "unittest.safetensors")
    _assert_round_trip(weights, W.to_canonical(model))


def test_mismatched_weights_are_named():
    config = umx_preset("umxse").model
    weights = random_weights(config, seed=0)
    bad = dict(weights)
    del bad["fc1.weight"]
    bad["fc2.weight"] = bad["fc2.weight"][:, :10]
    bad["extra"] = np.zeros(3, np.float32)
    model = OpenUnmix.from_config(config)
    with pytest.raises(WeightsMismatchError) as info:
        W.load_weights(model, bad)
    text = str(info.value)
    assert "missing     fc1.weight" in text and "mis-shaped  fc2.weight" in text and "unexpected  extra" in text
    # legacy keys of the 2019 files are dropped silently
    W.load_weights(model, {**weights, "sample_rate": np.array(44100.0), "stft.window": np.ones(1024)})


def test_keras_layout_rules():
    """The few layout facts the mapping relies on, checked on the Keras layers themselves."""
    config = demucs_preset("demucs_unittest")
    weights = random_weights(config, seed=2)
    model = B.from_canonical(config, weights)
    transposed = model.decoder[0].layers[2]
    assert type(transposed).__name__ == "Conv1DTranspose"
    np.testing.assert_array_equal(transposed.kernel.numpy(), weights["decoder.0.2.weight"].transpose(2, 1, 0))
    bn = OpenUnmix.from_config(umx_preset("umxse").model).bn1
    assert bn.epsilon == BATCH_NORM_EPS and bn.momentum == 1 - BATCH_NORM_MOMENTUM  # Keras's momentum: the decay
    cell = model.lstm.lstm[0].forward_layer.cell
    assert cell.recurrent_activation is keras.activations.sigmoid and cell.activation is keras.activations.tanh


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_skip_init_draws_nothing_and_loading_overwrites_every_variable(name):
    """``from_canonical`` builds under ``skip_init`` (zeros, no random draws): every variable must then be one of
    the loaded ones (one the mapping missed would stay zero, silently); outside the context the random
    initialisers are back."""
    from umx_tf.layers import skip_init

    config = CONFIGS[name]
    model_class = Demucs if isinstance(config, DemucsConfig) else OpenUnmix
    with skip_init():
        zeros = model_class.from_config(config)
    kernels = [v for v in zeros.weights if "kernel" in v.path]
    assert kernels and not any(np.any(v.numpy()) for v in kernels)
    assert all(np.any(v.numpy()) for v in model_class.from_config(config).weights if "kernel" in v.path)
    model = B.from_canonical(config, random_weights(config, seed=3))
    assigned = {id(entry.variable) for entry in W.entries(model)}
    assert [v.path for v in model.weights if id(v) not in assigned] == []
