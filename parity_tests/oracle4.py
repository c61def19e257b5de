"""The Demucs v4 oracle (demucs 4.1.0) in its own process, for the parity suite. Main environment only.

The runner is the tool's, :mod:`unmix.parity.oracle4` (``unmix-parity`` runs upstream 4.1.0 with it too): a Python
snippet in a subprocess of this interpreter with the oracle folder (``.oracle-demucs4``, installed by ``make
setup``) first on ``PYTHONPATH``; arrays cross as ``.npz``, the rest as JSON. The snippet sees ``ARGS``, ``INPUTS``,
``json``, ``np``, ``torch`` and ``demucs``, and fills ``RESULT`` and ``ARRAYS``, which :func:`run_oracle4` returns.
"""

from __future__ import annotations

from unmix.parity.oracle4 import ORACLE4_VERSION, Oracle4Error, oracle4_available, oracle4_dir, run_oracle4

__all__ = ["ORACLE4_DIR", "ORACLE4_VERSION", "Oracle4Error", "oracle4_available", "run_oracle4"]

ORACLE4_DIR = oracle4_dir()
