"""The Demucs v4 oracle (demucs 4.1.0) in its own process. Main environment only (it runs ``.venv``'s torch).

demucs 4.1.0 is the module ``demucs`` like demucs 2.0.3 (:mod:`parity_tests.oracle`), so the two cannot live in one
site-packages nor one process. ``make setup`` installs 4.1.0 and einops with ``--no-deps`` into the folder
:data:`ORACLE4_DIR` (``requirements/oracle4.txt``); :func:`run_oracle4` runs a Python snippet in a subprocess of
this interpreter with that folder first on ``PYTHONPATH``, and checks there that ``demucs`` is 4.1.0 from it.

Data crosses as files: arrays in ``.npz``, everything else as JSON. The snippet sees

- ``ARGS``: the JSON-able ``args`` passed in, ``INPUTS``: the ``inputs`` arrays (name -> ``np.ndarray``);
- ``RESULT``: a dict it fills with JSON-able values, ``ARRAYS``: a dict it fills with arrays;
- ``json``, ``np``, ``torch`` and ``demucs`` already imported;

and :func:`run_oracle4` returns ``(RESULT, ARRAYS)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.frameworks import REPO_ROOT

__all__ = ["ORACLE4_DIR", "ORACLE4_VERSION", "Oracle4Error", "oracle4_available", "run_oracle4"]

ORACLE4_DIR = REPO_ROOT / ".oracle-demucs4"
ORACLE4_VERSION = "4.1.0"


class Oracle4Error(RuntimeError):
    """The oracle subprocess failed (its stderr is in the message) or the oracle is not installed."""


def oracle4_available() -> bool:
    """True when ``make setup`` has installed the oracle folder."""
    return (ORACLE4_DIR / ".installed").is_file() and (ORACLE4_DIR / "demucs" / "htdemucs.py").is_file()


_PRELUDE = """\
import json, sys
import numpy as np
import torch
import demucs
_here = {oracle_dir!r}
if demucs.__version__ != {version!r} or not demucs.__file__.startswith(_here):
    raise SystemExit(f"oracle4: demucs {{demucs.__version__}} from {{demucs.__file__}}, not {version} from {{_here}}")
with open(sys.argv[1]) as _f:
    ARGS = json.load(_f)
with np.load(sys.argv[2]) as _z:
    INPUTS = {{k: _z[k] for k in _z.files}}
RESULT = {{}}
ARRAYS = {{}}
"""

_EPILOGUE = """
with open(sys.argv[3], "w") as _f:
    json.dump(RESULT, _f)
np.savez(sys.argv[4], **{k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                         for k, v in ARRAYS.items()})
"""


def run_oracle4(
    snippet: str,
    args: dict[str, Any] | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    timeout: float = 300.0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``snippet`` under demucs 4.1.0 in a subprocess; return its ``(RESULT, ARRAYS)`` (module docstring).

    Raises :class:`Oracle4Error` when the oracle folder is missing or the subprocess fails.
    """
    if not oracle4_available():
        raise Oracle4Error(f"the demucs {ORACLE4_VERSION} oracle is not installed in {ORACLE4_DIR}: run 'make setup'")
    prelude = _PRELUDE.format(oracle_dir=str(ORACLE4_DIR), version=ORACLE4_VERSION)
    source = prelude + textwrap.dedent(snippet) + _EPILOGUE
    with tempfile.TemporaryDirectory(prefix="oracle4-") as tmp:
        folder = Path(tmp)
        paths = [folder / name for name in ("script.py", "args.json", "inputs.npz", "result.json", "arrays.npz")]
        script, args_path, inputs_path, result_path, arrays_path = paths
        script.write_text(source)
        args_path.write_text(json.dumps(args or {}))
        np.savez(inputs_path, **(inputs or {}))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ORACLE4_DIR), str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        command = [sys.executable, str(script), *map(str, (args_path, inputs_path, result_path, arrays_path))]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise Oracle4Error(
                f"demucs {ORACLE4_VERSION} oracle failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        result = json.loads(result_path.read_text())
        with np.load(arrays_path) as z:
            arrays = {k: z[k] for k in z.files}
    return result, arrays
