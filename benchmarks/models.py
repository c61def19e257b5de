"""The configs, training recipes and seeded data of a :class:`~benchmarks.plan.Point` (NumPy and ``core_spec``
only: the same in both environments).

The configs are rebuilt from the point in every worker; the weights and batches are drawn once by
:mod:`benchmarks.inputs` and read from files, so that every implementation gets exactly the same arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from benchmarks.plan import RATE, Point, Sizes
from benchmarks.workloads import demucs_weights, umx_config, umx_weights

__all__ = ["config", "recipe", "train_batch", "weights"]


def _umx_model(model: Any, hidden: int | None, sizes: Sizes) -> Any:
    changes = {"hidden_size": hidden, "nb_layers": sizes.umx_layers}
    return dataclasses.replace(model, **{k: v for k, v in changes.items() if v is not None})


def _demucs(channels: int, sizes: Sizes) -> Any:
    from core_spec.configs import demucs_preset

    cfg = dataclasses.replace(demucs_preset("demucs"), channels=channels)
    return cfg if sizes.demucs_depth is None else dataclasses.replace(cfg, depth=sizes.demucs_depth)


def config(point: Point, sizes: Sizes) -> Any:
    """The model config of ``point``: a ``UMXSeparatorConfig`` (separator), ``DemucsConfig`` (apply, train) or
    ``UMXConfig`` (UMX training: one target's network)."""
    from core_spec.configs import umx_preset

    if point.kind == "separator":
        cfg = umx_config(point.niter)
        return dataclasses.replace(cfg, model=_umx_model(cfg.model, sizes.umx_hidden, sizes))
    if point.kind == "apply":
        return _demucs(sizes.demucs_channels, sizes)
    if point.model == "umx":
        return _umx_model(umx_preset("umxhq").model, sizes.train_umx_hidden, sizes)
    return _demucs(sizes.train_demucs_channels, sizes)


def recipe(point: Point) -> Any:
    """The training recipe of a ``train`` point (upstream's defaults, with the point's batch and excerpt)."""
    from core_spec.training import DemucsTrainConfig, UMXTrainConfig

    if point.model == "umx":
        return UMXTrainConfig(batch_size=point.batch, seq_dur=point.seconds)
    return DemucsTrainConfig(batch_size=point.batch)


def weights(point: Point, cfg: Any) -> dict[str, Any]:
    """Seeded canonical weights: ``{target: {name: array}}`` for a separator, ``{name: array}`` otherwise."""
    if point.kind == "separator":
        return umx_weights(cfg)
    if point.kind == "apply":
        return demucs_weights(cfg)
    from core_spec.seeded import random_weights

    return random_weights(cfg, seed=0)


def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def train_batch(point: Point, cfg: Any) -> dict[str, np.ndarray]:
    """The seeded batch of a training point: ``{"x", "y"}`` (UMX, ``(batch, 2, seconds * rate)``) or
    ``{"sources"}`` (Demucs, ``(batch, 4, 2, valid_length(seconds * rate))``)."""
    from core_spec.shapes import valid_length

    if point.model == "umx":
        shape = (point.batch, 2, int(point.seconds * RATE))
        return {"x": _noise(shape, 1), "y": _noise(shape, 2)}
    length = valid_length(int(point.seconds * RATE), cfg)
    return {"sources": _noise((point.batch, len(cfg.sources), cfg.audio_channels, length), 3)}
