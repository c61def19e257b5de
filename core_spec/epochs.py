"""The epoch loop of ``unmix-train``, written once for the four ports (framework-neutral, NumPy only).

A port's ``train.py`` wraps its model, optimiser and replicas in a ``Trainer`` that implements
:class:`EpochTrainer` (subclassing :class:`TrainerBase` for the two methods most ports do not need), builds the
:class:`~core_spec.run_folder.RunState` (``--resume``: loaded with the trainer's checkpoint) and hands both to
:func:`run_epochs`, which makes every decision of a run the same way in every framework::

    while run.epoch < epochs and not done:           # done: --max-steps reached
        trainer.set_learning_rate(run.lr)           # the plateau schedule's rate (UMX) or the recipe's
        trainer.start_epoch(run.epoch)              # e.g. NNabla reseeds its dropout generator
        for batch in batches(run.epoch):            # tqdm bar
            loss = trainer.step(batch)              # one optimiser step
            run.step += 1; stop if run.done(max_steps)
        train = trainer.mean_over_replicas(mean loss of the epoch's steps)
        valid = trainer.evaluate(valid_set, quiet)  # same value on every replica
        run.end_epoch(...)                          # schedule, early stopping, best loss, history row
        rank 0: trainer.save_best(...) if this is the best model (or none is saved yet); trainer.save_checkpoint(...)
        progress(row); log the epoch; stop early if early stopping says so

The best model's files are written by :func:`save_best` (canonical + native), called from the port's
``Trainer.save_best`` with its canonical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .run_folder import RunFolder, RunState, log

__all__ = ["EpochTrainer", "TrainerBase", "run_epochs", "save_best", "steps_per_epoch"]


@runtime_checkable
class EpochTrainer(Protocol):
    """What :func:`run_epochs` calls, in this order within an epoch.

    ``step`` and ``evaluate`` return Python floats (the port converts its tensors). In a data-parallel run every
    replica runs the loop; ``step`` averages the gradients over the replicas, ``mean_over_replicas`` averages the
    epoch's training loss, and ``evaluate`` returns the same validation loss on every replica (the port decides
    which replicas validate and broadcasts), so that every replica takes the same decisions.
    """

    def set_learning_rate(self, lr: float) -> None:
        """The learning rate of the epoch's steps."""

    def start_epoch(self, epoch: int) -> None:
        """Called before the epoch's first batch is drawn (``epoch``: 0-based)."""

    def step(self, batch: Any) -> float:
        """One optimiser step on ``batch`` (what ``batches`` yields); returns the batch's loss."""

    def mean_over_replicas(self, value: float) -> float:
        """The mean of ``value`` over the data-parallel replicas."""

    def evaluate(self, valid_set: Any, quiet: bool = False) -> float:
        """The validation loss of the current weights on ``valid_set`` (``quiet``: no progress bar)."""

    def save_best(self, folder: RunFolder, run: RunState, valid_loss: float) -> None:
        """Write the best model (:func:`save_best`); ``run`` has already booked the epoch."""

    def save_checkpoint(self, folder: RunFolder, run: RunState, rng: np.random.Generator) -> None:
        """Write ``folder.checkpoint`` (the port's weights and optimiser state, then ``run.save(folder, rng)``)."""


class TrainerBase:
    """Defaults of :class:`EpochTrainer` for a single-process trainer: :meth:`start_epoch` does nothing,
    :meth:`mean_over_replicas` returns its value."""

    def start_epoch(self, epoch: int) -> None:
        return None

    def mean_over_replicas(self, value: float) -> float:
        return value


def steps_per_epoch(nb_examples: int, batch_size: int, replicas: int = 1, unit: str = "replicas") -> int:
    """The number of full batches of ``batch_size`` in ``nb_examples`` training excerpts (the last partial batch
    is dropped).

    Raises:
        ValueError: ``batch_size`` does not divide over ``replicas`` (``unit`` names them in the message:
            ``"replicas"``, JAX ``"devices"``), or there are fewer excerpts than one batch.
    """
    if batch_size % replicas:
        raise ValueError(f"--batch-size {batch_size} does not split over {replicas} {unit}")
    steps = nb_examples // batch_size
    if steps == 0:
        raise ValueError(f"{nb_examples} training excerpts make no batch of {batch_size}")
    return steps


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
            :func:`core_spec.training.epoch_batches`); each goes to ``trainer.step`` as it is.
        valid_set: what ``trainer.evaluate`` validates on.
        epochs: the recipe's number of epochs.
        steps_per_epoch: the progress bar's length (:func:`steps_per_epoch`).
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
        valid_loss = trainer.evaluate(valid_set, quiet)
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


def save_best(
    folder: RunFolder,
    run: RunState,
    framework: str,
    valid_loss: float,
    weights: Mapping[str, np.ndarray],
    config: Any,
    save_native: Callable[..., Any],
    **versions: str,
) -> None:
    """The best model of a run: ``<name>.safetensors`` + ``.json`` (canonical weights, with
    :meth:`RunState.provenance` and the framework's ``versions``, e.g. ``torch=torch.__version__``) and
    ``<name>-<framework>.<ext>`` (the port's ``save_native(path, weights, config, force=True)``), both overwritten.

    ``weights``: the model's canonical arrays (``{name: array}``, canonical layouts); ``config``: its
    ``UMXConfig`` / ``DemucsConfig``.
    """
    from .canonical import save_canonical

    provenance = run.provenance(framework, valid_loss, **versions)
    save_canonical(folder.best, weights, config, provenance=provenance, force=True)
    save_native(folder.native, weights, config, force=True)
