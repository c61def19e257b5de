"""Model construction: the Keras model a config describes, with canonical weights loaded (from memory, a canonical
file or the port's native ``.weights.h5`` file).

The one module that knows every model class (:mod:`umx_tf.umx`, :mod:`umx_tf.demucs`, :mod:`umx_tf.separator`,
:mod:`umx_tf.htdemucs` and the bags of :mod:`umx_tf.htdemucs_apply`) and the weight mapping (:mod:`umx_tf.weights`);
it dispatches on the config's type.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from core_spec.canonical import load_canonical
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig
from core_spec.devices import dtype_name

from ._device import device_scope
from .demucs import Demucs
from .htdemucs import HTDemucs
from .htdemucs_apply import BagOfModels
from .layers import skip_init
from .separator import Separator
from .umx import OpenUnmix
from .weights import load_weights, native_config

__all__ = ["from_canonical", "from_canonical_file", "load_module"]

Config = UMXConfig | UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig
Model = OpenUnmix | Separator | Demucs | HTDemucs | BagOfModels


def from_canonical(
    config: Config, weights: Mapping[str, Any] | None = None, dtype: Any = "float32", device: Any = None, **kwargs: Any
) -> Model:
    """Build the model ``config`` describes and load canonical ``weights`` into it.

    Args:
        config: a :class:`UMXConfig` (-> :class:`~umx_tf.umx.OpenUnmix`), :class:`UMXSeparatorConfig`
            (-> :class:`~umx_tf.separator.Separator`), :class:`DemucsConfig` (-> :class:`~umx_tf.demucs.Demucs`),
            :class:`HTDemucsConfig` (-> :class:`~umx_tf.htdemucs.HTDemucs`) or :class:`BagConfig`
            (-> :class:`~umx_tf.htdemucs_apply.BagOfModels`; weights ``models.<i>.<name>``).
        weights: canonical arrays (``None``: Keras's initialisers).
        dtype: ``"float32"`` or ``"float64"``.
        device: ``None``, ``"cpu"`` or ``"gpu"`` (:func:`umx_tf.weights.tf_device`): the variables are created
            there; run the model's calls inside :func:`umx_tf.weights.device_scope` of the same device so that its
            operations run there too.
        kwargs: for a separator, constructor arguments overriding the config's Wiener settings (``niter``, ...).
    """
    dtype = dtype_name(tf.as_dtype(dtype).name)
    with device_scope(device):
        if isinstance(config, UMXSeparatorConfig):
            return Separator.from_config(config, weights, dtype=dtype, **kwargs)
        model: Model
        with skip_init(weights is not None):  # no random draws: the weights follow
            if isinstance(config, UMXConfig):
                model = OpenUnmix.from_config(config, dtype=dtype)
            elif isinstance(config, DemucsConfig):
                model = Demucs.from_config(config, dtype=dtype)
            elif isinstance(config, HTDemucsConfig):
                model = HTDemucs.from_config(config, dtype=dtype)
            elif isinstance(config, BagConfig):
                model = BagOfModels.from_config(config, dtype=dtype)
            else:
                raise TypeError(f"no TensorFlow model for {type(config).__name__}")
        if weights is not None:
            load_weights(model, weights)
        return model


def from_canonical_file(path: str | os.PathLike, dtype: Any = "float32", device: Any = None, **kwargs: Any) -> Model:
    """Build the model a canonical file (``<stem>.safetensors`` + ``<stem>.json``, :mod:`core_spec.canonical`)
    describes and load its weights; the other arguments as :func:`from_canonical`."""
    weights, config, _ = load_canonical(path)
    return from_canonical(config, weights, dtype=dtype, device=device, **kwargs)


def load_module(path: str | os.PathLike, dtype: Any = "float32", device: Any = None, **kwargs: Any) -> Model:
    """Build the model a native file describes and read its ``.weights.h5`` with ``model.load_weights``
    (arguments as :func:`from_canonical`)."""
    h5_path, config = native_config(path)
    with device_scope(device):
        model = from_canonical(config, None, dtype=dtype, **kwargs)
        model.load_weights(str(h5_path))
    return model
