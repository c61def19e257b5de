"""The four ports as the command lines see them: names, packages, and the NNabla environment.

Every console script (``unmix-separate``, ``unmix-convert``, ``unmix-parity``, ``unmix-train``) takes
``--framework torch|tf|jax|nnabla`` and imports ``umx_<framework>`` lazily, so that this module (and
``core_spec``) never imports a deep-learning framework. NNabla lives in its own environment (``.venv-nnabla``,
Python 3.10): a command asked for ``nnabla`` where ``nnabla`` is not importable runs again in that environment
(:func:`rerun_in_nnabla`), and arrays cross as files.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FRAMEWORKS",
    "REPO_ROOT",
    "Framework",
    "framework",
    "importable",
    "nnabla_env",
    "nnabla_python",
    "rerun_in_nnabla",
]

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Framework:
    """One port: its ``--framework`` key, package, label, the framework's import name and how to install it."""

    key: str
    package: str
    label: str
    module: str
    install: str


FRAMEWORKS: dict[str, Framework] = {
    "torch": Framework("torch", "umx_torch", "PyTorch", "torch", "pip install -e '.[torch]'"),
    "tf": Framework("tf", "umx_tf", "TensorFlow", "tensorflow", "pip install -e '.[tf]'"),
    "jax": Framework("jax", "umx_jax", "JAX", "jax", "pip install -e '.[jax]'"),
    "nnabla": Framework("nnabla", "umx_nnabla", "NNabla", "nnabla", "make setup (creates .venv-nnabla)"),
}


def framework(key: str) -> Framework:
    """The :class:`Framework` of ``key``; a :class:`ValueError` naming the known keys otherwise."""
    try:
        return FRAMEWORKS[key]
    except KeyError:
        raise ValueError(f"unknown framework {key!r}; known: {', '.join(FRAMEWORKS)}") from None


def importable(key: str) -> bool:
    """Whether framework ``key``'s own package (``torch``, ``tensorflow``, ...) can be imported here (not imported)."""
    return importlib.util.find_spec(framework(key).module) is not None


def nnabla_python() -> Path:
    """The interpreter of the NNabla environment: ``$UNMIX_NNABLA_PYTHON`` or ``<repo>/.venv-nnabla/bin/python``.

    Raises:
        FileNotFoundError: it does not exist (the message says how to make it).
    """
    configured = os.environ.get("UNMIX_NNABLA_PYTHON")
    candidate = Path(configured) if configured else REPO_ROOT / ".venv-nnabla" / "bin" / "python"
    if not candidate.exists():
        raise FileNotFoundError(
            f"NNabla runs in its own environment, whose interpreter {candidate} does not exist: run 'make setup' "
            "or set UNMIX_NNABLA_PYTHON"
        )
    return candidate


def nnabla_env() -> dict[str, str]:
    """The environment for a subprocess in ``.venv-nnabla``: this one, with the repository on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def rerun_in_nnabla(module: str, argv: Sequence[str]) -> int:
    """Run ``python -m module *argv`` with the NNabla environment's interpreter, streams attached; its exit code.

    Used by a command asked for ``--framework nnabla`` where ``nnabla`` is not importable.
    """
    try:
        python = nnabla_python()
    except FileNotFoundError as e:
        print(f"{module}: {e}", file=sys.stderr)
        return 1
    return subprocess.call([str(python), "-m", module, *argv], env=nnabla_env(), cwd=os.getcwd())
