"""The contract between a port's ``Trainer`` and the epoch loop of ``unmix-train`` (framework-neutral, NumPy only).

A port's ``train.py`` wraps its model, optimiser and replicas in a ``Trainer`` that implements
:class:`EpochTrainer` (subclassing :class:`TrainerBase` for the two methods most ports do not need). The tool
(:func:`unmix.train_loop.run_epochs`, one loop for the four ports) builds the run's bookkeeping (``--resume``: loaded
with the trainer's checkpoint) and steps the trainer, making every decision of a run the same way in every
framework::

    while run.epoch < epochs and not done:           # done: --max-steps reached
        trainer.set_learning_rate(run.lr)           # the plateau schedule's rate (UMX) or the recipe's
        trainer.start_epoch(run.epoch)              # e.g. NNabla reseeds its dropout generator
        for batch in batches(run.epoch):            # progress bar
            loss = trainer.step(batch)              # one optimiser step
            run.step += 1; stop if run.done(max_steps)
        train = trainer.mean_over_replicas(mean loss of the epoch's steps)
        valid = trainer.evaluate(valid_set, progress)  # same value on every replica
        run.end_epoch(...)                          # schedule, early stopping, best loss, history row
        rank 0: trainer.save_best(...) if this is the best model (or none is saved yet); trainer.save_checkpoint(...)
        progress(row); log the epoch; stop early if early stopping says so

The best model's files are written by :func:`save_best` (canonical + native), called from the port's
``Trainer.save_best`` with its canonical weights. The run folder and the run's state are the tool's
(``unmix.run_folder.RunFolder`` and ``RunState``); a port sees them only through the :class:`RunFiles` and
:class:`RunRecord` protocols below, and never imports the tool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "EpochTrainer",
    "Progress",
    "RunFiles",
    "RunRecord",
    "TrainerBase",
    "no_progress",
    "save_best",
    "steps_per_epoch",
]

# ``progress(items, total, desc)``: the items, with a progress bar drawn by the caller (the tool) or not at all
Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


def no_progress(items: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    """A :data:`Progress` that shows nothing."""
    return items


class RunFiles(Protocol):
    """Where a run's files go (the tool's run folder): what a ``Trainer`` writes through."""

    @property
    def best(self) -> Path:
        """Stem of the best model's canonical file (``<out>/<name>``)."""

    @property
    def native(self) -> Path:
        """Stem of the best model in the framework's own format (``<out>/<name>-<framework>``)."""

    @property
    def checkpoint(self) -> Path:
        """The run's checkpoint folder in its framework (``<out>/checkpoint-<name>-<framework>``)."""


class RunRecord(Protocol):
    """The run's bookkeeping (the tool's run state): what a ``Trainer`` saves beside its checkpoint."""

    def provenance(self, framework: str, valid_loss: float, **versions: str) -> dict[str, Any]:
        """The provenance stored with the best model."""

    def save(self, folder: Any, rng: np.random.Generator, **extra: Any) -> None:
        """Write ``state.json`` into ``folder.checkpoint`` (``extra``: the port's own entries)."""

    def load(self, folder: Any, rng: np.random.Generator) -> dict[str, Any]:
        """Read ``state.json`` back (``rng``'s state restored); the whole dict, the port's entries included."""


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

    def evaluate(self, valid_set: Any, progress: Progress = no_progress) -> float:
        """The validation loss of the current weights on ``valid_set`` (its items through ``progress``)."""

    def save_best(self, folder: RunFiles, run: RunRecord, valid_loss: float) -> None:
        """Write the best model (:func:`save_best`); ``run`` has already booked the epoch."""

    def save_checkpoint(self, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
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


def save_best(
    folder: RunFiles,
    run: RunRecord,
    framework: str,
    valid_loss: float,
    weights: Mapping[str, np.ndarray],
    config: Any,
    save_native: Callable[..., Any],
    **versions: str,
) -> None:
    """The best model of a run: ``<name>.safetensors`` + ``.json`` (canonical weights, with
    :meth:`RunRecord.provenance` and the framework's ``versions``, e.g. ``torch=torch.__version__``) and
    ``<name>-<framework>.<ext>`` (the port's ``save_native(path, weights, config, force=True)``), both overwritten.

    ``weights``: the model's canonical arrays (``{name: array}``, canonical layouts); ``config``: its
    ``UMXConfig`` / ``DemucsConfig``.
    """
    from .canonical import save_canonical

    provenance = run.provenance(framework, valid_loss, **versions)
    save_canonical(folder.best, weights, config, provenance=provenance, force=True)
    save_native(folder.native, weights, config, force=True)
