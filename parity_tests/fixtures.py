"""Reading and writing the committed fixtures (``parity_tests/fixtures/*.npz``). NumPy only: both environments.

A fixture file holds named arrays (complex allowed) and a JSON ``__meta__`` entry: the case parameters, the
seeds, the SHA-256 of the seeded weights it was made with, and the versions of the upstream code and torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"

__all__ = ["FIXTURE_DIR", "load", "save", "weights_sha256"]


def weights_sha256(weights: Mapping[str, np.ndarray]) -> str:
    """Checksum of a weight dict (names, shapes, dtypes and bytes, in sorted name order)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        h.update(f"{name}:{a.shape}:{a.dtype.str};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write ``FIXTURE_DIR / f"{name}.npz"`` atomically (compressed)."""
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    path = FIXTURE_DIR / f"{name}.npz"
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__meta__"] = np.array(json.dumps(meta, sort_keys=True))
    fd, tmp = tempfile.mkstemp(dir=FIXTURE_DIR, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **payload)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of fixture ``name``; a clear error names the command that makes it."""
    path = FIXTURE_DIR / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"fixture {path} is missing: run 'make fixtures' (parity_tests/make_fixtures.py)")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "__meta__"}
        meta = json.loads(str(data["__meta__"]))
    return arrays, meta
