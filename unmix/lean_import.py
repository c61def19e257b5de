"""Importing TensorFlow for one command without the optional packages it pulls in and the command never uses.

``import tensorflow`` (2.21, with Keras 3.15) imports three packages that it only tries, each in ``try: import ...
except ImportError``: ``jax`` (``tensorflow.lite.python.util``, for TFLite's JAX conversion), ``pandas``
(``keras.src.trainers.data_adapters.array_slicing``, for ``fit`` on DataFrames) and ``matplotlib.pyplot``
(``keras.src.visualization``, for image galleries). Measured on the benchmark machine (2 cores, quiet): importing
``umx_tf`` takes 2.5 s with them and 1.9 s without (``python -X importtime``: jax 0.35 s, pandas 0.27 s,
matplotlib 0.24 s of the import). A separation command in TensorFlow uses none of them, so
:func:`without_optional` hides them while ``umx_tf`` is imported: each of those ``try`` blocks takes its
``ImportError`` branch. Nothing else changes: after the import the packages are importable again, and a package
already imported in the process is never hidden.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["TF_OPTIONAL", "without_optional"]

TF_OPTIONAL = ("jax", "pandas", "matplotlib")  # tried by TensorFlow / Keras at import, unused by the commands


class _Hide(importlib.abc.MetaPathFinder):
    """A finder that answers ``ModuleNotFoundError`` for the packages ``names`` and their submodules."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} hidden while TensorFlow is imported", name=fullname)
        return None


@contextmanager
def without_optional(names: Sequence[str] = TF_OPTIONAL) -> Iterator[None]:
    """Within the block, ``import`` of the packages ``names`` (those not imported yet) raises
    ``ModuleNotFoundError``; on leaving it they are importable again."""
    hidden = [name for name in names if name not in sys.modules]
    if not hidden:
        yield
        return
    finder = _Hide(hidden)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
