"""The ``device`` and ``dtype`` keyword arguments every port's loaders accept, checked once.

``from_canonical``, ``from_canonical_file`` and ``load_module`` of every port take ``device="cpu"|"gpu"`` and
``dtype="float32"|"float64"`` (besides their framework's own objects: a ``torch.device``, a ``jax.Device``, a
``torch.dtype``, ...). These helpers turn the framework-neutral spellings into one canonical name, with a clear
error for anything else; each port maps the name to its framework's object.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEVICES", "DTYPES", "device_name", "dtype_name"]

DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "float64")


def device_name(device: Any) -> str:
    """``"cpu"`` or ``"gpu"`` (``"cuda"`` is read as ``"gpu"``); a :class:`ValueError` otherwise."""
    name = str(device).lower()
    name = "gpu" if name == "cuda" else name
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return name


def dtype_name(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` for a name or a NumPy dtype; a :class:`ValueError` otherwise."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype).rsplit(".", 1)[-1]  # e.g. a framework dtype printed as "torch.float32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name
