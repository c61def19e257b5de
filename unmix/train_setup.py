"""What ``unmix-train`` sets up from its options before the loop: the architecture and starting weights
(``--preset``, ``--init``), the training and validation sets (``--root``, ``--valid-tracks``) and each epoch's
batches, the same draws in every framework. The recipes themselves are the spec's (:mod:`core_spec.training`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import numpy as np

from core_spec.canonical import load_canonical, split_targets
from core_spec.configs import (
    DemucsConfig,
    HTDemucsConfig,
    UMXConfig,
    UMXSeparatorConfig,
    demucs_preset,
    htdemucs_preset,
    umx_preset,
)
from core_spec.shapes import valid_length
from core_spec.training import HTDemucsTrainConfig, Recipe, UMXTrainConfig, shard_batch

from . import data

__all__ = ["epoch_batches", "make_datasets", "model_config"]


def model_config(
    args: argparse.Namespace, recipe: Recipe
) -> tuple[UMXConfig | DemucsConfig | HTDemucsConfig, dict[str, np.ndarray] | None, float]:
    """The architecture to train (``--preset``, default ``umxhq`` / ``demucs`` / ``htdemucs``, or the ``--init``
    file's), the
    ``--init`` canonical weights (``None`` without; a separator file gives ``--target``'s network) and the sample
    rate."""

    weights = None
    if isinstance(recipe, UMXTrainConfig):
        preset = umx_preset(args.preset or "umxhq")
        config: UMXConfig | DemucsConfig = preset.model
        rate = preset.separator.sample_rate
        if args.init:
            weights, file_config, _ = load_canonical(args.init)
            if isinstance(file_config, UMXSeparatorConfig):
                weights = split_targets(weights, file_config.separator.targets)[recipe.target]
                config, rate = file_config.model, file_config.separator.sample_rate
            elif isinstance(file_config, UMXConfig):
                config = file_config
            else:
                raise ValueError(f"--init {args.init}: holds a {type(file_config).__name__}, not an Open-Unmix model")
        return config, weights, float(rate)
    if isinstance(recipe, HTDemucsTrainConfig):
        ht_config = htdemucs_preset(args.preset or "htdemucs")
        if args.init:
            weights, ht_config, _ = load_canonical(args.init)
            if not isinstance(ht_config, HTDemucsConfig):
                raise ValueError(f"--init {args.init}: holds a {type(ht_config).__name__}, not an HTDemucs model")
        return ht_config, weights, float(ht_config.samplerate)
    config = demucs_preset(args.preset or "demucs")
    if args.init:
        weights, config, _ = load_canonical(args.init)
        if not isinstance(config, DemucsConfig):
            raise ValueError(f"--init {args.init}: holds a {type(config).__name__}, not a Demucs model")
    return config, weights, float(config.samplerate)


def make_datasets(
    args: argparse.Namespace,
    recipe: Recipe,
    config: UMXConfig | DemucsConfig | HTDemucsConfig,
    rate: float,
) -> tuple[Any, Any, list]:
    """``(train set, valid set, train tracks)`` from ``--root`` and ``--valid-tracks`` (:mod:`unmix.data`).

    UMX: :class:`~unmix.data.UMXDataset` over the four MUSDB sources (the model's channels and rate checked);
    Demucs: :class:`~unmix.data.DemucsDataset` over the model's sources, excerpts of ``valid_length(samples) +
    data_stride``; HTDemucs: the same with ``samples + data_stride`` (demucs 4's ``Wavset``: ``segment + shift`` seconds
    every ``shift``; the network trains at any length). Validation needs at least one track: no validation track (an
    empty ``valid`` subset or ``--valid-tracks 0``) is a :class:`~unmix.data.DataError`, in every framework
    (:mod:`unmix.train_cli`).
    """

    umx = isinstance(recipe, UMXTrainConfig)
    sources = data.DEFAULT_SOURCES if umx else tuple(config.sources)
    if umx and recipe.target not in sources:
        raise ValueError(f"--target {recipe.target!r} is not one of {sources}")
    if args.valid_tracks is not None and args.valid_tracks < 1:
        raise data.DataError(f"--valid-tracks {args.valid_tracks}: training needs at least one validation track")
    train_tracks = data.open_tracks(args.root, subset="train", sources=sources)
    valid_tracks = data.open_tracks(args.root, subset="valid", sources=sources)
    if args.valid_tracks is not None:
        valid_tracks = valid_tracks[: args.valid_tracks]
    if not train_tracks:
        raise data.DataError(f"{args.root}: no training tracks")
    if not valid_tracks:
        raise data.DataError(f"{args.root}: no validation tracks (subset 'valid'): training needs at least one")
    if umx:
        kwargs: dict[str, Any] = {"sample_rate": rate, "nb_channels": config.nb_channels}
        train_set = data.UMXDataset(train_tracks, recipe, recipe.seed, train=True, **kwargs)
        valid_set = data.UMXDataset(valid_tracks, recipe, recipe.seed, train=False, **kwargs)
    else:
        length = recipe.samples if isinstance(recipe, HTDemucsTrainConfig) else valid_length(recipe.samples, config)
        kwargs = {"sources": sources, "audio_channels": config.audio_channels, "sample_rate": rate}
        train_set = data.DemucsDataset(train_tracks, recipe, length, train=True, **kwargs)
        valid_set = data.DemucsDataset(valid_tracks, recipe, length, train=False, **kwargs)
    return train_set, valid_set, train_tracks


def epoch_batches(
    train_set: Any,
    recipe: Recipe,
    rng: np.random.Generator,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Any]:
    """The training batches of epoch ``epoch``, the same draws from ``rng`` in every framework.

    Calls ``train_set.set_epoch(epoch)`` first (UMX: item ``i`` of epoch ``e`` draws from
    ``default_rng([seed, e, i])``, new excerpts every epoch). The order comes from ``rng``. UMX: ``(x, y)``
    ``(B, C, T)`` each, replica ``rank`` reading only its share; Demucs and HTDemucs: sources ``(B, S, C, T)``, the
    whole batch augmented with ``rng`` (:func:`unmix.data.demucs_augment`; ``Remix`` groups as in one process),
    then replica ``rank``'s share. demucs 4's augmentations are v2's with its defaults (``Shift`` per source,
    ``Remix`` and ``Scale`` with probability 1); it applies ``FlipChannels`` before ``FlipSign``, which commute.
    """

    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    if isinstance(recipe, UMXTrainConfig):
        return data.batches(train_set, recipe.batch_size, rng, shuffle=True, drop_last=True, rank=rank,
                            world_size=world_size)  # fmt: skip
    stream = data.batches(train_set, recipe.batch_size, rng, shuffle=True, drop_last=True)
    return (shard_batch(data.demucs_augment(b, recipe, rng), rank, world_size) for b in stream)
