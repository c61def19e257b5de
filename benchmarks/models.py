"""The configs, training recipes and seeded data of a :class:`~benchmarks.plan.Point` (NumPy and ``core_spec``
only: the same in both environments).

The configs are rebuilt from the point in every worker; the weights and batches are drawn once by
:mod:`benchmarks.inputs` and read from files, so that every implementation gets exactly the same arrays.

HTDemucs: the released ``htdemucs`` config (``core_spec.configs.htdemucs_preset``), or with ``Sizes.htdemucs_small``
the quick plan's :data:`HTDEMUCS_SMALL`; ``htdemucs_ft`` is a :class:`~core_spec.configs.BagConfig` of four such
models with one-hot source weights, as the released bag.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from benchmarks.plan import Point, Sizes
from benchmarks.workloads import demucs_weights, umx_config, umx_weights

__all__ = ["HTDEMUCS_SMALL", "config", "recipe", "train_batch", "weights"]

HTDEMUCS_SMALL: dict[str, Any] = {
    "channels": 8,
    "nfft": 2048,
    "bottom_channels": 32,
    "t_layers": 2,
    "t_heads": 4,
    "dconv_comp": 4,
    "segment": (1, 2),
}
"""The quick plan's HTDemucs: the released structure (dconv_mode 3, depth 4, 1x1 samplers around the
cross-transformer) at a small width, 2 transformer layers, a 0.5-s segment (so that 1 s of audio is 3 chunks)."""


def _umx_model(model: Any, hidden: int | None, sizes: Sizes) -> Any:
    changes = {"hidden_size": hidden, "nb_layers": sizes.umx_layers}
    return dataclasses.replace(model, **{k: v for k, v in changes.items() if v is not None})


def _demucs(channels: int, sizes: Sizes) -> Any:
    from core_spec.configs import demucs_preset

    cfg = dataclasses.replace(demucs_preset("demucs"), channels=channels)
    return cfg if sizes.demucs_depth is None else dataclasses.replace(cfg, depth=sizes.demucs_depth)


def _htdemucs(point: Point, sizes: Sizes) -> Any:
    from core_spec.configs import BagConfig, HTDemucsConfig, htdemucs_preset

    model = htdemucs_preset("htdemucs")
    assert isinstance(model, HTDemucsConfig)
    if sizes.htdemucs_small:
        model = dataclasses.replace(model, **HTDEMUCS_SMALL)
    if point.model == "htdemucs":
        return model
    released = htdemucs_preset("htdemucs_ft")
    assert isinstance(released, BagConfig)
    return dataclasses.replace(released, models=(model,) * len(released.models))


def config(point: Point, sizes: Sizes) -> Any:
    """The model config of ``point``: a ``UMXSeparatorConfig`` (separator), ``DemucsConfig`` (apply, train),
    ``UMXConfig`` (UMX training: one target's network), ``HTDemucsConfig`` or ``BagConfig`` (``htdemucs_ft``)."""
    from core_spec.configs import umx_preset

    if point.htdemucs:
        return _htdemucs(point, sizes)
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
    from core_spec.training import DemucsTrainConfig, HTDemucsTrainConfig, UMXTrainConfig

    if point.htdemucs:
        return HTDemucsTrainConfig(batch_size=point.batch, samples=point.nb_timesteps)
    if point.model == "umx":
        return UMXTrainConfig(batch_size=point.batch, seq_dur=point.seconds)
    return DemucsTrainConfig(batch_size=point.batch)


def weights(point: Point, cfg: Any) -> dict[str, Any]:
    """Seeded canonical weights: ``{target: {name: array}}`` for a separator, ``{name: array}`` otherwise (a bag:
    ``models.<i>.<name>``, model ``i`` seeded ``10 + i``)."""
    from core_spec.configs import BagConfig
    from core_spec.seeded import random_weights

    if isinstance(cfg, BagConfig):
        return {f"models.{i}.{k}": v for i, m in enumerate(cfg.models) for k, v in random_weights(m, 10 + i).items()}
    if point.kind == "separator":
        return umx_weights(cfg)
    if point.kind == "apply" and not point.htdemucs:
        return demucs_weights(cfg)
    return random_weights(cfg, seed=0)


def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def train_batch(point: Point, cfg: Any) -> dict[str, np.ndarray]:
    """The seeded batch of a training point: ``{"x", "y"}`` (UMX, ``(batch, 2, seconds * rate)``) or
    ``{"sources"}`` (Demucs, ``(batch, 4, 2, valid_length(seconds * rate))``; HTDemucs ``(batch, 4, 2, seconds *
    rate)``: in train mode it runs at the input's length)."""
    from core_spec.shapes import valid_length

    if point.model == "umx":
        shape = (point.batch, 2, point.nb_timesteps)
        return {"x": _noise(shape, 1), "y": _noise(shape, 2)}
    length = point.nb_timesteps if point.htdemucs else valid_length(point.nb_timesteps, cfg)
    return {"sources": _noise((point.batch, len(cfg.sources), cfg.audio_channels, length), 3)}
