"""Models from weights: build the module a config describes and load canonical or native weights into it.

The one module that imports both the models (:mod:`~umx_torch.umx`, :mod:`~umx_torch.demucs`,
:mod:`~umx_torch.separator`) and :mod:`~umx_torch.weights`, so that neither depends on the other.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from core_spec.canonical import load_canonical
from core_spec.configs import DemucsConfig, UMXConfig, UMXSeparatorConfig

from ._device import torch_device, torch_dtype
from .demucs import Demucs
from .separator import Separator
from .umx import OpenUnmix
from .weights import load_native, load_weights

__all__ = ["from_canonical", "from_canonical_file", "load_module", "torch_device", "torch_dtype"]


def from_canonical(
    config: UMXConfig | UMXSeparatorConfig | DemucsConfig,
    weights: Any | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = torch.float32,
    **separator_kwargs: Any,
) -> OpenUnmix | Demucs | Separator:
    """Build the model of ``config`` (eval mode) and load canonical ``weights`` into it (``None``: PyTorch's
    initialisation). ``separator_kwargs`` override a separator's Wiener settings (``niter``, ``residual``, ...).

    ``device``: ``"cpu"``, ``"gpu"`` or a ``torch.device`` (:func:`torch_device`); ``dtype``: ``"float32"``,
    ``"float64"`` or a ``torch.dtype``."""
    device, dtype = torch_device(device), torch_dtype(dtype)
    if isinstance(config, UMXSeparatorConfig):
        return Separator.from_config(config, weights, device=device, dtype=dtype, **separator_kwargs)
    if isinstance(config, UMXConfig):
        module: OpenUnmix | Demucs = OpenUnmix.from_config(config, device, dtype)
    elif isinstance(config, DemucsConfig):
        module = Demucs.from_config(config, device, dtype)
    else:
        raise TypeError(f"no PyTorch model for {type(config).__name__}")
    if weights is not None:
        load_weights(module, weights)
    return module


def from_canonical_file(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = torch.float32,
    **separator_kwargs: Any,
) -> OpenUnmix | Demucs | Separator:
    """Build the model a canonical file (``<stem>.safetensors`` + ``<stem>.json``) describes and load its weights."""
    weights, config, _ = load_canonical(path)
    return from_canonical(config, weights, device, dtype, **separator_kwargs)


def load_module(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = torch.float32,
    **separator_kwargs: Any,
) -> OpenUnmix | Demucs | Separator:
    """The model stored in a native file, ready to run (arguments as :func:`from_canonical`)."""
    weights, config = load_native(path)
    return from_canonical(config, weights, device, dtype, **separator_kwargs)
