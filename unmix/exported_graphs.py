"""TensorFlow's and JAX's separations from exported graphs kept in the compilation cache (:mod:`umx_tf.exported`,
:mod:`umx_jax.exported`): the Open-Unmix separator per track length, the Demucs v2 network per chunk shape.

A TF or JAX command pays, in every process, the model's construction (Keras layers, Flax modules), its tracing
and (TF) the lowering of the traced graph to XLA before it separates anything (``docs/separate.md``, "What a
command pays before it separates"). With the cache on, the first run of a shape exports the graph (StableHLO) to
``<compile folder>/exported/<key>.stablehlo``; a later run reads it, passes the canonical weights straight to it
and never builds the model. The key hashes what shapes the graph: the port's export format, the model's config
(for Open-Unmix the command's ``--niter``, ``--wiener-win-len``, ``--softmask``, ``--residual`` applied), the
dtype and the input shape; the folder name already holds the framework's version, the project's code and the CPU
(:func:`unmix.caches.compile_folder`).

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import DemucsConfig, UMXSeparatorConfig, config_to_json
from core_spec.files import atomic_write

__all__ = ["EXPORTED_KINDS", "EXPORTING_PORTS", "ExportedGraphs", "SUFFIX", "exportable"]

SUFFIX = ".stablehlo"
EXPORTING_PORTS = ("tf", "jax")
"""The ports with an ``exported`` module (``umx_<fw>.exported``)."""
EXPORTED_KINDS = ("umx", "demucs")
"""What they export: the Open-Unmix separator (``export_separator``), the Demucs v2 network (``export_network``,
run through ``ExportedDemucs``)."""


def exportable(framework: str, device: str, kind: str = "umx") -> bool:
    """Whether ``framework``'s model of ``kind`` on ``device`` is exported (the port's ``exportable``)."""
    if framework not in EXPORTING_PORTS or kind not in EXPORTED_KINDS:
        return False
    return bool(importlib.import_module(f"umx_{framework}.exported").exportable(device))


class ExportedGraphs:
    """The exported graphs of one command's model: one per input shape, read from or written to ``folder``.

    Args:
        framework: ``"tf"`` or ``"jax"`` (:data:`EXPORTING_PORTS`): the port whose ``exported`` module runs them.
        folder: ``<compile folder>/exported``.
        config: the separator's config with the command's Wiener options applied, or a Demucs's config.
        dtype: ``"float32"`` or ``"float64"``.
        build: builds the port's model (called at most once, only when a shape has no entry yet).
        writable: write new entries (``False``: a read-only cache, already reported).
        warn: one line to the user.
        weights: the canonical weights; held until the graphs' tensors are made from them (:meth:`canonical`).
        reload: reads the canonical weights again (a model built after they were released).
    """

    def __init__(
        self,
        framework: str,
        folder: Path,
        config: UMXSeparatorConfig | DemucsConfig,
        dtype: str,
        build: Callable[[], Any],
        writable: bool,
        warn: Callable[[str], None],
        weights: Mapping[str, Any],
        reload: Callable[[], Mapping[str, Any]],
    ):
        self.port = importlib.import_module(f"umx_{framework}.exported")
        self.folder, self.config, self.dtype = folder, config, dtype
        self._build, self.writable, self.warn = build, writable, warn
        self._weights: Mapping[str, Any] | None = weights
        self._reload = reload
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

    def separate(self, batch: np.ndarray) -> Any:
        """Open-Unmix: the estimates ``(nb_samples, nb_sources, 2, nb_timesteps)`` of ``batch`` ``(nb_samples, 2,
        nb_timesteps)``."""
        graph = self.graph(tuple(int(n) for n in batch.shape))
        return graph(batch, self._arguments(graph))

    def network(self) -> Any:
        """Demucs: the port's ``ExportedDemucs`` for ``apply_model`` / ``separate_track``, its network run by these
        graphs (one per chunk shape)."""
        return self.port.ExportedDemucs(self.config, self.dtype, self.graph, self._arguments)

    def canonical(self) -> Mapping[str, Any]:
        """The canonical weights: those given, or read again once the graphs' tensors replaced them."""
        return self._weights if self._weights is not None else self._reload()

    def graph(self, shape: tuple[int, ...]) -> Any:
        """The graph for an input of ``shape``: kept, read from the folder, or exported now."""
        graph = self._graphs.get(shape) or self._read(shape) or self._export(shape)
        self._graphs[shape] = graph
        return graph

    def _arguments(self, graph: Any) -> list[Any]:
        """The graph's weight tensors, converted once per command (the canonical weights are released then): the
        graphs of other lengths take the same parameters, found by their description (canonical names in TF, state
        paths in JAX)."""
        if not self._tensors:
            tensors = graph.weight_tensors(self.canonical(), self.config)
            self._tensors = dict(zip(graph.arguments, tensors, strict=True))
            self._weights = None
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
        export = self.port.export_network if isinstance(self.config, DemucsConfig) else self.port.export_separator
        graph = export(self._build(), shape)
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
