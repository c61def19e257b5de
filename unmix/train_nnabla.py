"""``unmix-train --framework nnabla``: a training run of the NNabla port (:mod:`umx_nnabla.train`).

:func:`main` makes the data-parallel communicator (``--devices N``: :class:`umx_nnabla.train.Communicator`, one MPI
process per GPU, which needs ``nnabla-ext-cuda`` and ``mpirun -n N``; on the CPU ``--devices > 1`` stops with
:class:`umx_nnabla.train.DataParallelUnavailable` before any data is read) or the context of ``--device``, then
:func:`unmix.train_cli.run_main` checks the run folder (rank 0 only) and calls :func:`fit` inside that context.

:func:`fit` builds what the port's :class:`umx_nnabla.train.Trainer` steps: the model (``--init``'s weights, else
upstream's initialisation seeded by the recipe), the data (:func:`unmix.train_setup.make_datasets`), UMX's input
statistics, the training graph (built once on a first batch, which creates the LSTMs' ``bias_ih`` / ``bias_hh``),
the optimiser, ``--resume``'s checkpoint, rank 0's weights broadcast to every replica; then
:func:`unmix.train_loop.run_epochs` runs the epochs. HTDemucs (``--model htdemucs``) trains at ``--samples``
samples whatever its segment, with demucs 4's two Adam groups and its ``valid_apply`` validation (the port's
:class:`umx_nnabla.train.HTDemucsStep`, :func:`umx_nnabla.train.make_optimizer`), with the transformer's dropout
at the config's ``t_dropout``, as upstream.

NNabla lives in ``.venv-nnabla``: :func:`unmix.train_cli.main` reruns itself there, and this module imports NNabla
and the port only when a run starts, so it imports anywhere.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from core_spec.configs import HTDemucsConfig, STFTConfig, UMXConfig
from core_spec.epochs import steps_per_epoch
from core_spec.training import (
    DemucsTrainConfig,
    HTDemucsTrainConfig,
    UMXTrainConfig,
    initial_weights,
    shard_batch,
    train_stft,
)

from . import data
from .run_folder import RunFolder, RunState, log
from .train_cli import run_main
from .train_loop import train_epochs
from .train_setup import make_datasets, model_config

if TYPE_CHECKING:
    from umx_nnabla import Demucs, HTDemucs, OpenUnmix
    from umx_nnabla.train import Communicator

__all__ = ["fit", "main"]

Recipe = UMXTrainConfig | DemucsTrainConfig | HTDemucsTrainConfig


def _build_model(
    args: argparse.Namespace, recipe: Recipe
) -> tuple[OpenUnmix | Demucs | HTDemucs, STFTConfig | None, float, bool]:
    """The model to train (``--init``'s weights, else :func:`core_spec.training.initial_weights` seeded by
    ``recipe.seed``), its training STFT (UMX), its sample rate, and whether its weights came from a file."""
    from umx_nnabla import Demucs, HTDemucs, OpenUnmix, load_weights

    config, weights, rate = model_config(args, recipe)
    model: OpenUnmix | Demucs | HTDemucs
    if isinstance(config, UMXConfig):
        model = OpenUnmix.from_config(config)
    elif isinstance(config, HTDemucsConfig):
        model = HTDemucs.from_config(config)
    else:
        model = Demucs.from_config(config)
    stft_config = train_stft(config, recipe.stft_center) if isinstance(config, UMXConfig) else None
    from_file = weights is not None
    load_weights(model, weights if from_file else initial_weights(config, recipe.seed))
    return model, stft_config, rate, from_file


def fit(args: argparse.Namespace, recipe: Recipe, comm: Communicator | None = None) -> dict[str, Any]:
    """Train with ``recipe`` on ``args.root`` into ``args.out`` (one replica of ``comm``'s; rank 0 writes):
    :func:`unmix.train_loop.run_epochs` with the port's :class:`umx_nnabla.train.Trainer`. Call it inside the
    NNabla context to train in (:func:`main` does).

    Returns ``{"epochs", "steps", "best_loss", "history"}``.
    """
    from umx_nnabla.train import (
        FRAMEWORK,
        Trainer,
        batch_shape,
        is_trainable,
        load_checkpoint,
        make_optimizer,
        make_step,
        set_statistics,
        sync_lstm_biases,
    )

    rank, world_size = (comm.rank, comm.size) if comm else (0, 1)
    quiet = bool(args.quiet) or rank != 0
    folder = RunFolder.for_recipe(args.out, FRAMEWORK, recipe)
    model, stft_config, rate, from_file = _build_model(args, recipe)
    run = RunState.for_recipe(recipe)
    train_set, valid_set, train_tracks = make_datasets(args, recipe, model.config, rate)
    steps = steps_per_epoch(len(train_set), recipe.batch_size, world_size)

    rng = np.random.default_rng(recipe.seed)
    if isinstance(recipe, UMXTrainConfig) and not from_file and not args.resume:
        log(f"input statistics over {len(train_tracks)} training tracks", quiet)
        mean, scale = data.umx_statistics(train_tracks, model.config, stft_config, center=recipe.stft_center)
        set_statistics(model, mean, scale)
    step = make_step(model, recipe, stft_config)
    sample = shard_batch(next(iter(data.batches(train_set, recipe.batch_size, np.random.default_rng(0)))), 0,
                         world_size)  # fmt: skip
    step.graph(batch_shape(step, sample, recipe))  # creates the LSTMs' bias_ih / bias_hh if needed
    sync_lstm_biases(model)
    optimizer = make_optimizer(model, recipe)
    if args.resume:
        load_checkpoint(model, optimizer, folder, run, rng)
        log(f"resumed {folder.checkpoint} at epoch {run.epoch}, step {run.step}", quiet)
    if comm is not None:
        comm.broadcast(list(model.get_parameters(grad_only=False).values()))
    buffers = [v for k, v in model.get_parameters(grad_only=False).items() if not is_trainable(k)]
    trainer = Trainer(model, step, optimizer, recipe, stft_config, comm, rank, buffers)
    return train_epochs(
        trainer,
        run,
        folder,
        args,
        recipe,
        train_set,
        valid_set,
        rng,
        steps,
        quiet=quiet,
        rank=rank,
        world_size=world_size,
    )


def main(args: argparse.Namespace) -> int:
    """``unmix-train --framework nnabla``: train with the options of :func:`unmix.train_cli.build_parser`
    (float32; ``--device gpu`` needs ``nnabla-ext-cuda``; ``--devices N`` needs it and MPI, see
    :data:`umx_nnabla.train.DATA_PARALLEL_HELP`): :func:`unmix.train_cli.run_main`, the communicator and the context
    made first (a replica other than rank 0 does not check the run folder)."""
    import nnabla as nn

    from umx_nnabla import device_context
    from umx_nnabla.train import FRAMEWORK, Communicator, DataParallelUnavailable

    held: dict[str, Any] = {}

    def prepare(recipe: Recipe) -> bool:
        comm = Communicator(args.devices, args.device) if args.devices > 1 else None
        held["comm"] = comm
        held["ctx"] = comm.ctx if comm else device_context("gpu" if args.device in ("gpu", "cuda") else args.device)
        return comm is None or comm.rank == 0

    def _fit(recipe: Recipe) -> dict[str, Any]:
        with nn.context_scope(held["ctx"]):
            return fit(args, recipe, held["comm"])

    errors = (DataParallelUnavailable, FileExistsError, FileNotFoundError, RuntimeError, ValueError)
    return run_main(args, FRAMEWORK, _fit, errors, prepare)
