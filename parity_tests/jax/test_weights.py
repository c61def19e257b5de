"""``umx_jax.weights``: canonical <-> Flax state and the native msgpack file, bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from core_spec.canonical import join_targets
from core_spec.configs import DemucsConfig, demucs_preset, umx_preset
from core_spec.params import WeightsMismatchError, nb_parameters, parameter_inventory
from core_spec.seeded import random_weights
from parity_tests import fixtures_umx
from umx_jax import Demucs, OpenUnmix, Separator
from umx_jax.build import from_canonical, load_module
from umx_jax.weights import load_native, native_paths, save_native, to_canonical

UMX = umx_preset("umxse")
DEMUCS = DemucsConfig(channels=4, depth=3, segment_length=3000)


def _cases():
    yield "umx", UMX.model, random_weights(UMX.model, 1)
    yield "separator", UMX, join_targets(fixtures_umx.separator_weights(UMX, seed=2))
    yield "demucs", DEMUCS, random_weights(DEMUCS, 3)


CASES = {name: (config, weights) for name, config, weights in _cases()}


def _is_lstm_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith(("bias_ih", "bias_hh"))


def _assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k} differs"


def _pure_state(module: nnx.Module) -> list[tuple[str, np.ndarray]]:
    flat = nnx.to_flat_state(nnx.state(module, (nnx.Param, nnx.BatchStat)))
    return [(".".join(map(str, path)), np.asarray(var[...])) for path, var in flat]


@pytest.mark.parametrize("name", sorted(CASES))
def test_native_file_round_trip_is_bit_exact(name: str, tmp_path) -> None:
    config, weights = CASES[name]
    paths = save_native(tmp_path / f"{name}.v1-jax", weights, config)  # a dot in the stem stays
    assert paths == [tmp_path / f"{name}.v1-jax.msgpack", tmp_path / f"{name}.v1-jax.json"]
    assert paths == list(native_paths(tmp_path / f"{name}.v1-jax.msgpack"))
    loaded, loaded_config = load_native(paths[0])
    assert loaded_config == config
    _assert_identical(loaded, {k: np.asarray(v, np.float32) for k, v in weights.items()})
    with pytest.raises(FileExistsError, match="force"):
        save_native(tmp_path / f"{name}.v1-jax", weights, config)
    save_native(tmp_path / f"{name}.v1-jax", weights, config, force=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_canonical_flax_round_trip(name: str, tmp_path) -> None:
    """canonical -> Flax -> canonical is exact except that LSTM biases come back folded (their sum exact);
    Flax -> canonical -> Flax, and the native file -> module, are bit for bit."""
    config, weights = CASES[name]
    module = from_canonical(config, weights)
    expected_type = {"umx": OpenUnmix, "separator": Separator, "demucs": Demucs}[name]
    assert isinstance(module, expected_type)
    back = to_canonical(module)
    assert list(back) == list(weights)
    for k, v in back.items():
        if _is_lstm_bias(k):
            continue
        assert np.array_equal(v, weights[k]), k
    for k in back:
        if _is_lstm_bias(k) and "bias_ih" in k:
            other = k.replace("bias_ih", "bias_hh")
            folded = (weights[k].astype(np.float64) + weights[other].astype(np.float64)).astype(np.float32)
            assert np.array_equal(back[k], folded) and not back[other].any(), k
    again = from_canonical(config, back)
    assert _names_equal(_pure_state(again), _pure_state(module))
    save_native(tmp_path / "m", weights, config)
    assert _names_equal(_pure_state(load_module(tmp_path / "m")), _pure_state(module))


def _names_equal(a: list[tuple[str, np.ndarray]], b: list[tuple[str, np.ndarray]]) -> bool:
    return [n for n, _ in a] == [n for n, _ in b] and all(
        x.dtype == y.dtype and np.array_equal(x, y) for (_, x), (_, y) in zip(a, b)
    )


def test_float64_module_holds_float64() -> None:
    config, weights = CASES["demucs"]
    module = from_canonical(config, weights, dtype="float64")
    assert module.dtype == np.float64
    assert all(a.dtype == np.float64 for _, a in _pure_state(module))
    assert not jax.config.jax_enable_x64


def test_mismatches_and_legacy_keys_are_named() -> None:
    weights = dict(random_weights(UMX.model, 1))
    weights.update(
        {"sample_rate": np.array(44100), "stft.window": np.ones(1024), "bn1.num_batches_tracked": np.array(3)}
    )
    from_canonical(UMX.model, weights)  # legacy 2019 keys and counters are dropped
    del weights["fc1.weight"]
    weights["fc2.weight"] = weights["fc2.weight"][:, :10]
    weights["extra"] = np.zeros(2)
    with pytest.raises(WeightsMismatchError) as err:
        from_canonical(UMX.model, weights)
    message = str(err.value)
    assert (
        "missing     fc1.weight" in message and "unexpected  extra" in message and "mis-shaped  fc2.weight" in message
    )


def test_presets_build_abstractly() -> None:
    """Full-size shapes: the Flax state of the released configurations holds the inventory's parameters (each
    LSTM layer's two biases folded into one), built abstractly (nothing allocated or computed)."""
    for config, cls in ((umx_preset("umxhq").model, OpenUnmix), (demucs_preset("demucs"), Demucs)):
        abstract = nnx.eval_shape(lambda c=config, k=cls: k.from_config(c))
        flat = nnx.to_flat_state(nnx.state(abstract, (nnx.Param, nnx.BatchStat)))
        n = sum(int(np.prod(var.get_value().shape)) for _, var in flat)
        folded = sum(int(np.prod(shape)) for name, shape in parameter_inventory(config) if "bias_hh" in name)
        assert n == nb_parameters(config) - folded
