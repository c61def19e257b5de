"""``unmix-train --framework torch``: the options of :func:`unmix.train_cli.build_parser` turned into a run of the
PyTorch port's :class:`umx_torch.train.Trainer` under :func:`unmix.train_loop.run_epochs`.

- :func:`fit`: one replica's run: the model (upstream's initialisation after ``torch.manual_seed(recipe.seed)``,
  or ``--init``; UMX with upstream's LSTM dropout; HTDemucs with its config's transformer dropout ``t_dropout``,
  trained at ``--samples`` samples whatever its ``segment``), the datasets
  (:func:`unmix.train_setup.make_datasets`), UMX's input statistics (:func:`unmix.data.umx_statistics`, rank 0,
  fresh runs only), the optimiser or the ``--resume`` checkpoint, the DDP wrapper with several replicas, then the
  loop over :func:`unmix.train_setup.epoch_batches`;
- :func:`main`: :func:`unmix.train_cli.run_main` around :func:`fit`; ``--devices N`` starts N processes with
  :func:`torch.multiprocessing.spawn` (``gloo`` on the CPU, ``nccl`` with ``--device gpu``; a file store in a
  temporary folder for the rendezvous; each process gets ``threads / N`` intra-op threads), rank 0 writes the files.

The numerics (losses, optimiser, steps, validation, checkpoint files, data-parallel arithmetic) are the port's
(:mod:`umx_torch.train`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

from core_spec.configs import STFTConfig, UMXConfig
from core_spec.epochs import steps_per_epoch
from core_spec.training import Recipe, UMXTrainConfig, train_stft
from umx_torch.build import from_canonical
from umx_torch.layers import set_lstm_dropout
from umx_torch.train import (
    FRAMEWORK,
    Trainer,
    data_parallel,
    init_process_group,
    load_checkpoint,
    make_optimizer,
    set_statistics,
)

from .run_folder import RunFolder, RunState, log, read_state
from .train_cli import run_main
from .train_loop import train_epochs
from .train_setup import make_datasets, model_config

__all__ = ["fit", "main"]


def fit(args: argparse.Namespace, recipe: Recipe, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Train with ``recipe`` on ``args.root`` into ``args.out`` (one replica of ``world_size``; rank 0 writes):
    the model, its statistics, the optimiser (or the ``--resume`` checkpoint), then
    :func:`unmix.train_loop.run_epochs`.

    Returns ``{"epochs", "steps", "best_loss", "history"}``.
    """
    from . import data

    quiet = bool(args.quiet) or rank != 0
    folder = RunFolder.for_recipe(args.out, FRAMEWORK, recipe)
    device = _device(args.device, rank)
    model, stft_config, rate, from_file = _build_model(args, recipe)
    run = RunState.for_recipe(recipe)
    if isinstance(recipe, UMXTrainConfig):
        set_lstm_dropout(model, model.config.lstm_dropout)  # upstream's OpenUnmix trains with it
    train_set, valid_set, train_tracks = make_datasets(args, recipe, model.config, rate)
    steps = steps_per_epoch(len(train_set), recipe.batch_size, world_size)

    rng = np.random.default_rng(recipe.seed)
    if isinstance(recipe, UMXTrainConfig) and not from_file and not args.resume and rank == 0:
        log(f"input statistics over {len(train_tracks)} training tracks", quiet)
        mean, scale = data.umx_statistics(train_tracks, model.config, stft_config, center=recipe.stft_center)
        set_statistics(model, mean, scale)
    model.to(device)
    optimizer = make_optimizer(model, recipe)
    if args.resume:
        load_checkpoint(model, optimizer, folder, run, rng)
        log(f"resumed {folder.checkpoint} at epoch {run.epoch}, step {run.step}", quiet)
    net: nn.Module = model
    if world_size > 1:  # broadcasts rank 0's parameters and buffers (the statistics above) to every replica
        net = data_parallel(model, device)

    trainer = Trainer(model, net, optimizer, recipe, stft_config, rank, world_size, device)
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
    """``unmix-train --framework torch``: train with the options of :func:`unmix.train_cli.build_parser`
    (:func:`unmix.train_cli.run_main`); ``--devices N`` spawns N DDP processes."""

    def train(recipe: Recipe) -> dict[str, Any]:
        if args.devices <= 1:
            return fit(args, recipe)
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory(prefix="umx-torch-ddp-") as tmp:
            mp.spawn(_fit_worker, args=(args.devices, os.path.join(tmp, "store"), args, recipe), nprocs=args.devices)
        state = read_state(RunFolder.for_recipe(args.out, FRAMEWORK, recipe))
        return {"epochs": state["epoch"], "steps": state["step"], "best_loss": state["best_loss"]}

    return run_main(args, FRAMEWORK, train)


def _device(name: str, rank: int) -> torch.device:
    """``--device``: ``cpu``, or ``gpu`` / ``cuda`` (replica ``rank`` on GPU ``rank``)."""
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device gpu: CUDA is not available")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(name)


def _build_model(args: argparse.Namespace, recipe: Recipe) -> tuple[nn.Module, STFTConfig | None, float, bool]:
    """The model to train (upstream's initialisation seeded by ``recipe.seed``, or ``--init``), its STFT (UMX), its
    sample rate, and whether its weights came from a file."""
    config, weights, rate = model_config(args, recipe)
    torch.manual_seed(recipe.seed)
    model = from_canonical(config, weights)
    stft_config = train_stft(config, recipe.stft_center) if isinstance(config, UMXConfig) else None
    return model, stft_config, rate, weights is not None


def _fit_worker(rank: int, world_size: int, store: str, args: argparse.Namespace, recipe: Recipe) -> None:
    """One replica of ``--devices N`` (a :func:`torch.multiprocessing.spawn` process): join the group, :func:`fit`."""
    import torch.distributed as dist

    torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    backend = "nccl" if args.device in ("gpu", "cuda") else "gloo"
    init_process_group(rank, world_size, store, backend)
    try:
        fit(args, recipe, rank, world_size)
        dist.barrier()  # every replica done before any tears the gloo group down (a peer mid-collective aborts)
    finally:
        dist.destroy_process_group()
