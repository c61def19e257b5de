"""The TensorFlow port (``umx_tf``) as a :class:`~unmix.parity.adapters.Port`, float32 and float64.

Every function takes and returns NumPy arrays. The networks and the separator run their ``tf.function``\\ s eagerly
(:func:`eagerly`: no tracing, no XLA), so each stage is the port's arithmetic op by op; the compiled graphs are
checked end to end by ``parity_tests/tf/test_end_to_end.py`` (HTDemucs: ``parity_tests/tf/test_htdemucs.py``).
HTDemucs (``umx_tf.htdemucs``, ``umx_tf.htdemucs_apply``): the traced forward and demucs 4's ``apply_model`` on the
model or its bag, the shifts drawn by ``numpy.random.default_rng(seed)``. ``gpu`` is the first GPU with TF32 off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

import umx_tf
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from umx_tf import htdemucs as ht_model
from umx_tf import htdemucs_apply as ht_apply
from unmix.parity.adapters import DeviceUnavailable, Port, port_of

__all__ = ["eagerly", "np_of", "on_device", "port"]


@contextlib.contextmanager
def eagerly() -> Iterator[None]:
    """Run every ``tf.function`` of the port eagerly (no tracing, no XLA): the stage checks run the arithmetic
    on small inputs, where compiling would cost more than computing."""
    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)


def check_device(device: str) -> None:
    """Raises :class:`~unmix.parity.adapters.DeviceUnavailable` for ``gpu`` where TensorFlow sees no GPU."""
    if device == "gpu" and not tf.config.list_logical_devices("GPU"):
        raise DeviceUnavailable("--device gpu needs a GPU visible to TensorFlow (pip install 'tensorflow[and-cuda]')")


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """Run under ``tf.device`` for ``device`` (``gpu``: the first GPU, TF32 off)."""
    check_device(device)
    if device == "gpu":
        tf.config.experimental.enable_tensor_float_32_execution(False)
        with tf.device("/GPU:0"):
            yield
    else:
        with tf.device("/CPU:0"):
            yield


def np_of(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _stft(x: np.ndarray, cfg: STFTConfig, dtype: str, device: str, window: np.ndarray | None = None) -> np.ndarray:
    with on_device(device):
        return np_of(umx_tf.stft(tf.constant(x), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, window))


def _istft(
    X: np.ndarray, cfg: STFTConfig, length: int, dtype: str, device: str, window: np.ndarray | None = None
) -> np.ndarray:
    with on_device(device):
        return np_of(umx_tf.istft(tf.constant(X), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, length, window))


def _complex_norm(X: np.ndarray, mono: bool, dtype: str, device: str) -> np.ndarray:
    with on_device(device):
        return np_of(umx_tf.complex_norm(tf.constant(X), mono))


def _umx(weights, config: UMXConfig, x: np.ndarray, dtype: str, device: str):
    with on_device(device):
        model = umx_tf.from_canonical(config, weights, dtype=dtype)
        trace: dict[str, Any] = {}
        with eagerly():
            out = model(tf.constant(x), trace=trace)
        return np_of(out), {k: np_of(v) for k, v in trace.items()}


def _wiener(v, mix, niter: int, softmask: bool, residual: bool, dtype: str, device: str) -> np.ndarray:
    with on_device(device):
        return np_of(umx_tf.wiener(tf.constant(v), tf.constant(mix), niter, softmask, residual))


def _separator(weights, config: UMXSeparatorConfig, audio: np.ndarray, dtype: str, device: str) -> np.ndarray:
    with on_device(device):
        separator = umx_tf.from_canonical(config, weights, dtype=dtype)
        with eagerly():
            return np_of(separator.separate(audio))


def _resample(x: np.ndarray, old: int, new: int, dtype: str, device: str) -> np.ndarray:
    with on_device(device):
        return np_of(umx_tf.resample_frac(tf.constant(x), old, new))


def _demucs(weights, config: DemucsConfig, mix: np.ndarray, dtype: str, device: str):
    with on_device(device):
        model = umx_tf.from_canonical(config, weights, dtype=dtype)
        trace: dict[str, Any] = {}
        with eagerly():
            out = model(tf.constant(mix), trace=trace)
        return np_of(out), {k: np_of(v) for k, v in trace.items()}


def _apply_model(weights, config: DemucsConfig, mix: np.ndarray, dtype: str, device: str, **kwargs) -> np.ndarray:
    with on_device(device):
        model = umx_tf.from_canonical(config, weights, dtype=dtype)
        with eagerly():
            return np_of(umx_tf.apply_model(model, mix, **kwargs))


def _htdemucs(weights, config: HTDemucsConfig, mix: np.ndarray, dtype: str, device: str, stats=None):
    with on_device(device):
        model = umx_tf.from_canonical(config, weights, dtype=dtype)
        given = None if stats is None else {k: np.asarray(v, dtype) for k, v in stats.items()}
        with eagerly():
            out, trace = ht_model.forward(model, mix, stats=given, traced=True)
        return np_of(out), {k: np_of(v) for k, v in trace.items()}


def _htdemucs_apply(weights, config: HTDemucsConfig | BagConfig, mix: np.ndarray, shifts, split, overlap,
                    transition_power, segment, seed, dtype: str, device: str, stats=None):  # fmt: skip
    if stats is not None:
        raise ValueError("the TensorFlow port computes its own input statistics")
    with on_device(device):
        if isinstance(config, BagConfig):
            flat = {f"models.{i}.{k}": v for i, w in enumerate(weights) for k, v in w.items()}
            model = umx_tf.from_canonical(config, flat, dtype=dtype)
        else:
            model = umx_tf.from_canonical(config, weights[0], dtype=dtype)
        with eagerly():
            out = ht_apply.apply_model(model, mix, shifts, split, overlap, transition_power, segment, seed)
        return np_of(out), None


def port(device: str = "cpu") -> Port:
    """The adapter; raises :class:`~unmix.parity.adapters.DeviceUnavailable` for ``gpu`` without a GPU."""
    check_device(device)
    return port_of("tf", globals(), device=device)
