"""The four ports by name: their ``--framework`` keys, packages and framework modules, and a quiet first import.

Every console script (``unmix-separate``, ``unmix-convert``, ``unmix-parity``, ``unmix-train``) takes
``--framework torch|tf|jax|nnabla`` and imports ``umx_<framework>`` lazily, so that this module (and
``core_spec``) never imports a deep-learning framework. NNabla lives in its own environment (``.venv-nnabla``,
Python 3.10; :mod:`unmix.environments`). :func:`quiet_import` keeps TensorFlow's start-up log lines
off the commands' output.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FRAMEWORKS",
    "REPO_ROOT",
    "Framework",
    "framework",
    "importable",
    "quiet_import",
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


# quiet_import's filter, run by a child Python (stdin: what the block writes to fd 2, stdout: the real stderr). It
# drops absl's notice before its first log line in a library whose logging is not initialised, and log lines under
# level argv[1]; absl/glog's prefix: severity, month and day, time, thread, file:line ("I1207 04:47:05.123456 5439
# port.cc:153] "; before initialisation the time reads "00:00:<seconds since 1970>")
_FILTER = r"""
import re, sys
level = int(sys.argv[1])
notice = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
prefix = re.compile(rb"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
for line in sys.stdin.buffer:
    match = prefix.match(line)
    if line.rstrip(b"\r\n") != notice and not (match and b"IWEF".index(match.group(1)) < level):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Import a framework (TensorFlow) inside this block without its log lines under ``TF_CPP_MIN_LOG_LEVEL``.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless it is set (a user's own value wins; subprocesses inherit it): TensorFlow's
    C++ INFO and WARNING lines are dropped, errors are kept. That alone does not silence TensorFlow 2.21's import:
    ``libtensorflow_framework.so.2`` and ``_pywrap_profiler_plugin.so`` each log "oneDNN custom operations are on"
    (INFO, ``port.cc``) through absl while they load, before anything reads the variable, and absl writes every line
    logged before ``absl::InitializeLog()`` to stderr, after a notice; no environment variable reaches that
    (``TF_CPP_MIN_LOG_LEVEL=3``, ``GLOG_minloglevel``, ``ABSL_MIN_LOG_LEVEL`` tried) short of
    ``TF_ENABLE_ONEDNN_OPTS=0``, which changes the numerics. So while the block runs, file descriptor 2 goes through
    a small child process that writes every line on to stderr except absl's notice and log lines under the level. A
    child, not a thread or a file, so that a crash inside the import still shows what it wrote. With level ``0``, or
    where fd 2 or the child cannot be had, nothing is held back.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
        saved = os.dup(2) if level > 0 else None
    except (ValueError, OSError):
        saved = None
    if saved is None:
        yield
        return
    try:
        command = [sys.executable, "-I", "-S", "-c", _FILTER, str(level)]
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=saved)
    except (OSError, ValueError):
        os.close(saved)
        yield
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    os.dup2(child.stdin.fileno(), 2)
    try:
        yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        child.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):  # a process started in the block may hold the pipe
            child.wait(timeout=10)
