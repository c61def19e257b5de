"""The epoch loop of ``unmix-train``, written once for the four ports: it steps a port's ``Trainer``
(:class:`core_spec.epochs.EpochTrainer`, where the loop is drawn) and makes every decision of a run the same way in
every framework, with progress bars and log lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from core_spec.epochs import EpochTrainer, Progress

from .run_folder import RunFolder, RunState, log

__all__ = ["progress_bars", "run_epochs", "train_epochs"]


def progress_bars(quiet: bool) -> Progress:
    """A :data:`core_spec.epochs.Progress` that draws a tqdm bar (none when ``quiet``)."""
    from tqdm import tqdm

    def progress(items: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
        return tqdm(items, total=total, desc=desc, unit="track", leave=False, disable=quiet)

    return progress


def run_epochs(
    trainer: EpochTrainer,
    run: RunState,
    folder: RunFolder,
    batches: Callable[[int], Iterable[Any]],
    *,
    valid_set: Any,
    epochs: int,
    steps_per_epoch: int,
    max_steps: int | None,
    rng: np.random.Generator,
    quiet: bool,
    rank: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train from ``run.epoch`` until ``epochs`` epochs are booked, ``max_steps`` optimiser steps are taken
    (checked after each step; the epoch that reaches it still validates and saves) or early stopping stops.

    Args:
        trainer: the port's :class:`EpochTrainer`.
        run: the run's bookkeeping (fresh, or loaded by ``--resume``); updated in place.
        folder: the run folder (``folder.best_file`` tells whether a best model was saved yet).
        batches: ``batches(epoch)`` yields the epoch's training batches (drawn lazily from ``rng``:
            :func:`unmix.train_setup.epoch_batches`); each goes to ``trainer.step`` as it is.
        valid_set: what ``trainer.evaluate`` validates on.
        epochs: the recipe's number of epochs.
        steps_per_epoch: the progress bar's length (:func:`core_spec.epochs.steps_per_epoch`).
        max_steps: ``--max-steps`` (``None``: no limit).
        rng: the generator of the batches, saved with each checkpoint.
        quiet: no progress bars, no log lines (a port passes ``True`` on replicas other than rank 0).
        rank: the replica; only rank 0 writes files.
        progress: called with each epoch's history row, after the checkpoint.

    Returns:
        :meth:`RunState.result`: ``{"epochs", "steps", "best_loss", "history"}``.
    """
    from tqdm import tqdm

    done = run.done(max_steps)
    while run.epoch < epochs and not done:
        started = time.time()
        lr = run.lr
        trainer.set_learning_rate(lr)
        trainer.start_epoch(run.epoch)
        total, count = 0.0, 0
        bar = tqdm(batches(run.epoch), total=steps_per_epoch, desc=f"[{run.epoch:03d}] train", unit="batch",
                   leave=False, disable=quiet)  # fmt: skip
        for batch in bar:
            loss = trainer.step(batch)
            total, count, run.step = total + loss, count + 1, run.step + 1
            bar.set_postfix(loss=f"{total / count:.4g}")
            if done := run.done(max_steps):
                break
        bar.close()
        train_loss = trainer.mean_over_replicas(total / max(count, 1))
        valid_loss = trainer.evaluate(valid_set, progress_bars(quiet))
        row, stop, is_best = run.end_epoch(train_loss, valid_loss, lr, count, time.time() - started)
        if rank == 0:
            if is_best or not folder.best_file.exists():
                trainer.save_best(folder, run, valid_loss)
            trainer.save_checkpoint(folder, run, rng)
        if progress is not None:
            progress(row)
        log(run.epoch_message(row), quiet)
        if stop:
            log(f"early stopping after {run.epoch} epochs", quiet)
            break
    return run.result()


def train_epochs(
    trainer: EpochTrainer,
    run: RunState,
    folder: RunFolder,
    args: Any,
    recipe: Any,
    train_set: Any,
    valid_set: Any,
    rng: np.random.Generator,
    steps_per_epoch: int,
    *,
    quiet: bool,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """:func:`run_epochs` as every framework's driver calls it: the recipe's epochs over
    :func:`unmix.train_setup.epoch_batches` of ``train_set`` (replica ``rank``'s share of ``world_size``), drawn
    from ``rng``, with ``--max-steps`` from ``args``."""
    from .train_setup import epoch_batches

    return run_epochs(
        trainer,
        run,
        folder,
        lambda epoch: epoch_batches(train_set, recipe, rng, epoch, rank, world_size),
        valid_set=valid_set,
        epochs=recipe.epochs,
        steps_per_epoch=steps_per_epoch,
        max_steps=args.max_steps,
        rng=rng,
        quiet=quiet,
        rank=rank,
        progress=progress,
    )
