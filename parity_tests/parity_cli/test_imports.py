"""Everything in ``unmix.parity`` but the adapters imports with NumPy only, in both environments (``.venv-nnabla``
has no matplotlib, torch, TensorFlow nor JAX; matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core_spec.frameworks import REPO_ROOT
from unmix.environments import nnabla_env, nnabla_python

MODULES = [
    "unmix.parity",
    "unmix.parity.adapters",
    "unmix.parity.adapters.reference",
    "unmix.parity.adapters.upstream4",
    "unmix.parity.cli",
    "unmix.parity.clip",
    "unmix.parity.model",
    "unmix.parity.oracle4",
    "unmix.parity.plots",
    "unmix.parity.report",
    "unmix.parity.run",
    "unmix.parity.runner",
    "unmix.parity.stages",
]
FORBIDDEN = ["torch", "tensorflow", "keras", "jax", "flax", "nnabla", "matplotlib"]

CODE = (
    "import importlib, sys\n"
    f"for m in {MODULES!r}: importlib.import_module(m)\n"
    f"print(sorted(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
)


def _interpreters() -> list[str]:
    found = [sys.executable]
    try:
        found.append(str(nnabla_python()))
    except FileNotFoundError:
        pass
    return found


@pytest.mark.parametrize("python", _interpreters())
def test_non_adapter_modules_import_numpy_only(python: str) -> None:
    out = subprocess.run([python, "-c", CODE], capture_output=True, text=True, env=nnabla_env(), cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", f"{python}: imported {out.stdout.strip()}"
