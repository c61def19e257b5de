"""Models from weights: :func:`from_canonical` (a config and canonical weights), :func:`from_canonical_file` (a
canonical file) and :func:`load_module` (the port's native ``.h5`` file).

The one module that imports both the models and :mod:`umx_nnabla.weights` (the mapping imports no model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from core_spec.canonical import load_canonical
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig

from .demucs import Demucs
from .htdemucs import HTDemucs
from .htdemucs_apply import BagOfModels
from .separator import Separator
from .umx import OpenUnmix
from .weights import Config, check_device_dtype, load_native, load_weights

__all__ = ["from_canonical", "from_canonical_file", "load_module"]

Model = OpenUnmix | Demucs | Separator | HTDemucs | BagOfModels


def from_canonical(
    config: Config,
    weights: Mapping[str, Any] | None = None,
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    **kwargs: Any,
) -> Model:
    """Build the model of ``config`` (:class:`OpenUnmix`, :class:`Demucs`, :class:`Separator`, :class:`HTDemucs`
    or, for a :class:`~core_spec.configs.BagConfig`, :class:`BagOfModels`) and load ``weights`` into it.
    ``kwargs`` go to the constructor (``lstm_impl``; separator overrides such as ``niter``).

    ``device``: ``"cpu"`` or ``"gpu"``; NNabla keeps parameters as arrays and runs a graph in the context current
    when it is called, so run the model inside :func:`umx_nnabla.on_device` of the same device. ``dtype``:
    ``"float32"`` (float64 is a clear error, :func:`check_device_dtype`)."""
    check_device_dtype(device, dtype)
    if isinstance(config, UMXSeparatorConfig):
        return Separator.from_config(config, weights, **kwargs)
    if isinstance(config, UMXConfig):
        model: Model = OpenUnmix.from_config(config, **kwargs)
    elif isinstance(config, DemucsConfig):
        model = Demucs.from_config(config, **kwargs)
    elif isinstance(config, HTDemucsConfig):
        model = HTDemucs.from_config(config, **kwargs)
    elif isinstance(config, BagConfig):
        model = BagOfModels.from_config(config, **kwargs)
    else:
        raise TypeError(f"no NNabla model for {type(config).__name__}")
    if weights is not None:
        load_weights(model, weights)
    return model


def from_canonical_file(
    path: str | os.PathLike, *, device: str = "cpu", dtype: Any = "float32", **kwargs: Any
) -> Model:
    """The model a canonical file (``<stem>.safetensors`` + ``<stem>.json``) describes, with its weights
    (arguments as :func:`from_canonical`)."""
    weights, config, _ = load_canonical(path)
    return from_canonical(config, weights, device=device, dtype=dtype, **kwargs)


def load_module(path: str | os.PathLike, *, device: str = "cpu", dtype: Any = "float32", **kwargs: Any) -> Model:
    """The model stored in a native file, ready to run (arguments as :func:`from_canonical`)."""
    weights, config = load_native(path)
    return from_canonical(config, weights, device=device, dtype=dtype, **kwargs)
