"""Everything in ``unmix_parity`` but the adapters imports with NumPy only, in both environments (``.venv-nnabla``
has no matplotlib, torch, TensorFlow nor JAX; matplotlib is imported only when a plot is drawn)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core_spec.frameworks import REPO_ROOT, nnabla_env, nnabla_python

MODULES = [
    "unmix_parity",
    "unmix_parity.adapters",
    "unmix_parity.adapters.reference",
    "unmix_parity.cli",
    "unmix_parity.clip",
    "unmix_parity.model",
    "unmix_parity.plots",
    "unmix_parity.report",
    "unmix_parity.run",
    "unmix_parity.runner",
    "unmix_parity.stages",
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
