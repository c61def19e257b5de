"""``unmix-train --framework jax``: a run of the JAX port's :class:`umx_jax.train.Trainer` through the tool's loop.

:func:`fit` builds the run from the options of :func:`unmix.train_cli.build_parser`: the run folder and its state
(:mod:`unmix.run_folder`), the devices (``--devices N``: data parallelism inside this one process, over N devices of
``--device``; on the CPU, N host devices, :func:`umx_jax.train.ensure_devices`), the architecture and starting
weights (``--preset``, ``--init``; otherwise upstream's initialisation, :func:`core_spec.training.initial_weights`,
and for Open-Unmix the input statistics of the training tracks; HTDemucs trains at ``--samples`` samples whatever
its segment, with the transformer's dropout at the config's ``t_dropout``), the data sets
(:mod:`unmix.train_setup`), the trainer (``--resume``: its checkpoint), and hands them to
:func:`unmix.train_loop.run_epochs`. :func:`main` is :func:`unmix.train_cli.run_main` around it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from core_spec.configs import UMXConfig
from core_spec.epochs import steps_per_epoch
from core_spec.training import DemucsTrainConfig, HTDemucsTrainConfig, UMXTrainConfig, initial_weights, train_stft
from umx_jax.train import FRAMEWORK, Trainer, ensure_devices

from . import data
from .heap import trim_after_jax_compilations
from .run_folder import RunFolder, RunState, log
from .train_cli import run_main
from .train_loop import train_epochs
from .train_setup import make_datasets, model_config

__all__ = ["fit", "main"]

Recipe = UMXTrainConfig | DemucsTrainConfig | HTDemucsTrainConfig


def fit(
    args: argparse.Namespace, recipe: Recipe, progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train with ``recipe`` on ``args.root`` into ``args.out`` (the options of
    :func:`unmix.train_cli.build_parser`). ``progress``: called with each epoch's history row.

    Returns ``{"epochs", "steps", "best_loss", "history"}``.
    """
    quiet = bool(args.quiet)
    trim_after_jax_compilations()  # the compiler's freed heap back to the OS (unmix.heap)
    folder = RunFolder.for_recipe(args.out, FRAMEWORK, recipe)
    platform = "gpu" if args.device in ("gpu", "cuda") else args.device
    devices = ensure_devices(max(1, args.devices), platform)
    config, weights, rate = model_config(args, recipe)
    stft_config = train_stft(config, recipe.stft_center) if isinstance(config, UMXConfig) else None
    run = RunState.for_recipe(recipe)
    train_set, valid_set, train_tracks = make_datasets(args, recipe, config, rate)
    steps = steps_per_epoch(len(train_set), recipe.batch_size, len(devices), unit="devices")

    rng = np.random.default_rng(recipe.seed)
    if weights is None:
        mean = scale = None
        if isinstance(recipe, UMXTrainConfig) and not args.resume:
            log(f"input statistics over {len(train_tracks)} training tracks", quiet)
            mean, scale = data.umx_statistics(train_tracks, config, stft_config, center=recipe.stft_center)
        weights = initial_weights(config, recipe.seed, mean, scale)
    trainer = Trainer(config, weights, recipe, stft=stft_config, devices=devices, seed=recipe.seed, precision="highest")
    if args.resume:
        trainer.load_checkpoint(folder, run, rng)
        log(f"resumed {folder.checkpoint} at epoch {run.epoch}, step {run.step}", quiet)

    return train_epochs(
        trainer, run, folder, args, recipe, train_set, valid_set, rng, steps, quiet=quiet, progress=progress
    )


def main(args: argparse.Namespace) -> int:
    """``unmix-train --framework jax``: train with the options of :func:`unmix.train_cli.build_parser`."""
    return run_main(args, FRAMEWORK, lambda recipe: fit(args, recipe))
