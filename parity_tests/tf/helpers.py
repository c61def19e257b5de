"""Shared helpers of the TensorFlow port's tests: the harness adapter, devices and dtypes.

The adapter itself is ``unmix.parity.adapters.tf`` (shared with ``unmix-parity``); here it becomes the ``port``
fixture, and a device the machine lacks skips the test instead of raising.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import umx_tf
from parity_tests.harness import Port
from unmix.parity.adapters import DeviceUnavailable
from unmix.parity.adapters import tf as adapter
from unmix.parity.adapters.tf import eagerly, np_of

DTYPES = ("float64", "float32")

__all__ = ["DTYPES", "eagerly", "keras", "np_of", "on_device", "oracle_tf", "port", "tf"]


@contextlib.contextmanager
def on_device(device: str) -> Iterator[None]:
    """Run under ``tf.device`` for the ``--device`` option (``gpu``: the first GPU, TF32 off; skips without)."""
    try:
        adapter.check_device(device)
    except DeviceUnavailable as e:
        pytest.skip(str(e))
    with adapter.on_device(device):
        yield


@pytest.fixture(scope="module")
def port(device: str) -> Port:
    """The TensorFlow port as the harness's adapter."""
    try:
        return adapter.port(device)
    except DeviceUnavailable as e:
        pytest.skip(str(e))


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
