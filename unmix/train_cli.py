"""``unmix-train``: one command line for training in every framework.

``unmix-train --framework torch|tf|jax|nnabla --model umx|demucs|htdemucs --root DATA --out RUN [options]`` parses the
options
here (the same for every framework; ``--model htdemucs``: the ports of :data:`HTDEMUCS_FRAMEWORKS`, all four), then
hands them to ``unmix.train_<framework>.main``, which builds the port's
``Trainer`` (``umx_<framework>.train``) and runs :func:`unmix.train_loop.run_epochs`. ``--framework nnabla`` from
the main environment re-runs the command in ``.venv-nnabla`` (a subprocess; files are the only thing shared).

The options are the recipe fields of :mod:`core_spec.training` (``--lr``, ``--batch-size``, ...), whose defaults
are upstream's; only what differs from the recipe needs to be given.

Run folder (``--out``), the same layout in every framework:

- ``<name>.safetensors`` + ``<name>.json``: the canonical weights of the best model so far (``<name>`` is the UMX
  target or ``demucs``), loadable by every port (``umx_<fw>.from_canonical_file``) and by upstream through
  ``umx_torch.save_native`` (a plain state dict with upstream's names, for ``OpenUnmix`` / ``Demucs``
  ``.load_state_dict``);
- ``<name>-<framework>.<ext>``: the same in the framework's own format;
- ``checkpoint-<name>-<framework>/``: the last epoch's weights, optimiser state and ``state.json`` (epoch,
  schedule, early stopping, random generator, loss history), read back by ``--resume``.

Every file carries the run's ``<name>``, so several targets train into one ``--out`` (as upstream's training
folder holds one ``<target>.pth`` per target; the folder is then a separator for ``unmix-separate``): a target
whose files are not there yet is a new run, and ``--resume`` / ``--force`` are needed only where the same name's
best model or checkpoint is. The paths, the ``state.json`` content and the "this run has results: pass --resume or
--force" check are :mod:`unmix.run_folder`'s, shared by the four ports (which also resumes a folder of the older
layout, ``checkpoint-<framework>/``).

Validation: every epoch ends with the validation loss on the ``valid`` tracks (``--valid-tracks N``: the first N),
which drives the plateau schedule, early stopping and the choice of the best model. Training needs at least one
validation track: ``--valid-tracks 0``, or a root without a ``valid`` subset, is an error in every framework
(:func:`core_spec.training.make_datasets`), never a silent fallback to the training loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from core_spec.frameworks import FRAMEWORKS as _FRAMEWORKS
from core_spec.frameworks import importable
from core_spec.training import (
    RECIPES,
    DemucsTrainConfig,
    HTDemucsTrainConfig,
    Recipe,
    UMXTrainConfig,
    train_config_from_dict,
)
from unmix.environments import rerun_in_nnabla
from unmix.quick_exit import run_console

__all__ = ["console_main", "FRAMEWORKS", "HTDEMUCS_FRAMEWORKS", "build_parser", "main", "recipe_from_args", "run_main"]

FRAMEWORKS = tuple(_FRAMEWORKS)
HTDEMUCS_FRAMEWORKS = ("torch", "tf", "jax", "nnabla")  # the ports whose Trainer takes an HTDemucs (demucs 4) recipe


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unmix-train",
        description="Train Open-Unmix, Demucs v2 or HTDemucs (demucs 4) with the upstream recipe in PyTorch, "
        "TensorFlow, JAX or NNabla.",
        epilog="Recipe defaults are upstream's (core_spec/training.py); see docs/training.md.",
    )
    parser.add_argument("--framework", required=True, choices=FRAMEWORKS)
    parser.add_argument("--model", required=True, choices=tuple(RECIPES))
    parser.add_argument("--root", required=True, help="MUSDB18-style root (stems or WAV folders) or a track folder")
    parser.add_argument("--out", required=True, help="run folder (created; may hold the runs of other targets)")
    parser.add_argument(
        "--preset", help="architecture preset (core_spec.configs; default umxhq / demucs / htdemucs, or htdemucs_6s)"
    )
    parser.add_argument("--init", help="canonical weights to start from (.safetensors)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint-<name>-<framework>/")
    parser.add_argument("--force", action="store_true", help="start again a run whose results are in --out")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke tests)")
    parser.add_argument("--valid-tracks", type=int, help="use at most this many validation tracks (at least 1)")
    parser.add_argument("--devices", type=int, default=1, help="data-parallel replicas (see docs/training.md)")
    parser.add_argument("--device", default="cpu", help="cpu or gpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    for cls in (UMXTrainConfig, DemucsTrainConfig, HTDemucsTrainConfig):
        group = parser.add_argument_group(f"{cls.__name__} (used with --model {cls().model})")
        for f in dataclasses.fields(cls):
            opt = _option(f.name)
            if any(opt in a.option_strings for a in parser._actions):
                continue  # shared field (batch_size, lr, ...): one option, the model's default applies
            kwargs: dict[str, Any] = {"dest": f.name, "default": None}
            if isinstance(f.default, bool):
                kwargs["type"] = lambda s: s.lower() in ("1", "true", "yes")
                kwargs["metavar"] = "BOOL"
            elif isinstance(f.default, tuple):
                kwargs["nargs"] = "*"
                if "float" in str(f.type):
                    kwargs["type"] = float
            else:
                kwargs["type"] = type(f.default)
            group.add_argument(opt, **kwargs, help=f"default {f.default!r}")
    return parser


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe for ``args.model`` with the options that were given replacing upstream's defaults."""
    cls = RECIPES[args.model]
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return train_config_from_dict(args.model, given)


def run_main(
    args: argparse.Namespace,
    framework: str,
    fit: Callable[[Recipe], dict[str, Any]],
    errors: tuple[type[BaseException], ...] = (FileExistsError, FileNotFoundError),
    prepare: Callable[[Recipe], bool] | None = None,
) -> int:
    """The tail of every framework's ``unmix.train_<fw>.main``: the recipe from ``args`` (:func:`recipe_from_args`), the
    run folder checked (:func:`unmix.run_folder.check_out`), ``fit(recipe)``, the closing log line.

    Args:
        args: the options of :func:`build_parser`.
        framework: the port's name (the run folder's ``checkpoint-<name>-<framework>``, ``<name>-<framework>``).
        fit: trains with the recipe; returns at least ``{"epochs", "steps", "best_loss"}``.
        errors: the exceptions of ``prepare`` and the folder check that are reported as
            ``unmix-train: <error>`` on stderr with exit status 2 (default: a folder with results and neither
            ``--resume`` nor ``--force``, ``--resume`` without a checkpoint).
        prepare: called with the recipe before the folder check, in the same ``try`` (e.g. NNabla's MPI
            communicator); returns whether this process checks the folder (``False``: a replica other than rank 0).

    Returns:
        0, or 2 after a reported error.
    """
    from unmix.run_folder import check_out, log

    recipe = recipe_from_args(args)
    try:
        if prepare is None or prepare(recipe):
            check_out(args, recipe, framework)
    except errors as error:
        print(f"unmix-train: {error}", file=sys.stderr)
        return 2
    result = fit(recipe)
    log(f"done: {result['epochs']} epochs, {result['steps']} steps, best valid loss {result['best_loss']:.6g}",
        args.quiet)  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.model == "htdemucs" and args.framework not in HTDEMUCS_FRAMEWORKS:
        print(f"unmix-train: --model htdemucs trains in {', '.join(HTDEMUCS_FRAMEWORKS)} (not {args.framework} yet)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.framework == "nnabla":
        if not importable("nnabla"):  # not importable here: run in .venv-nnabla
            return rerun_in_nnabla("unmix.train_cli", argv)
    module = importlib.import_module(f"unmix.train_{args.framework}")  # the port's driver: its Trainer, devices
    return int(module.main(args) or 0)


def console_main() -> NoReturn:
    """The ``unmix-train`` console script and ``python -m unmix.train_cli``: :func:`main`, then the process ends
    without the interpreter's teardown (:mod:`unmix.quick_exit`)."""
    run_console(main)


if __name__ == "__main__":
    console_main()
