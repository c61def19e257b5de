"""The run folder of ``unmix-train`` and the bookkeeping of a training run, framework-neutral (NumPy only).

Every port's ``train.py`` writes the same layout (:mod:`unmix.train_cli` documents it) through
:class:`RunFolder`, keeps its epoch, step, loss history, schedule and early stopping in a :class:`RunState`, and
saves that state (with the NumPy generator that draws the batches and augmentations) as ``state.json`` with
:meth:`RunState.save` / :meth:`RunState.load`, so that ``--resume`` reads back what any port wrote::

    <out>/<name>.safetensors + <name>.json     best model, canonical weights (RunFolder.best)
    <out>/<name>-<framework>.<ext>             best model, the framework's own format (RunFolder.native)
    <out>/checkpoint-<name>-<framework>/       last epoch (RunFolder.checkpoint)
        state.json                             RunState + rng state (RunFolder.state_file)
        ...                                    the port's weights and optimiser state

``<name>`` is the UMX target (``vocals``, ...) or ``demucs`` (:func:`run_name`). Every file of a run carries its
name, so one folder holds several runs, as upstream's training folder holds one ``<target>.pth`` per target: a
second target trained into the folder of the first is a new run (no ``--force``), and only the files of the run's
own name count as its results (:meth:`RunFolder.check`). Such a folder of Open-Unmix targets is a separator for
``unmix-separate`` (its ``<target>.safetensors`` files).

Folders written before the checkpoint carried the name (``<out>/checkpoint-<framework>/``, one run a folder) still
resume: :meth:`RunFolder.for_recipe` takes that checkpoint for the run its ``state.json`` names when the run has no
``checkpoint-<name>-<framework>/``, and the run goes on writing it there (:attr:`RunFolder.legacy`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.training import DemucsTrainConfig, EarlyStopping, ReduceLROnPlateau, UMXTrainConfig

__all__ = [
    "RunFolder",
    "RunState",
    "atomic_write",
    "check_out",
    "jsonable",
    "log",
    "run_name",
]

Recipe = UMXTrainConfig | DemucsTrainConfig


def run_name(recipe: Recipe) -> str:
    """The file stem of a run's best model: the UMX target, else the model (``"demucs"``, ``"htdemucs"``)."""
    return recipe.target if isinstance(recipe, UMXTrainConfig) else recipe.model


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars turned into Python numbers, tuples into lists and keys into strings (for JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def log(message: str, quiet: bool) -> None:
    """Print ``message`` on stderr unless ``quiet``."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def atomic_write(path: str | Path, data: bytes | str | Callable[[str], Any]) -> None:
    """Write ``path`` all at once: to a temporary file beside it (same suffix, for writers that look at it), then
    ``os.replace``. ``data``: bytes, text, or a function that writes the file whose name it is given."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    elif isinstance(data, str):
        tmp.write_text(data)
    else:
        data(str(tmp))
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The paths of a run folder for one framework and one model name (see the module docstring).

    ``legacy``: the run's checkpoint is the old layout's ``checkpoint-<framework>/`` (:meth:`for_recipe` decides).
    """

    out: Path
    framework: str
    name: str
    legacy: bool = False

    @classmethod
    def for_recipe(cls, out: str | Path, framework: str, recipe: Recipe) -> RunFolder:
        """The run folder of ``recipe`` in ``out``; ``legacy`` when ``out`` holds this run's checkpoint in the old
        layout only (:attr:`legacy_checkpoint` whose ``state.json`` names this run, no :attr:`checkpoint`)."""
        folder = cls(Path(out), framework, run_name(recipe))
        if not folder.checkpoint.exists() and _state_name(folder.legacy_checkpoint) == folder.name:
            return dataclasses.replace(folder, legacy=True)
        return folder

    @property
    def best(self) -> Path:
        """Stem of the canonical best model (``save_canonical`` adds ``.safetensors`` and ``.json``)."""
        return self.out / self.name

    @property
    def best_file(self) -> Path:
        return self.out / f"{self.name}.safetensors"

    @property
    def native(self) -> Path:
        """Stem of the best model in the framework's own format (the port's ``save_native`` adds the suffix)."""
        return self.out / f"{self.name}-{self.framework}"

    @property
    def checkpoint(self) -> Path:
        """The run's checkpoint folder: ``checkpoint-<name>-<framework>/`` (``legacy``: ``checkpoint-<framework>/``)."""
        return self.legacy_checkpoint if self.legacy else self.out / f"checkpoint-{self.name}-{self.framework}"

    @property
    def legacy_checkpoint(self) -> Path:
        """Where runs written before the checkpoint carried the run's name kept it: ``checkpoint-<framework>/``."""
        return self.out / f"checkpoint-{self.framework}"

    @property
    def state_file(self) -> Path:
        return self.checkpoint / "state.json"

    def check(self, resume: bool, force: bool) -> None:
        """Refuse a folder that already has results of this run (its best model or its checkpoint; other names'
        files are other runs) unless ``resume`` or ``force``; ``resume`` needs a ``state.json``. Creates the folder.

        Raises:
            FileExistsError: results are there and neither ``--resume`` nor ``--force`` was given.
            FileNotFoundError: ``--resume`` without ``checkpoint-<name>-<framework>/state.json``.
        """
        results = [p for p in (self.best_file, self.checkpoint) if p.exists()]
        if results and not (resume or force):
            raise FileExistsError(
                f"{self.out} already holds {[str(p) for p in results]} (the {self.name!r} run of {self.framework}): "
                "pass --resume to continue it or --force to start it again"
            )
        if resume and not self.state_file.exists():
            other = _state_name(self.legacy_checkpoint)
            held = f"; {self.legacy_checkpoint} holds the {other!r} run" if other not in (None, self.name) else ""
            raise FileNotFoundError(
                f"--resume: {self.state_file} does not exist{held}: leave out --resume to start the {self.name!r} run, "
                "or give the --out, --framework and --model / --target of the run to continue"
            )
        self.out.mkdir(parents=True, exist_ok=True)


def _state_name(checkpoint: Path) -> str | None:
    """The run name in ``checkpoint/state.json`` (``None``: no readable ``state.json`` there)."""
    try:
        name = json.loads((checkpoint / "state.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def check_out(args: argparse.Namespace, recipe: Recipe, framework: str) -> RunFolder:
    """:meth:`RunFolder.check` for the options ``--out``, ``--resume``, ``--force``; returns the folder."""
    folder = RunFolder.for_recipe(args.out, framework, recipe)
    folder.check(bool(args.resume), bool(getattr(args, "force", False)))
    return folder


@dataclasses.dataclass
class RunState:
    """What a run needs besides the model and optimiser: epoch, step, best validation loss, the loss history, and
    (UMX) the plateau schedule and early stopping of :mod:`core_spec.training`. Saved in ``state.json``."""

    name: str
    recipe: Recipe
    epoch: int = 0
    step: int = 0
    best_loss: float = math.inf
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    scheduler: ReduceLROnPlateau | None = None
    stopper: EarlyStopping | None = None

    @classmethod
    def for_recipe(cls, recipe: Recipe) -> RunState:
        """A fresh run: UMX gets upstream's ``ReduceLROnPlateau`` and ``EarlyStopping``; Demucs neither."""
        run = cls(name=run_name(recipe), recipe=recipe)
        if isinstance(recipe, UMXTrainConfig):
            run.scheduler = ReduceLROnPlateau(
                recipe.lr, recipe.lr_decay_gamma, recipe.lr_decay_patience, recipe.lr_decay_cooldown
            )
            run.stopper = EarlyStopping(recipe.patience)
        return run

    @property
    def lr(self) -> float:
        """The learning rate of the coming epoch."""
        return self.scheduler.lr if self.scheduler is not None else self.recipe.lr

    def done(self, max_steps: int | None) -> bool:
        """Whether ``--max-steps`` is reached."""
        return max_steps is not None and self.step >= max_steps

    def end_epoch(
        self, train_loss: float, valid_loss: float, lr: float, steps: int, duration: float
    ) -> tuple[dict[str, Any], bool, bool]:
        """Book an epoch: step the schedule and early stopping (UMX) with ``valid_loss``, keep the best loss, append
        the history row, count the epoch. Returns ``(row, stop, is_best)``: ``is_best`` means save the model."""
        if self.stopper is not None:
            self.scheduler.step(valid_loss)
            stop = self.stopper.step(valid_loss)
            is_best = self.stopper.is_best
        else:
            stop, is_best = False, valid_loss < self.best_loss
        if is_best:
            self.best_loss = valid_loss
        row = {"epoch": self.epoch, "train": train_loss, "valid": valid_loss, "lr": lr, "steps": steps,
               "duration": duration}  # fmt: skip
        self.history.append(row)
        self.epoch += 1
        return row, stop, is_best

    def epoch_message(self, row: dict[str, Any]) -> str:
        return (
            f"epoch {row['epoch']:03d}: train={row['train']:.6g} valid={row['valid']:.6g} best={self.best_loss:.6g} "
            f"lr={row['lr']:.3g} ({row['duration']:.1f} s)"
        )

    def result(self) -> dict[str, Any]:
        """What ``fit`` returns: ``{"epochs", "steps", "best_loss", "history"}``."""
        return {"epochs": self.epoch, "steps": self.step, "best_loss": self.best_loss, "history": self.history}

    def provenance(self, framework: str, valid_loss: float, **versions: str) -> dict[str, Any]:
        """The provenance stored with the best model's canonical file."""
        return {"framework": framework, **versions, "epoch": self.epoch, "step": self.step,
                "valid_loss": valid_loss, "recipe": jsonable(dataclasses.asdict(self.recipe))}  # fmt: skip

    def to_dict(self, framework: str, rng: np.random.Generator, **extra: Any) -> dict[str, Any]:
        """The content of ``state.json`` (``extra``: port-specific entries, e.g. NNabla's learning rate)."""
        state = {
            "framework": framework,
            "name": self.name,
            "epoch": self.epoch,
            "step": self.step,
            "best_loss": self.best_loss,
            "history": self.history,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "stopper": self.stopper.state_dict() if self.stopper else None,
            "rng": rng.bit_generator.state,
            "recipe": dataclasses.asdict(self.recipe),
            **extra,
        }
        return jsonable(state)

    def load_dict(self, state: dict[str, Any], rng: np.random.Generator, where: Any = "state.json") -> None:
        """Restore from a ``state.json`` dict (and the generator ``rng`` in place)."""
        if state["name"] != self.name:
            raise ValueError(f"--resume: {where} trains {state['name']!r}, not {self.name!r}")
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_loss, self.history = state["best_loss"], state["history"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.stopper is not None:
            self.stopper.load_state_dict(state["stopper"])
        rng.bit_generator.state = state["rng"]

    def save(self, folder: RunFolder, rng: np.random.Generator, **extra: Any) -> None:
        """Write ``folder.state_file`` atomically (the checkpoint folder is created)."""
        folder.checkpoint.mkdir(parents=True, exist_ok=True)
        atomic_write(folder.state_file, json.dumps(self.to_dict(folder.framework, rng, **extra), indent=1))

    def load(self, folder: RunFolder, rng: np.random.Generator) -> dict[str, Any]:
        """Read ``folder.state_file`` back into this state and ``rng``; returns the whole dict (port extras)."""
        if not folder.state_file.exists():
            raise FileNotFoundError(f"--resume: no {folder.state_file}")
        state = json.loads(folder.state_file.read_text())
        self.load_dict(state, rng, folder.checkpoint)
        return state


def read_state(folder: RunFolder) -> dict[str, Any]:
    """The ``state.json`` of ``folder`` as a dict."""
    return json.loads(folder.state_file.read_text())
