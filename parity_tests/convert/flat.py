"""Flattening nested checkpoint objects to ``{path: array}`` for bit-exact comparisons. NumPy only: both envs.

``{'state': {'fc1.weight': a}, 'x': [b, c]}`` -> ``{'state/fc1.weight': a, 'x/0': b, 'x/1': c}``. ``convert``
turns leaves into arrays (torch tensors on the torch side); non-array leaves are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["bit_equal", "flatten"]


def flatten(obj: Any, convert: Callable[[Any], np.ndarray | None] | None = None, prefix: str = "") -> dict:
    out: dict[str, np.ndarray] = {}
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    elif hasattr(obj, "attrs") and isinstance(obj.attrs, dict):  # a recorded argparse.Namespace
        items = [(str(k), v) for k, v in obj.attrs.items()]
    else:
        leaf = obj if isinstance(obj, np.ndarray) else (convert(obj) if convert else None)
        return {prefix.rstrip("/"): leaf} if leaf is not None else {}
    for key, value in items:
        out.update(flatten(value, convert, f"{prefix}{key}/"))
    return out


def bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (NaN payloads and signed zeros included)."""
    a, b = np.asarray(a), np.asarray(b)
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )
