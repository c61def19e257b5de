"""The NNabla environment (``.venv-nnabla``, Python 3.10: nnabla 1.39 has no wheel for 3.11) as the commands use
it: a command asked for ``--framework nnabla`` where ``nnabla`` is not importable runs again there
(:func:`rerun_in_nnabla`), and arrays cross between the environments as files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from core_spec.frameworks import REPO_ROOT

__all__ = ["nnabla_env", "nnabla_python", "rerun_in_nnabla"]


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
