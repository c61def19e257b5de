"""Run a snippet under upstream demucs 4.1.0 (the HTDemucs oracle) in its own process. NumPy only here.

demucs 4.1.0 is the module ``demucs``, as demucs 2.0.3 (the v2 oracle, importable in the main environment), so
the two cannot share a process: ``make setup`` installs 4.1.0 and einops with ``--no-deps`` into the folder
:data:`ORACLE4_DIR` (``.oracle-demucs4`` in the repository; ``UNMIX_ORACLE4_DIR`` overrides it), and
:func:`run_oracle4` runs a Python snippet with this interpreter (its torch) and that folder first on ``PYTHONPATH``.
The snippet checks there that ``demucs`` is 4.1.0 from that folder.

Data crosses as files. The snippet sees ``ARGS`` (JSON), ``INPUTS`` (name -> ``np.ndarray``), and ``json``, ``np``,
``torch``, ``demucs`` imported; it fills ``RESULT`` (JSON-able) and ``ARRAYS`` (name -> array or tensor), which
:func:`run_oracle4` returns. (The parity suite's own runner, ``parity_tests/oracle4.py``, works the same way; the
tool floor may not import it.)
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

__all__ = ["ORACLE4_VERSION", "Oracle4Error", "oracle4_available", "oracle4_dir", "run_oracle4"]

ORACLE4_VERSION = "4.1.0"


class Oracle4Error(RuntimeError):
    """The oracle is not installed, or its subprocess failed (the end of its stderr is in the message)."""


def oracle4_dir() -> Path:
    """The folder holding demucs 4.1.0 (``UNMIX_ORACLE4_DIR``, else ``<repository>/.oracle-demucs4``)."""
    return Path(os.environ.get("UNMIX_ORACLE4_DIR") or REPO_ROOT / ".oracle-demucs4")


def oracle4_available() -> bool:
    """Whether the oracle folder holds demucs's HTDemucs (and torch is importable by this interpreter)."""
    import importlib.util

    return (oracle4_dir() / "demucs" / "htdemucs.py").is_file() and importlib.util.find_spec("torch") is not None


_HEAD = """\
import json, sys
import numpy as np
import torch
import demucs
if demucs.__version__ != {version!r} or not demucs.__file__.startswith({folder!r}):
    raise SystemExit(f"oracle4: demucs {{demucs.__version__}} from {{demucs.__file__}}, not {version} from {folder}")
with open(sys.argv[1]) as _f:
    ARGS = json.load(_f)
with np.load(sys.argv[2]) as _z:
    INPUTS = {{k: _z[k] for k in _z.files}}
RESULT = {{}}
ARRAYS = {{}}
"""

_TAIL = """
with open(sys.argv[3], "w") as _f:
    json.dump(RESULT, _f)
np.savez(sys.argv[4], **{k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                         for k, v in ARRAYS.items()})
"""


def run_oracle4(
    snippet: str,
    args: dict[str, Any] | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    timeout: float | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``snippet`` under demucs 4.1.0 in a subprocess; its ``(RESULT, ARRAYS)`` (module docstring).

    Raises:
        Oracle4Error: the oracle is not installed, or the subprocess failed or timed out.
    """
    folder = oracle4_dir()
    if not oracle4_available():
        raise Oracle4Error(f"demucs {ORACLE4_VERSION} is not installed in {folder} (make setup), or torch is missing")
    source = _HEAD.format(version=ORACLE4_VERSION, folder=str(folder)) + textwrap.dedent(snippet) + _TAIL
    with tempfile.TemporaryDirectory(prefix="unmix-oracle4-") as tmp:
        paths = [Path(tmp) / n for n in ("snippet.py", "args.json", "inputs.npz", "result.json", "arrays.npz")]
        script, args_path, inputs_path, result_path, arrays_path = paths
        script.write_text(source)
        args_path.write_text(json.dumps(args or {}))
        np.savez(inputs_path, **(inputs or {}))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, str(script), *map(str, paths[1:])]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise Oracle4Error(f"demucs {ORACLE4_VERSION} oracle: no result after {timeout} s") from None
        if done.returncode != 0:
            raise Oracle4Error(f"demucs {ORACLE4_VERSION} oracle exited with {done.returncode}:\n{done.stderr[-4000:]}")
        result = json.loads(result_path.read_text())
        with np.load(arrays_path) as z:
            arrays = {k: z[k] for k in z.files}
    return result, arrays
