"""``unmix-train --framework tf``: the run around the TensorFlow port's :class:`umx_tf.train.Trainer`.

:func:`main` (what :func:`unmix.train_cli.main` calls) splits the devices for ``--devices N``
(:func:`umx_tf.train.make_strategy`, before TensorFlow starts), refuses ``--device gpu`` without a GPU, and hands
:func:`fit` to :func:`unmix.train_cli.run_main`. :func:`fit` builds the model (Keras's initialisers seeded by the
recipe's seed, or ``--init``), the data sets (:func:`unmix.train_setup.make_datasets`), UMX's input statistics
(fresh runs), the ``Trainer`` (inside the strategy's scope), reads ``--resume``'s checkpoint back, then runs
:func:`unmix.train_loop.run_epochs` on the batches of :func:`unmix.train_setup.epoch_batches`.

HTDemucs (``--model htdemucs``): a fresh model starts from upstream's initialisation drawn with seeded NumPy
(:func:`core_spec.training.initial_weights`, as the JAX run: Keras's initialisers are not upstream's), trains at
``--samples`` samples whatever its segment, demucs 4's two Adam groups (the port's :class:`umx_tf.train.Trainer`),
validation by demucs 4's ``valid_apply``; the transformer's dropout at the config's ``t_dropout``, as upstream.

TensorFlow is first imported through :mod:`umx_tf` (its start-up log lines filtered,
:func:`core_spec.frameworks.quiet_import`); this module imports it again only inside its functions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from core_spec.epochs import steps_per_epoch
from core_spec.training import DemucsTrainConfig, HTDemucsTrainConfig, UMXTrainConfig, initial_weights
from umx_tf.build import from_canonical
from umx_tf.train import FRAMEWORK, Trainer, default_stft, make_strategy, set_statistics

from . import data
from .run_folder import RunFolder, RunState, log
from .train_cli import run_main
from .train_loop import train_epochs
from .train_setup import make_datasets, model_config

if TYPE_CHECKING:
    import tensorflow as tf

    from umx_tf.demucs import Demucs
    from umx_tf.htdemucs import HTDemucs
    from umx_tf.umx import OpenUnmix

__all__ = ["fit", "main"]

Recipe = UMXTrainConfig | DemucsTrainConfig | HTDemucsTrainConfig


def _default_jit() -> bool:
    """``UNMIX_TF_JIT=1`` XLA-compiles the whole training step (default off: the plain graph is faster on CPU,
    ``docs/training.md``)."""
    return os.environ.get("UNMIX_TF_JIT", "0").lower() in ("1", "true", "yes")


def _build_model(
    args: argparse.Namespace, recipe: Recipe
) -> tuple[OpenUnmix | Demucs | HTDemucs, dict[str, np.ndarray] | None, float]:
    """The model to train (Keras's initialisers, seeded by ``recipe.seed``; HTDemucs upstream's initialisation,
    :func:`core_spec.training.initial_weights`; or ``--init``), the canonical weights it was loaded from (``None``
    when Keras's initialisers drew them) and its sample rate."""
    import keras

    config, weights, rate = model_config(args, recipe)
    if weights is None and isinstance(recipe, HTDemucsTrainConfig):
        weights = initial_weights(config, recipe.seed)
    keras.utils.set_random_seed(recipe.seed)
    return from_canonical(config, weights), weights, rate


def fit(
    args: argparse.Namespace,
    recipe: Recipe,
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool | None = None,
) -> dict[str, Any]:
    """Train with ``recipe`` on ``args.root`` into ``args.out``: the model, its input statistics (UMX, fresh
    runs), the :class:`~umx_tf.train.Trainer` (inside the strategy's scope), ``--resume``, then
    :func:`unmix.train_loop.run_epochs`.

    Args:
        args: the options of :func:`unmix.train_cli.build_parser`.
        recipe: the recipe (:func:`unmix.train_cli.recipe_from_args`).
        strategy: replicate the step over the strategy's devices (:func:`umx_tf.train.make_strategy`).
        jit_compile: XLA-compile the training step (``None``: ``$UNMIX_TF_JIT``, default off).

    Returns:
        ``{"epochs", "steps", "best_loss", "history"}``.
    """
    quiet = bool(args.quiet)
    folder = RunFolder.for_recipe(args.out, FRAMEWORK, recipe)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model, weights, rate = _build_model(args, recipe)
        run = RunState.for_recipe(recipe)
        train_set, valid_set, train_tracks = make_datasets(args, recipe, model.config, rate)
        if isinstance(recipe, UMXTrainConfig) and weights is None and not args.resume:
            log(f"input statistics over {len(train_tracks)} training tracks", quiet)
            mean, scale = data.umx_statistics(train_tracks, model.config, default_stft(model.config, recipe))
            set_statistics(model, mean, scale)
        jit = _default_jit() if jit_compile is None else jit_compile
        trainer = Trainer(model, recipe, weights=weights, strategy=strategy, jit_compile=jit, dropout=True)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    steps = steps_per_epoch(len(train_set), recipe.batch_size, replicas)

    rng = np.random.default_rng(recipe.seed)
    if args.resume:
        trainer.load_checkpoint(folder, run, rng)
        log(f"resumed {folder.checkpoint} at epoch {run.epoch}, step {run.step}", quiet)
    return train_epochs(trainer, run, folder, args, recipe, train_set, valid_set, rng, steps, quiet=quiet)


def main(args: argparse.Namespace) -> int:
    """``unmix-train --framework tf``: train with the options of :func:`unmix.train_cli.build_parser`
    (:func:`unmix.train_cli.run_main`).

    ``--devices N`` replicates the step with ``tf.distribute.MirroredStrategy`` over N GPUs (``--device gpu``) or N
    logical CPU devices (the host's threads split; the devices are configured here, before TensorFlow starts).
    ``--device gpu`` without a GPU exits with status 1 before the run folder is checked.
    """
    strategy = make_strategy(args.devices, args.device)  # first: logical devices must precede any TensorFlow op
    import tensorflow as tf

    if args.device == "gpu" and not tf.config.list_logical_devices("GPU"):
        print("unmix-train: --device gpu: TensorFlow sees no GPU", file=sys.stderr)
        return 1

    def _fit(recipe: Recipe) -> dict[str, Any]:
        placement = tf.device("/CPU:0") if args.device == "cpu" and strategy is None else contextlib.nullcontext()
        with placement:
            return fit(args, recipe, strategy)

    return run_main(args, FRAMEWORK, _fit)
