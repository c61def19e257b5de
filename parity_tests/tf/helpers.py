"""Shared helpers of the TensorFlow port's tests: the harness adapter, devices and dtypes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import umx_tf
from core_spec.configs import DemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from parity_tests.harness import Port

DTYPES = ("float64", "float32")

__all__ = ["DTYPES", "eagerly", "keras", "np_of", "on_device", "oracle_tf", "port", "tf"]


@contextlib.contextmanager
def eagerly() -> Iterator[None]:
    """Run every ``tf.function`` of the port eagerly (no tracing, no XLA): the stage tests check the arithmetic
    on small inputs, where compiling would cost more than computing; ``test_end_to_end`` runs the compiled
    graphs."""
    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """Run under ``tf.device`` for the ``--device`` option (``gpu``: the first GPU, TF32 off; skips without)."""
    if device == "gpu":
        if not tf.config.list_logical_devices("GPU"):
            pytest.skip("--device gpu needs a GPU visible to TensorFlow")
        tf.config.experimental.enable_tensor_float_32_execution(False)
        with tf.device("/GPU:0"):
            yield
    else:
        with tf.device("/CPU:0"):
            yield


def np_of(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _stft(x: np.ndarray, cfg: STFTConfig, dtype: str, device: str) -> np.ndarray:
    with on_device(device):
        return np_of(umx_tf.stft(tf.constant(x), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized))


def _istft(X: np.ndarray, cfg: STFTConfig, length: int, dtype: str, device: str) -> np.ndarray:
    with on_device(device):
        return np_of(umx_tf.istft(tf.constant(X), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, length))


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


@pytest.fixture(scope="module")
def port(device: str) -> Port:
    """The TensorFlow port as the harness's adapter."""
    return Port(
        name="tf",
        device=device,
        stft=_stft,
        istft=_istft,
        complex_norm=_complex_norm,
        umx=_umx,
        wiener=_wiener,
        separator=_separator,
        resample=_resample,
        demucs=_demucs,
        apply_model=_apply_model,
    )


def oracle_tf(clip: Any, sep: Any, dtype: str = "float32") -> np.ndarray:
    """Oracle Wiener separation of a :class:`parity_tests.real_clip.Clip` by the TensorFlow port (true source
    magnitudes in place of the networks): ``(nb_sources, nb_channels, nb_timesteps)``, a column of
    ``make demo`` (``scripts/demo.py``) beside ``real_clip.oracle_reference`` and ``real_clip.oracle_upstream``."""
    from parity_tests.real_clip import STEM_NAMES

    fft = sep.stft

    def spectrogram(x: np.ndarray) -> Any:
        return umx_tf.stft(tf.constant(x[None], dtype=dtype), fft.n_fft, fft.n_hop)

    mix_stft = spectrogram(clip.mixture)
    spectrograms = tf.stack([umx_tf.complex_norm(spectrogram(clip.stems[n])) for n in STEM_NAMES], axis=-1)
    return np_of(umx_tf.separator.filter_and_invert(mix_stft, spectrograms, sep, clip.mixture.shape[-1]))[0]
