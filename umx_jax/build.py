"""Model construction from weights: the one module that imports both the models and :mod:`umx_jax.weights`.

A config says what to build (:class:`core_spec.configs.UMXSeparatorConfig` -> :class:`~umx_jax.separator.Separator`,
``UMXConfig`` -> :class:`~umx_jax.umx.OpenUnmix`, ``DemucsConfig`` -> :class:`~umx_jax.demucs.Demucs`,
``HTDemucsConfig`` -> :class:`~umx_jax.htdemucs.HTDemucs`, ``BagConfig`` ->
:class:`~umx_jax.htdemucs_apply.BagOfModels`). The networks are built shape-only and then hold the weights
(:func:`umx_jax.weights.materialize`): nothing is randomly initialised first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax.numpy as jnp

from core_spec.canonical import load_canonical, per_model
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig

from ._scope import canonical_dtype
from .demucs import Demucs
from .htdemucs import HTDemucs
from .htdemucs_apply import BagOfModels
from .separator import Separator
from .umx import OpenUnmix
from .weights import load_native, materialize

__all__ = ["from_canonical", "from_canonical_file", "load_module"]

Config = UMXConfig | UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig
Module = OpenUnmix | Separator | Demucs | HTDemucs | BagOfModels


def from_canonical(
    config: Config, weights: Mapping[str, Any], *, dtype: Any = jnp.float32, device: Any = None, **overrides: Any
) -> Module:
    """The Flax module of ``config`` holding canonical ``weights``.

    Args:
        config: ``UMXConfig`` (-> :class:`OpenUnmix`), ``UMXSeparatorConfig`` (-> :class:`Separator`; weights
            ``{target: {name: array}}`` or ``target_models.<t>.<name>``) or ``DemucsConfig`` (-> :class:`Demucs`).
        weights: canonical (upstream state-dict) arrays; checked against the inventory.
        dtype: float32 or float64 (float64 arrays are made under ``jax.enable_x64``).
        device: a ``jax.Device``, ``"cpu"``, ``"gpu"`` or ``None`` (JAX's default).
        overrides: separator settings replacing the config's (``niter=...``, ``precision=...``).
    """
    if isinstance(config, UMXSeparatorConfig):
        return Separator.from_config(config, weights, dtype=dtype, device=device, **overrides)
    if overrides:
        raise TypeError(f"{type(config).__name__} takes no overrides, got {sorted(overrides)}")
    dtype = canonical_dtype(dtype)
    if isinstance(config, UMXConfig):
        return materialize(partial(OpenUnmix.from_config, config, dtype=dtype), config, weights, dtype, device)
    if isinstance(config, DemucsConfig):
        return materialize(partial(Demucs.from_config, config, dtype=dtype), config, weights, dtype, device)
    if isinstance(config, HTDemucsConfig):
        return materialize(partial(HTDemucs.from_config, config, dtype=dtype), config, weights, dtype, device)
    if isinstance(config, BagConfig):  # model by model: one abstract trace of a whole bag is quadratic in its size
        models = [
            materialize(partial(HTDemucs.from_config, m, dtype=dtype), m, w, dtype, device)
            for m, w in zip(config.models, per_model(weights, config, "weights"), strict=True)
        ]
        return BagOfModels(models, config.weights, config.segment)
    raise TypeError(f"no Flax model for {type(config).__name__}")


def from_canonical_file(
    path: str | os.PathLike, *, dtype: Any = jnp.float32, device: Any = None, **overrides: Any
) -> Module:
    """The Flax module a canonical file (``<stem>.safetensors`` + ``<stem>.json``) describes, with its weights."""
    weights, config, _ = load_canonical(path)
    return from_canonical(config, weights, dtype=dtype, device=device, **overrides)


def load_module(path: str | os.PathLike, *, dtype: Any = jnp.float32, device: Any = None, **overrides: Any) -> Module:
    """Read a native file straight into its Flax module (see :func:`from_canonical` for the arguments)."""
    weights, config = load_native(path)
    return from_canonical(config, weights, dtype=dtype, device=device, **overrides)
