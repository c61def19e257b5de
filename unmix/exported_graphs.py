"""TensorFlow's and JAX's Open-Unmix separations from exported graphs kept in the compilation cache
(:mod:`umx_tf.exported`, :mod:`umx_jax.exported`).

A TF or JAX command pays, in every process, the model's construction (Keras layers, Flax modules), the
separator's tracing and (TF) the lowering of the traced graph to XLA before it separates anything
(``docs/separate.md``, "What a command pays before it separates"). With the cache on, the first run of a shape
exports the separator's graph (StableHLO) to ``<compile folder>/exported/<key>.stablehlo``; a later run reads it,
passes the canonical weights straight to it and never builds the model. The key hashes what shapes the graph: the
port's export format, the separator's config (the command's ``--niter``, ``--wiener-win-len``, ``--softmask``,
``--residual`` applied), the dtype and the input shape; the folder name already holds the framework's version,
the project's code and the CPU (:func:`unmix.caches.compile_folder`).

Safety, as the other caches (``parity_tests/separate/test_caches.py``): an entry that cannot be read or is
damaged is exported again and replaced, with one warning; one that cannot be written (a read-only folder, a full
disk) is used from memory for this run, with one warning; entries are written atomically
(:func:`core_spec.files.atomic_write`), so two processes at once each write a whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import UMXSeparatorConfig, config_to_json
from core_spec.files import atomic_write

__all__ = ["EXPORTING_PORTS", "ExportedGraphs", "SUFFIX", "exportable"]

SUFFIX = ".stablehlo"
EXPORTING_PORTS = ("tf", "jax")
"""The ports with an ``exported`` module (``umx_<fw>.exported``)."""


def exportable(framework: str, device: str) -> bool:
    """Whether ``framework``'s Open-Unmix separator on ``device`` is exported (the port's ``exportable``)."""
    if framework not in EXPORTING_PORTS:
        return False
    return bool(importlib.import_module(f"umx_{framework}.exported").exportable(device))


class ExportedGraphs:
    """The exported separator graphs of one command: one per input shape, read from or written to ``folder``.

    Args:
        framework: ``"tf"`` or ``"jax"`` (:data:`EXPORTING_PORTS`): the port whose ``exported`` module runs them.
        folder: ``<compile folder>/exported``.
        config: the separator's config with the command's Wiener options applied.
        dtype: ``"float32"`` or ``"float64"``.
        build: builds the port's separator (called at most once, only when a shape has no entry yet).
        writable: write new entries (``False``: a read-only cache, already reported).
        warn: one line to the user.
    """

    def __init__(
        self,
        framework: str,
        folder: Path,
        config: UMXSeparatorConfig,
        dtype: str,
        build: Callable[[], Any],
        writable: bool,
        warn: Callable[[str], None],
    ):
        self.port = importlib.import_module(f"umx_{framework}.exported")
        self.folder, self.config, self.dtype = folder, config, dtype
        self._build, self.writable, self.warn = build, writable, warn
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._tensors: dict[Any, Any] = {}
        self._warned = False

    def key(self, shape: tuple[int, ...]) -> str:
        """The entry's name for audio of ``shape``: the SHA-256 of what shapes the graph."""
        text = json.dumps(
            {
                "format": self.port.EXPORT_FORMAT,
                "config": config_to_json(self.config),
                "dtype": self.dtype,
                "shape": shape,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def separate(self, batch: np.ndarray, weights: dict[str, Any]) -> Any:
        """The estimates ``(nb_samples, nb_sources, 2, nb_timesteps)`` of ``batch`` ``(nb_samples, 2,
        nb_timesteps)`` with canonical ``weights``."""
        shape = tuple(int(n) for n in batch.shape)
        graph = self._graphs.get(shape) or self._read(shape) or self._export(shape)
        self._graphs[shape] = graph
        return graph(batch, self._arguments(graph, weights))

    def _arguments(self, graph: Any, weights: dict[str, Any]) -> list[Any]:
        """The graph's weight tensors, converted once per command: the graphs of other lengths take the same
        parameters, found by their description (canonical names in TF, state paths in JAX)."""
        if not self._tensors:
            tensors = graph.weight_tensors(weights, self.config)
            self._tensors = dict(zip(graph.arguments, tensors, strict=True))
        return [self._tensors[arg] for arg in graph.arguments]

    def _path(self, shape: tuple[int, ...]) -> Path:
        return self.folder / f"{self.key(shape)}{SUFFIX}"

    def _read(self, shape: tuple[int, ...]) -> Any:
        path = self._path(shape)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            self._warn_once(f"the exported graph {path} cannot be read ({e}): exported again")
            return None
        try:
            graph = self.port.ExportedSeparator.from_bytes(data)
        except ValueError as e:
            self._warn_once(f"the exported graph {path} is damaged ({e}): exported again")
            if self.writable:
                with contextlib.suppress(OSError):
                    path.unlink()
            return None
        if graph.input_shape != shape or graph.input_dtype != self.dtype:
            self._warn_once(f"the exported graph {path} is for another input: exported again")
            return None
        return graph

    def _export(self, shape: tuple[int, ...]) -> Any:
        graph = self.port.export_separator(self._build(), shape)
        if self.writable:
            path = self._path(shape)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp: Path(tmp).write_bytes(graph.to_bytes()))
            except OSError as e:
                self._warn_once(f"the exported graph {path} cannot be written ({e}): it is used for this run only")
        return graph

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            self.warn(message)
