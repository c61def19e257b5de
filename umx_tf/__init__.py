"""TensorFlow 2 port of Open-Unmix, Demucs v2 and HTDemucs (demucs 4), from the framework-neutral spec in
``core_spec``.

Keras 3 layers and models on the TensorFlow backend. The backend is selected here, before Keras is imported
(``KERAS_BACKEND`` need not be set); importing this package after Keras was imported with another backend is an
error, because Keras cannot switch backends inside a process.

Modules (the same names in every port, :data:`core_spec.public_api.MODULES`): :mod:`~umx_tf.transforms` (STFT,
ISTFT, magnitude), :mod:`~umx_tf.layers` (the Keras building blocks), :mod:`~umx_tf.umx` (``OpenUnmix``),
:mod:`~umx_tf.demucs` (``Demucs``), :mod:`~umx_tf.resample` (julius-compatible resampler),
:mod:`~umx_tf.filtering` (Wiener/EM), :mod:`~umx_tf.separator` (``Separator``), :mod:`~umx_tf.apply`
(``apply_model``, ``separate_track``), the HTDemucs modules (:mod:`~umx_tf.htdemucs_spec`,
:mod:`~umx_tf.htdemucs_embed`, :mod:`~umx_tf.htdemucs_layers`, :mod:`~umx_tf.htdemucs_transformer`,
:mod:`~umx_tf.htdemucs` (``HTDemucs``), :mod:`~umx_tf.htdemucs_apply` (``BagOfModels`` and demucs 4's
``apply_model``, ``separate_track``)), :mod:`~umx_tf.weights` (canonical weights <-> Keras ``.weights.h5``),
:mod:`~umx_tf.build` (models from configs and files), :mod:`~umx_tf.train` (the ``Trainer`` that ``unmix-train`` steps).

TensorFloat-32 is switched off at import (``tf.config.experimental.enable_tensor_float_32_execution(False)``):
on Ampere and newer GPUs it would round matmul and convolution inputs to 10 mantissa bits, far outside the parity
tolerances. Switch it back on yourself if you want the speed more than the parity.
"""

from __future__ import annotations

import os
import sys

from core_spec.frameworks import quiet_import

_BACKEND = "tensorflow"


def _select_backend() -> None:
    """Make Keras run on TensorFlow, or fail clearly if that is no longer possible in this process."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", _BACKEND)
    import keras

    backend = keras.backend.backend()
    if backend != _BACKEND:
        how = (
            "keras was imported before umx_tf"
            if os.environ.get("KERAS_BACKEND", _BACKEND) == _BACKEND
            else f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r} is set"
        )
        raise ImportError(
            f"umx_tf needs Keras on the TensorFlow backend, but Keras runs on {backend!r} ({how}). Import umx_tf "
            "before keras, or set KERAS_BACKEND=tensorflow (Keras cannot switch backends inside a process)."
        )


with quiet_import():  # TensorFlow's start-up log lines (core_spec.frameworks.quiet_import)
    _select_backend()

import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_tensor_float_32_execution(False)

from .apply import apply_model, separate_track  # noqa: E402
from .build import from_canonical, from_canonical_file, load_module  # noqa: E402
from .demucs import Demucs, center_trim, valid_length  # noqa: E402
from .filtering import expectation_maximization, wiener  # noqa: E402
from .htdemucs import HTDemucs  # noqa: E402
from .htdemucs_apply import BagOfModels  # noqa: E402
from .resample import resample_frac  # noqa: E402
from .separator import Separator  # noqa: E402
from .transforms import complex_norm, istft, stft  # noqa: E402
from .umx import OpenUnmix  # noqa: E402
from .weights import load_native, load_weights, native_paths, save_native, to_canonical  # noqa: E402

__all__ = [
    "BagOfModels",
    "Demucs",
    "HTDemucs",
    "OpenUnmix",
    "Separator",
    "apply_model",
    "center_trim",
    "complex_norm",
    "expectation_maximization",
    "from_canonical",
    "from_canonical_file",
    "load_module",
    "istft",
    "load_native",
    "load_weights",
    "native_paths",
    "resample_frac",
    "save_native",
    "separate_track",
    "stft",
    "to_canonical",
    "valid_length",
    "wiener",
]
