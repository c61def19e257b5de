"""A model's compiled graph kept between processes (``jax.export``, with its compiled call): a later process runs
it without importing Flax, building the modules or tracing anything.

Every process that separates with a :class:`~umx_jax.separator.Separator` imports Flax (0.2 s), builds its NNX
modules from the weights (0.25 s for umxhq) and traces :meth:`Separator.forward
<umx_jax.separator.Separator.forward>` (0.4 s) before JAX's persistent cache can hand it the compiled code; a
Demucs does the same for its network. :func:`export_separator` (the separation of one input shape) and
:func:`export_network` (the Demucs network on one padded chunk shape) export the function with ``jax.export``
(JAX's own serialisation of a lowered function: StableHLO with a compatibility guarantee), the model's state passed
as arguments, and serialise its compiled call for the CPU beside it (:meth:`ExportedSeparator.compiled`,
``jax.experimental.serialize_executable``). :class:`ExportedSeparator` loads that executable and calls it (or,
without one, calls the StableHLO by ``jax.export.Exported.call`` under ``jax.jit``); :class:`ExportedDemucs` is
what ``apply_model`` uses of a Demucs, its network run by such graphs. The program is the one the model compiles,
so the outputs are equal bit for bit (``parity_tests/jax/test_exported.py``,
``parity_tests/separate/test_exported_graphs.py``).

The graph's parameters are the leaves of the model's NNX state in ``jax.tree`` order; the export records each
one's path in that state (``("target_models", "vocals", "lstm", "layers", 0, "kernel_ih")``), the path of the
same array in :func:`umx_jax.weights.state_from_canonical`'s pure state, so that
:meth:`ExportedSeparator.weight_tensors` builds them from canonical weights with no module.

The bytes (:meth:`ExportedSeparator.to_bytes`): a header line, a JSON description (shapes, dtypes, argument paths,
each blob's length and SHA-256), ``jax.export``'s serialisation and the serialised executable
(:func:`core_spec.files.pack_exported`). The executable is native code for this jaxlib and CPU, as every entry of
JAX's own compilation cache: read only files that this user's runs wrote.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from core_spec.configs import DemucsConfig, UMXSeparatorConfig
from core_spec.exported import ExportedNetwork
from core_spec.files import pack_exported, unpack_exported

from ._scope import canonical_dtype, dtype_scope
from .weights import state_from_canonical

if TYPE_CHECKING:
    from .demucs import Demucs
    from .separator import Separator

__all__ = ["EXPORT_FORMAT", "ExportedDemucs", "ExportedSeparator", "export_network", "export_separator", "exportable"]

EXPORT_FORMAT = "unmix-ports jax-export 1"
"""The header line of :meth:`ExportedSeparator.to_bytes`."""

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class ExportedSeparator:
    """:meth:`Separator.forward` (or a Demucs network, :func:`export_network`) on one input shape, exported.

    Attributes:
        module: ``jax.export.Exported.serialize()`` of the function (the input, then the state's leaves).
        arguments: the state path of each parameter after the input, in order.
        input_shape, input_dtype: the audio ``(nb_samples, nb_channels, nb_timesteps)`` it takes (Demucs: a padded
            chunk).
        output_shape, output_dtype: the estimates ``(nb_samples, nb_sources, 2, nb_timesteps)`` it returns.
        executable: its call compiled for the CPU and serialised (:meth:`compiled`); empty: none.
    """

    module: bytes
    arguments: tuple[Path, ...]
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str
    executable: bytes = field(default=b"", repr=False)
    _exported: Any = field(init=False, repr=False, compare=False)  # the jax.export.Exported
    _call: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        with dtype_scope(self.input_dtype):
            exported = jax.export.deserialize(bytearray(self.module))
        if len(exported.in_avals) != 1 + len(self.arguments):
            raise ValueError(
                f"the exported module takes {len(exported.in_avals)} arguments, the description names "
                f"{1 + len(self.arguments)}"
            )
        object.__setattr__(self, "_exported", exported)
        call = _load_executable(self.executable, len(exported.in_avals)) if self.executable else None
        object.__setattr__(self, "_call", call or jax.jit(exported.call))

    def compiled(self) -> ExportedSeparator:
        """This graph with :attr:`executable`: its call compiled now for the CPU (through JAX's persistent cache
        when one is set) and serialised, so that a process that reads it loads the executable and runs it, with
        no lowering and no compilation-cache lookup. ``executable`` stays empty where the executable cannot be
        serialised."""
        from jax.experimental.serialize_executable import serialize

        with dtype_scope(self.input_dtype):
            compiled = jax.jit(self._exported.call).lower(*self._exported.in_avals).compile()
        try:
            data, in_tree, out_tree = serialize(compiled)
        except (ValueError, NotImplementedError):
            return self
        if (in_tree, out_tree) != _trees(len(self._exported.in_avals)):
            return self
        graph = copy.copy(self)  # the module stays deserialised; the executable is in hand, not loaded again
        object.__setattr__(graph, "executable", data)
        object.__setattr__(graph, "_call", compiled)
        return graph

    def weight_tensors(self, weights: Mapping[str, Any], config: UMXSeparatorConfig | DemucsConfig) -> list[jax.Array]:
        """The parameters from canonical ``weights`` of ``config`` (a separator's ``target_models.<t>.<name>`` or
        ``{target: weights}``, a Demucs's names), as :func:`umx_jax.weights.materialize` would place them, on the
        CPU.

        Raises:
            WeightsMismatchError: a missing, unexpected or mis-shaped key.
            ValueError: a parameter the weights do not give, or a value whose shape is not the graph's.
        """
        state = state_from_canonical(config, weights)
        cpu = jax.devices("cpu")[0]
        out = []
        with dtype_scope(self.input_dtype):
            for path, aval in zip(self.arguments, self._exported.in_avals[1:], strict=True):
                value: Any = state
                for key in path:
                    if not isinstance(value, Mapping) or key not in value:
                        raise ValueError(f"the weights give no parameter {_dotted(path)}")
                    value = value[key]
                if tuple(np.shape(value)) != tuple(aval.shape):
                    raise ValueError(
                        f"{_dotted(path)}: the graph takes {tuple(aval.shape)}, the weights give {np.shape(value)}"
                    )
                out.append(jax.device_put(np.asarray(value, aval.dtype), cpu))  # cast by NumPy: no XLA op
        return out

    def __call__(self, audio: Any, weights: Sequence[jax.Array]) -> jax.Array:
        """Separate ``audio`` (:attr:`input_shape`) with :meth:`weight_tensors`' ``weights``: the estimates."""
        audio = np.asarray(audio, self.input_dtype)
        if audio.shape != self.input_shape:
            raise ValueError(f"the exported graph takes audio of shape {self.input_shape}, got {audio.shape}")
        with dtype_scope(self.input_dtype):
            return self._call(jax.device_put(audio, jax.devices("cpu")[0]), *weights)

    def to_bytes(self) -> bytes:
        """The header line, the JSON description and the module (:func:`core_spec.files.pack_exported`)."""
        meta = {
            "input_shape": self.input_shape,
            "input_dtype": self.input_dtype,
            "output_shape": self.output_shape,
            "output_dtype": self.output_dtype,
            "arguments": [list(p) for p in self.arguments],
        }
        return pack_exported(EXPORT_FORMAT, meta, self.module, self.executable)

    @classmethod
    def from_bytes(cls, data: bytes) -> ExportedSeparator:
        """Read :meth:`to_bytes`' output.

        Raises:
            ValueError: another format, a damaged description, or a module whose length or SHA-256 is not the
                recorded one (a truncated or overwritten file).
        """
        meta, blobs = unpack_exported(EXPORT_FORMAT, data)
        try:
            module, executable = blobs
            arguments = tuple(tuple(k if isinstance(k, int) else str(k) for k in p) for p in meta["arguments"])
            shapes = [tuple(int(v) for v in meta[k]) for k in ("input_shape", "output_shape")]
            dtypes = [canonical_dtype(meta[k]).name for k in ("input_dtype", "output_dtype")]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"a damaged exported separator description: {e}") from None
        return cls(module, arguments, shapes[0], dtypes[0], shapes[1], dtypes[1], executable)


def export_separator(separator: Separator, input_shape: Sequence[int], compile: bool = True) -> ExportedSeparator:
    """The separation of ``separator`` on audio of ``input_shape`` ``(nb_samples, nb_channels, nb_timesteps)``,
    exported for the CPU with the separator's dtype and matmul precision, and compiled
    (:meth:`ExportedSeparator.compiled`) unless ``compile`` is false.

    Raises:
        ValueError: the separator holds a variable that is not one of its weights' (a custom STFT window).
    """
    from flax import nnx  # only to export: running an exported graph needs no Flax (see umx_jax.weights)

    from .separator import Window

    if jax.tree.leaves(nnx.state(separator, Window)):
        raise ValueError("a separator with its own STFT window is not exported (the window is not a weight)")
    return _export(separator, lambda module, audio: module.forward(audio), input_shape, separator.precision, compile)


def export_network(
    model: Demucs, input_shape: Sequence[int], precision: str | None = "highest", compile: bool = True
) -> ExportedSeparator:
    """The Demucs network on a padded chunk of ``input_shape`` ``(nb_samples, audio_channels, valid_length)``,
    exported for the CPU with the model's dtype and ``precision`` (``apply_model``'s default), and compiled unless
    ``compile`` is false: what :class:`ExportedDemucs` runs.

    Raises:
        ValueError: the model uses resampling filters of its own (``set_resample_kernels``: not weights).
    """
    if model.resample_kernels:
        raise ValueError("a Demucs with its own resampling filters is not exported (they are not weights)")
    return _export(model, lambda module, mix: module(mix), input_shape, precision, compile)


def _export(
    model: Any, run: Callable[[Any, jax.Array], jax.Array], input_shape: Sequence[int], precision: str | None,
    compile: bool,
) -> ExportedSeparator:  # fmt: skip
    """``run(model, input)`` exported with the NNX state's leaves as the parameters after the input."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    arguments = tuple(_plain(path) for path, _ in leaves)
    dtype = np.dtype(model.dtype)

    def function(x: jax.Array, *params: jax.Array) -> jax.Array:
        return run(nnx.merge(graphdef, jax.tree.unflatten(treedef, params)), x)

    specs = [jax.ShapeDtypeStruct(tuple(int(n) for n in input_shape), dtype)]
    specs += [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for _, leaf in leaves]
    with dtype_scope(dtype, precision):
        exported = jax.export.export(jax.jit(function), platforms=["cpu"])(*specs)
    (out,) = exported.out_avals
    graph = ExportedSeparator(
        bytes(exported.serialize()), arguments, specs[0].shape, dtype.name, tuple(out.shape), np.dtype(out.dtype).name
    )
    return graph.compiled() if compile else graph


class ExportedDemucs(ExportedNetwork):
    """What :func:`umx_jax.apply.apply_model` and :func:`~umx_jax.apply.separate_track` use of a
    :class:`~umx_jax.demucs.Demucs`, the network run by exported graphs (:func:`export_network`), one per chunk
    shape: no Flax module, on the CPU (:class:`core_spec.exported.ExportedNetwork` with JAX's ``dtype``,
    ``device`` and ``compiled_call``).

    Args:
        config, graph, weights: as :class:`~core_spec.exported.ExportedNetwork` (``weights``: a graph's arrays,
            :meth:`ExportedSeparator.weight_tensors`).
        dtype: ``"float32"`` or ``"float64"``.
    """

    def __init__(
        self,
        config: DemucsConfig,
        dtype: str,
        graph: Callable[[tuple[int, ...]], ExportedSeparator],
        weights: Callable[[ExportedSeparator], Sequence[jax.Array]],
    ):
        super().__init__(config, graph, weights)
        self.dtype = canonical_dtype(dtype)
        self.device = jax.devices("cpu")[0]

    def compiled_call(self) -> Callable[[jax.Array], jax.Array]:
        """The network on a padded chunk: its exported graph."""
        return self.forward


def exportable(device: str) -> bool:
    """Whether a separator on ``device`` (``"cpu"``/``"gpu"``) is exported: the CPU."""
    return device == "cpu"


def _plain(path: Sequence[Any]) -> Path:
    """A ``jax.tree_util`` key path of an NNX state leaf as plain keys (the variable's own ``.value`` dropped)."""
    keys: list[str | int] = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            keys.append(key.key if isinstance(key.key, int) else str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            keys.append(key.idx)
        elif isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
            keys.append(key.name)
    return tuple(keys)


def _dotted(path: Path) -> str:
    return ".".join(str(k) for k in path)


def _trees(nb_arguments: int) -> tuple[Any, Any]:
    """The argument and result trees of the compiled call: ``nb_arguments`` positional arrays, one array out."""
    return jax.tree_util.tree_structure(((0,) * nb_arguments, {})), jax.tree_util.tree_structure(0)


def _load_executable(data: bytes, nb_arguments: int) -> Any:
    """The compiled call serialised by :meth:`ExportedSeparator.compiled`, loaded on the CPU.

    Raises:
        ValueError: the bytes are not an executable this JAX can load.
    """
    from jax.experimental.serialize_executable import deserialize_and_load

    try:
        return deserialize_and_load(data, *_trees(nb_arguments), backend="cpu")
    except Exception as e:  # an unpickling or XLA error: anything means "not loadable here"
        raise ValueError(f"the compiled executable cannot be loaded ({type(e).__name__}: {e})") from None
