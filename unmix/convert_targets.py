"""Canonical weights -> each framework's own format, through the ports' ``weights.py``.

A small registry: ``--to torch|tf|jax|nnabla`` imports ``umx_<fw>.weights`` lazily and calls its

    save_native(path, weights, config, force=False) -> list[Path]

where ``path`` is an output stem (no suffix: the port adds its own, e.g. ``.pth``, ``.weights.h5``, ``.h5``; the
``unmix-convert`` command passes ``<out>-<fw>`` so that a port's files never collide with the canonical ones),
``weights`` the canonical arrays (upstream names; ``target_models.<target>.<name>`` for a UMX separator) and
``config`` the :mod:`core_spec.configs` object. A port that does not exist yet, or has no ``save_native`` yet,
gives a :class:`~weights_convert.errors.ConversionError` saying so.

- ``torch``: ``<stem>.pth``, the state dict with upstream's names (what upstream's ``load_state_dict`` reads),
  and ``<stem>.json``.
- ``nnabla``: NNabla lives in its own environment (``.venv-nnabla``, Python 3.10). When ``nnabla`` is not
  importable here, the arrays go to a temporary canonical file and ``<nnabla python> -m unmix.convert_targets
  nnabla CANONICAL STEM`` writes the NNabla files in that environment; it prints the written paths as JSON. The
  NNabla interpreter is ``$UNMIX_NNABLA_PYTHON`` or ``<repo>/.venv-nnabla/bin/python``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.canonical import load_canonical, save_canonical
from core_spec.frameworks import FRAMEWORKS, REPO_ROOT, Framework
from core_spec.frameworks import framework as _framework
from unmix.environments import nnabla_env
from unmix.environments import nnabla_python as _nnabla_python
from weights_convert.errors import ConversionError

__all__ = ["FRAMEWORKS", "Framework", "nnabla_python", "save_native"]


Writer = Callable[..., list]


def framework(key: str) -> Framework:
    try:
        return _framework(key)
    except ValueError as e:
        raise ConversionError(f"unknown target framework: {e}") from None


def _writer(fw: Framework) -> Writer:
    name = f"{fw.package}.weights"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name in (fw.package, name):
            raise ConversionError(f"the {fw.label} port is not available yet ({name} does not exist)") from None
        raise ConversionError(
            f"the {fw.label} port needs {e.name!r}, which is not installed in this environment: {fw.install}"
        ) from None
    except ImportError as e:
        raise ConversionError(f"the {fw.label} port cannot be imported: {e}") from None
    writer = getattr(module, "save_native", None)
    if writer is not None:
        return writer
    raise ConversionError(
        f"the {fw.label} port has no save_native(path, weights, config, force) in {fw.package}/weights.py yet"
    )


def nnabla_python() -> Path:
    """The interpreter of the NNabla environment (:func:`unmix.environments.nnabla_python`)."""
    try:
        return _nnabla_python()
    except FileNotFoundError as e:
        raise ConversionError(f"--to nnabla runs the NNabla writer in the NNabla environment: {e}") from None


def _save_nnabla_elsewhere(path: Path, weights: Mapping[str, np.ndarray], config: Any, force: bool) -> list[Path]:
    python = nnabla_python()
    with tempfile.TemporaryDirectory(dir=Path(path).parent, prefix=".nnabla-handoff-") as tmp:
        st_path, _ = save_canonical(Path(tmp) / "canonical", weights, config, {"handoff": "to the NNabla environment"})
        cmd = [str(python), "-m", "unmix.convert_targets", "nnabla", str(st_path), str(path)]
        result = subprocess.run(
            [*cmd, *(["--force"] if force else [])], capture_output=True, text=True, cwd=REPO_ROOT, env=nnabla_env()
        )
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise ConversionError(f"the NNabla writer failed in {python}:\n{detail}")
        try:
            written = json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise ConversionError(f"the NNabla writer printed no file list: {result.stdout[-500:]!r}") from None
    return [Path(p) for p in written]


def save_native(
    key: str, path: str | os.PathLike, weights: Mapping[str, np.ndarray], config: Any, force: bool = False
) -> list[Path]:
    """Write ``weights`` in framework ``key``'s own format next to the stem ``path``; returns the files written."""
    fw = framework(key)
    path = Path(path)
    if fw.key == "nnabla" and importlib.util.find_spec("nnabla") is None:
        return _save_nnabla_elsewhere(path, weights, config, force)
    return [Path(p) for p in _writer(fw)(path, weights, config, force=force)]


def _main(argv: list[str] | None = None) -> int:
    """``python -m unmix.convert_targets FW CANONICAL STEM [--force]``: the in-environment writer."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m unmix.convert_targets")
    parser.add_argument("framework", choices=sorted(FRAMEWORKS))
    parser.add_argument("canonical")
    parser.add_argument("stem")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        weights, config, _ = load_canonical(args.canonical)
        fw = framework(args.framework)
        written = _writer(fw)(Path(args.stem), weights, config, force=args.force)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps([str(p) for p in written]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
