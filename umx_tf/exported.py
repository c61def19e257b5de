"""A model's compiled graph kept as StableHLO: a later process runs it without building the Keras model, tracing
it or lowering it to XLA again.

TensorFlow keys its XLA cache by a traced function, so every process that separates with a :class:`Separator`
builds the Keras model (0.45 s for umxhq), traces :meth:`Separator.call` (0.45 s) and lowers the traced graph to
XLA (0.8 s with the compiled code cached on disk) before it separates anything. :func:`export_separator` takes the
graph of one input shape at the StableHLO stage (``experimental_get_compiler_ir``: TensorFlow's own lowering of
the same function); :class:`ExportedSeparator` runs it with TensorFlow's ``XlaCallModule`` operation (the one that
runs jax2tf's graphs), XLA-compiled, the weights passed as arguments. :func:`export_network` does the same for the
Demucs v2 network on one padded chunk shape, and :class:`ExportedDemucs` is what ``apply_model`` uses of a Demucs,
its network run by such graphs. The compiled program is the one the Keras path compiles, so the stems are equal
bit for bit (``parity_tests/tf/test_exported.py``, ``parity_tests/separate/test_exported_graphs.py``).

The graph's parameters are the model's variables in the order the trace captured them; the export records,
for each, the canonical name(s) and the axis permutation :mod:`umx_tf.weights` applies
(:func:`umx_tf.weights.keras_value`), so that :meth:`ExportedSeparator.weight_tensors` builds the same values
from canonical weights with no Keras model.

The bytes (:meth:`ExportedSeparator.to_bytes`): a header line, a JSON description (shapes, dtypes, arguments, the
module's length and SHA-256) and the StableHLO bytecode (:func:`core_spec.files.pack_exported`);
:meth:`ExportedSeparator.from_bytes` refuses anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from core_spec.canonical import check_canonical
from core_spec.configs import DemucsConfig, UMXSeparatorConfig
from core_spec.exported import ExportedNetwork
from core_spec.files import pack_exported, unpack_exported

from .demucs import Demucs
from .separator import Separator, _auto_jit
from .weights import entries, keras_value

__all__ = [
    "EXPORT_FORMAT",
    "ExportedArgument",
    "ExportedDemucs",
    "ExportedSeparator",
    "export_network",
    "export_separator",
    "exportable",
]

EXPORT_FORMAT = "unmix-ports tf-stablehlo 1"
"""The header line of :meth:`ExportedSeparator.to_bytes`."""

_CALL_MODULE_VERSION = 9  # XlaCallModule's serialisation version (the module is StableHLO bytecode)


@dataclass(frozen=True)
class ExportedArgument:
    """One parameter of the graph after the audio: a variable of the model.

    ``names``: its canonical name (two for a folded LSTM bias); ``perm``: the axes of the canonical array in the
    variable's layout (``None``: the same); ``shape``, ``dtype``: the variable's.
    """

    names: tuple[str, ...]
    perm: tuple[int, ...] | None
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ExportedSeparator:
    """:meth:`Separator.call` (or a Demucs network's call, :func:`export_network`) on one input shape, as
    StableHLO.

    Attributes:
        module: the StableHLO bytecode (``stablehlo_serialized``).
        arguments: the parameters after the audio, in order.
        input_shape, input_dtype: the audio ``(nb_samples, nb_channels, nb_timesteps)`` it takes.
        output_shape, output_dtype: the estimates ``(nb_samples, nb_sources, 2, nb_timesteps)`` it returns.
    """

    module: bytes
    arguments: tuple[ExportedArgument, ...]
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str

    def weight_tensors(self, weights: Mapping[str, Any], config: UMXSeparatorConfig | DemucsConfig) -> list[tf.Tensor]:
        """The parameters from canonical ``weights`` of ``config`` (a separator's ``target_models.<t>.<name>`` or
        ``{target: weights}``, a Demucs's names), as :func:`umx_tf.weights.load_weights` would assign them.

        Raises:
            WeightsMismatchError: a missing, unexpected or mis-shaped key.
            ValueError: a value whose shape is not the graph's.
        """
        checked = check_canonical(weights, config)
        out = []
        for arg in self.arguments:
            value = tf.convert_to_tensor(keras_value(arg.names, arg.perm, checked, np.dtype(arg.dtype)))
            if tuple(value.shape) != arg.shape:
                raise ValueError(f"{arg.names[0]}: the graph takes {arg.shape}, the weights give {tuple(value.shape)}")
            out.append(value)
        return out

    def __call__(self, audio: Any, weights: Sequence[tf.Tensor]) -> tf.Tensor:
        """Separate ``audio`` (:attr:`input_shape`) with :meth:`weight_tensors`' ``weights``: the estimates.

        The one ``XlaCallModule`` operation runs eagerly: TensorFlow compiles it with XLA on demand, and its
        persistent cache keys it by the operation and its shapes, not by a traced function's process-wide id, so
        any later process finds the compiled code (a ``tf.function`` around it would be found only by a process
        that traced the same functions before it)."""
        from tensorflow.compiler.tf2xla.ops import gen_xla_ops

        audio = tf.convert_to_tensor(audio, self.input_dtype)
        if tuple(audio.shape) != self.input_shape:
            raise ValueError(f"the exported graph takes audio of shape {self.input_shape}, got {tuple(audio.shape)}")
        (out,) = gen_xla_ops.xla_call_module(
            [audio, *weights], version=_CALL_MODULE_VERSION, module=self.module, Sout=[self.output_shape],
            Tout=[tf.as_dtype(self.output_dtype)], platforms=["CPU"],
        )  # fmt: skip
        return out

    def to_bytes(self) -> bytes:
        """The header line, the JSON description and the module (:func:`core_spec.files.pack_exported`)."""
        meta = {
            "input_shape": self.input_shape,
            "input_dtype": self.input_dtype,
            "output_shape": self.output_shape,
            "output_dtype": self.output_dtype,
            "arguments": [[list(a.names), a.perm, a.shape, a.dtype] for a in self.arguments],
        }
        return pack_exported(EXPORT_FORMAT, meta, self.module)

    @classmethod
    def from_bytes(cls, data: bytes) -> ExportedSeparator:
        """Read :meth:`to_bytes`' output.

        Raises:
            ValueError: another format, a damaged description, or a module whose length or SHA-256 is not the
                recorded one (a truncated or overwritten file).
        """
        meta, blobs = unpack_exported(EXPORT_FORMAT, data)
        try:
            (module,) = blobs
            arguments = tuple(
                ExportedArgument(tuple(n), None if p is None else tuple(p), tuple(s), str(d))
                for n, p, s, d in meta["arguments"]
            )
            shapes = [tuple(int(v) for v in meta[k]) for k in ("input_shape", "output_shape")]
            dtypes = [str(tf.as_dtype(meta[k]).name) for k in ("input_dtype", "output_dtype")]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"a damaged exported separator description: {e}") from None
        return cls(module, arguments, shapes[0], dtypes[0], shapes[1], dtypes[1])


def export_separator(separator: Separator, input_shape: Sequence[int]) -> ExportedSeparator:
    """The graph of ``separator.separate`` on audio of ``input_shape`` ``(nb_samples, nb_channels, nb_timesteps)``,
    traced (if it was not) and lowered by TensorFlow to StableHLO.

    Raises:
        ValueError: the separator is not XLA-compiled (``jit_compile=False``: a GPU), or its graph captures a
            value that is not one of its weights.
    """
    if not separator.jit_compile:
        raise ValueError("only an XLA-compiled separator (jit_compile=True, the CPU) can be exported")
    return _export(separator, separator._separate, input_shape)


def export_network(model: Demucs, input_shape: Sequence[int]) -> ExportedSeparator:
    """The graph of the Demucs network's XLA-compiled call (:meth:`Demucs.compiled_call`) on a chunk of
    ``input_shape`` ``(nb_samples, audio_channels, valid_length)``, lowered by TensorFlow to StableHLO: what
    :class:`ExportedDemucs` runs.

    Raises:
        ValueError: its graph captures a value that is not one of the model's weights.
    """
    return _export(model, model.compiled_call(True), input_shape)


def _export(model: Any, function: Any, input_shape: Sequence[int]) -> ExportedSeparator:
    """``function`` (a ``tf.function`` of ``model``'s call) on ``input_shape``, its captured variables as the
    graph's parameters after the input."""
    spec = tf.TensorSpec(tuple(int(n) for n in input_shape), model.compute_dtype)
    concrete = function.get_concrete_function(spec)
    by_handle = {}
    for entry in entries(model):
        variable = getattr(entry.variable, "value", entry.variable)  # the tf.Variable behind a Keras variable
        by_handle[id(variable.handle)] = entry
    arguments = []
    for captured in concrete.captured_inputs:
        entry = by_handle.get(id(captured))
        if entry is None:
            raise ValueError(f"the model's graph captures a value that is not one of its weights: {captured!r}")
        arguments.append(
            ExportedArgument(entry.names, entry.perm, tuple(entry.variable.shape), np.dtype(entry.variable.dtype).name)
        )
    module = function.experimental_get_compiler_ir(spec)(stage="stablehlo_serialized")
    output = concrete.structured_outputs
    return ExportedSeparator(
        module, tuple(arguments), tuple(spec.shape), spec.dtype.name, tuple(output.shape), output.dtype.name
    )


class ExportedDemucs(ExportedNetwork):
    """What :func:`umx_tf.apply.apply_model` and :func:`~umx_tf.apply.separate_track` use of a :class:`Demucs`,
    the network run by exported graphs (:func:`export_network`), one per chunk shape: no Keras model
    (:class:`core_spec.exported.ExportedNetwork` with TensorFlow's ``compute_dtype`` and ``compiled_call``).

    Args:
        config, graph, weights: as :class:`~core_spec.exported.ExportedNetwork` (``weights``: a graph's tensors,
            :meth:`ExportedSeparator.weight_tensors`).
        dtype: ``"float32"`` or ``"float64"``.
    """

    def __init__(
        self,
        config: DemucsConfig,
        dtype: str,
        graph: Callable[[tuple[int, ...]], ExportedSeparator],
        weights: Callable[[ExportedSeparator], Sequence[tf.Tensor]],
    ):
        super().__init__(config, graph, weights)
        self.compute_dtype = np.dtype(dtype).name

    def compiled_call(self, jit_compile: bool | None = None) -> Callable[[tf.Tensor], tf.Tensor]:
        """The network on a padded chunk ``(nb_samples, audio_channels, valid_length)``: its exported graph.

        Raises:
            ValueError: ``jit_compile=False`` (``apply_model`` with shifts: a graph per shifted length is not kept;
                use the Keras model).
        """
        if jit_compile is False:
            raise ValueError("an exported Demucs runs XLA-compiled graphs only (shifts need the Keras model)")
        return self.forward


def exportable(device: str) -> bool:
    """Whether a separator built on ``device`` (``"cpu"``/``"gpu"``) by default is XLA-compiled, so that
    :func:`export_separator` takes it: the CPU with no GPU visible (:class:`Separator`'s ``jit_compile=None``)."""
    return device == "cpu" and _auto_jit(None)
