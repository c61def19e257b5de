"""The public names every port exports, module by module, and the lesson each port module mirrors: the contract
that lets a reader put the four ports side by side (``umx_torch``, ``umx_tf``, ``umx_jax``, ``umx_nnabla``), call
them the same way, and read them in the same order.

Two tables, both data only:

- :data:`PUBLIC_NAMES` is the export contract, checked at run time by ``parity_tests/spec/test_public_api.py`` for
  every port importable in the environment. A port may export more (framework-specific helpers: a graph builder in
  NNabla, a Keras layer in TensorFlow); it may not export less.
- :data:`LESSONS` is the alignment contract, checked on the source text (no import, so in both environments for all
  four ports) by :mod:`book.source_index` and ``parity_tests/spec/test_alignment*.py``: for each module of
  :data:`MODULES`, the ordered steps of the lesson, the spec's object for each step and each port's version of it.
  A port module defines its targets in the order of the rows; public framework extras come after the last target;
  private helpers (``_name``) may sit anywhere. It never redefines a :data:`SHARED` name (neutral code lives once
  in ``core_spec`` and is imported). :data:`MODULE_LAYERS` orders the modules of a port package so that imports
  only go down (no cycle). The side-by-side book (issue 17) is generated from :data:`LESSONS`, one page per
  :attr:`Lesson.page`.

Names in the tables:

- a spec object is a dotted path below ``core_spec`` whose last part is the name: ``"reference.transforms.stft"``
  is ``stft`` in ``core_spec/reference/transforms.py``, ``"shapes.center_trim"`` is in ``core_spec/shapes.py``;
- a port target is ``"name"`` (a top-level function or class), ``"Class.method"`` (the step is the body of that
  method) or ``"builtin:torch.nn.LSTM"`` (the framework's own layer: nothing is defined in the port; recorded for
  the book).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BUILTIN",
    "LESSONS",
    "MODULES",
    "MODULE_LAYERS",
    "PORTS",
    "PORT_CONSTANTS",
    "PUBLIC_NAMES",
    "SHARED",
    "Lesson",
]

PORTS = {"umx_torch": "torch", "umx_tf": "tensorflow", "umx_jax": "jax", "umx_nnabla": "nnabla"}

PUBLIC_NAMES: dict[str, tuple[str, ...]] = {
    "transforms": ("ShortSignalError", "complex_norm", "hann_window", "istft", "stft"),
    "umx": ("OpenUnmix",),
    "demucs": ("Demucs", "center_trim", "valid_length"),
    "resample": ("resample_frac",),
    "filtering": (
        "expectation_maximization",
        "expectation_maximization_planar",
        "initial_estimate",
        "upstream_atan2",
        "wiener",
        "wiener_planar",
    ),
    "separator": ("Separator", "filter_and_invert", "filter_chunks"),
    "apply": ("apply_model", "separate_track"),
    "htdemucs_spec": (
        "NORM_EPS",
        "denormalise_output",
        "ispec",
        "magnitude",
        "mask_cac",
        "normalise_input",
        "pad1d",
        "spec",
        "spec_padding",
    ),
    "htdemucs_embed": (
        "ScaledEmbedding",
        "channel_conv1x1",
        "create_2d_sin_embedding",
        "create_sin_embedding",
        "scaled_embedding",
    ),
    "htdemucs_layers": ("DConv", "HDecLayer", "HEncLayer", "LayerScale"),
    "htdemucs_transformer": (
        "TRACE_PREFIX",
        "CrossAttentionLayer",
        "CrossTransformerEncoder",
        "MultiheadAttention",
        "SelfAttentionLayer",
        "check_transformer_config",
        "transformer_trace_keys",
    ),
    "htdemucs": ("HTDemucs", "forward", "htdemucs_trace_keys", "htdemucs_valid_length"),
    "htdemucs_apply": ("SEPARATE_EPS", "BagOfModels", "apply_model", "bag_models", "separate_track"),
    "weights": (
        "FORMAT",
        "WeightsMismatchError",
        "load_native",
        "load_weights",
        "native_paths",
        "save_native",
        "to_canonical",
    ),
    "build": ("from_canonical", "from_canonical_file", "load_module"),
    "train": ("FRAMEWORK", "Trainer", "loss_and_grads"),
    # the package itself: the models, the functions of a separation, and the weights entry points
    "": (
        "Demucs",
        "OpenUnmix",
        "Separator",
        "apply_model",
        "center_trim",
        "complex_norm",
        "expectation_maximization",
        "from_canonical",
        "from_canonical_file",
        "istft",
        "load_module",
        "load_native",
        "load_weights",
        "resample_frac",
        "save_native",
        "separate_track",
        "stft",
        "to_canonical",
        "valid_length",
        "wiener",
    ),
}

BUILTIN = "builtin:"
"""Prefix of a port target that is the framework's own layer (``"builtin:torch.nn.LSTM"``)."""


@dataclass(frozen=True)
class Lesson:
    """One step of a module's lesson: the spec's object and each port's version of it.

    Attributes:
        spec: the spec's object, a dotted path below ``core_spec`` (``"reference.transforms.stft"``,
            ``"shapes.center_trim"``); ``None`` where the step has no NumPy reference (weights mapping, model
            building, the framework's trainer).
        ports: port package -> ``"name"`` | ``"Class.method"`` | ``"builtin:<framework layer>"``, one per
            :data:`PORTS` entry.
        page: the book page the step appears on (issue 17): ``"stft"``, ``"umx"``, ``"lstm"``, ``"wiener"``, ...
    """

    spec: str | None
    ports: Mapping[str, str]
    page: str


def _ports(torch: str, tf: str, jax: str, nnabla: str) -> dict[str, str]:
    return {"umx_torch": torch, "umx_tf": tf, "umx_jax": jax, "umx_nnabla": nnabla}


def _all(name: str) -> dict[str, str]:
    return _ports(name, name, name, name)


_TORCH_BN = "builtin:torch.nn.BatchNorm1d"
_PF = "builtin:nnabla.parametric_functions."

LESSONS: dict[str, tuple[Lesson, ...]] = {
    "transforms": (
        Lesson("reference.transforms.hann_window", _all("hann_window"), "stft"),
        Lesson("reference.transforms.stft", _all("stft"), "stft"),
        Lesson("reference.transforms.istft", _all("istft"), "stft"),
        Lesson("reference.transforms.complex_norm", _all("complex_norm"), "stft"),
    ),
    "layers": (
        Lesson(
            "reference.layers.linear",
            _ports("builtin:torch.nn.Linear", "builtin:keras.layers.Dense", "dense", _PF + "affine"),
            "umx.layers",
        ),
        Lesson(
            "reference.layers.batch_norm",
            _ports(_TORCH_BN, "TorchBatchNorm", "BatchNorm1d", "batch_norm"),
            "umx.layers",
        ),
        Lesson(
            "reference.layers.batch_norm_train",
            _ports(_TORCH_BN, "TorchBatchNorm.call", "BatchNorm1d.__call__", "batch_norm"),
            "train",
        ),
        Lesson("reference.layers.lstm", _ports("builtin:torch.nn.LSTM", "LSTM", "LSTM", "lstm"), "lstm"),
        Lesson("reference.layers.glu", _ports("builtin:torch.nn.GLU", "GLU", "glu", "glu"), "demucs.conv"),
        Lesson(
            "reference.layers.conv1d",
            _ports("builtin:torch.nn.Conv1d", "builtin:keras.layers.Conv1D", "conv1d", _PF + "convolution"),
            "demucs.conv",
        ),
        Lesson(
            "reference.layers.conv_transpose1d",
            _ports(
                "builtin:torch.nn.ConvTranspose1d",
                "builtin:keras.layers.Conv1DTranspose",
                "conv_transpose1d",
                _PF + "deconvolution",
            ),
            "demucs.conv",
        ),
    ),
    "umx": (
        Lesson(
            "reference.umx.open_unmix",
            _ports("OpenUnmix.forward", "OpenUnmix.call", "OpenUnmix.__call__", "OpenUnmix.__call__"),
            "umx",
        ),
    ),
    "demucs": (
        Lesson("shapes.center_trim", _all("center_trim"), "demucs.decoder"),
        Lesson(
            "reference.demucs.encoder_layer",
            _ports("encoder_layer", "encoder_layer", "EncoderLayer", "Demucs.encoder_layer"),
            "demucs.encoder",
        ),
        Lesson(
            "reference.demucs.decoder_layer",
            _ports("decoder_layer", "decoder_layer", "DecoderLayer", "Demucs.decoder_layer"),
            "demucs.decoder",
        ),
        Lesson("reference.demucs.blstm", _ports("BLSTM", "BLSTM", "BLSTM", "Demucs.blstm"), "demucs.blstm"),
        Lesson(
            "reference.demucs.demucs",
            _ports("Demucs.forward", "Demucs.call", "Demucs.__call__", "Demucs.__call__"),
            "demucs",
        ),
    ),
    "resample": (Lesson("reference.resample.resample_frac", _all("resample_frac"), "resample"),),
    "filtering": (
        Lesson("reference.filtering.upstream_atan2", _all("upstream_atan2"), "wiener"),
        Lesson(
            "reference.filtering.expectation_maximization_planar", _all("expectation_maximization_planar"), "wiener"
        ),
        Lesson("reference.filtering.initial_estimate", _all("initial_estimate"), "wiener"),
        Lesson("reference.filtering.wiener_planar", _all("wiener_planar"), "wiener"),
        Lesson("reference.filtering.wiener", _all("wiener"), "wiener"),
        Lesson("reference.filtering.expectation_maximization", _all("expectation_maximization"), "wiener"),
    ),
    "separator": (
        Lesson(
            "reference.separator.separate",
            _ports("Separator.forward", "Separator.call", "Separator.forward", "Separator.__call__"),
            "separator",
        ),
        Lesson("reference.separator.filter_chunks", _all("filter_chunks"), "separator"),
        Lesson("reference.separator.filter_and_invert", _all("filter_and_invert"), "separator"),
    ),
    "apply": (
        Lesson("reference.apply.TensorChunk", _ports("_padded", "_padded", "_Track", "_padded"), "apply_model"),
        Lesson("reference.apply._apply_valid", _all("_apply_valid"), "apply_model"),
        Lesson("reference.apply._apply_shifted", _all("_apply_shifted"), "apply_model"),
        Lesson("reference.apply.apply_model", _all("apply_model"), "apply_model"),
        Lesson("reference.apply.separate_track", _all("separate_track"), "apply_model"),
    ),
    # HTDemucs (demucs 4.x, issues 25 and 26): one module per concept, as the spec's core_spec/reference/htdemucs*.py
    "htdemucs_spec": (
        Lesson("reference.htdemucs_spec.pad1d", _all("pad1d"), "htdemucs.spec"),
        Lesson("reference.htdemucs_spec.spec", _all("spec"), "htdemucs.spec"),
        Lesson("reference.htdemucs_spec.ispec", _all("ispec"), "htdemucs.spec"),
        Lesson("reference.htdemucs_spec.magnitude", _all("magnitude"), "htdemucs.spec"),
        Lesson("reference.htdemucs_spec.mask_cac", _all("mask_cac"), "htdemucs.spec"),
        Lesson("reference.htdemucs_spec.normalise_input", _all("normalise_input"), "htdemucs.spec"),
        Lesson("reference.htdemucs_spec.denormalise_output", _all("denormalise_output"), "htdemucs.spec"),
    ),
    "htdemucs_embed": (
        Lesson("reference.htdemucs_embed.create_sin_embedding", _all("create_sin_embedding"), "htdemucs.transformer"),
        Lesson(
            "reference.htdemucs_embed.create_2d_sin_embedding", _all("create_2d_sin_embedding"), "htdemucs.transformer"
        ),
        Lesson("reference.htdemucs_embed.scaled_embedding", _all("scaled_embedding"), "htdemucs.layers"),
        Lesson("reference.htdemucs_embed.channel_conv1x1", _all("channel_conv1x1"), "htdemucs.layers"),
    ),
    "htdemucs_layers": (
        Lesson("reference.htdemucs_layers.layer_scale", _all("LayerScale"), "htdemucs.layers"),
        Lesson("reference.htdemucs_layers.dconv", _all("DConv"), "htdemucs.layers"),
        Lesson("reference.htdemucs_layers._dconv_rows", _all("_dconv_rows"), "htdemucs.layers"),
        Lesson("reference.htdemucs_layers.henc_layer", _all("HEncLayer"), "htdemucs.layers"),
        Lesson("reference.htdemucs_layers.hdec_layer", _all("HDecLayer"), "htdemucs.layers"),
    ),
    "htdemucs_transformer": (
        Lesson(
            "reference.htdemucs_transformer.multihead_attention",
            _ports("_attention", "MultiheadAttention", "MultiheadAttention", "MultiheadAttention"),
            "htdemucs.transformer",
        ),
        Lesson(
            "reference.htdemucs_transformer._feed_forward",
            _ports("_feed_forward", "_Layer._feed_forward", "_Layer._feed_forward", "_feed_forward"),
            "htdemucs.transformer",
        ),
        Lesson(
            "reference.htdemucs_transformer.self_attention_layer", _all("SelfAttentionLayer"), "htdemucs.transformer"
        ),
        Lesson(
            "reference.htdemucs_transformer.cross_attention_layer", _all("CrossAttentionLayer"), "htdemucs.transformer"
        ),
        Lesson(
            "reference.htdemucs_transformer.cross_transformer", _all("CrossTransformerEncoder"), "htdemucs.transformer"
        ),
    ),
    "htdemucs": (
        Lesson("reference.htdemucs.htdemucs_valid_length", _all("HTDemucs.valid_length"), "htdemucs"),
        Lesson(
            "reference.htdemucs.htdemucs",
            _ports("HTDemucs.forward", "HTDemucs.call", "HTDemucs.__call__", "HTDemucs.__call__"),
            "htdemucs",
        ),
    ),
    "htdemucs_apply": (
        Lesson("reference.htdemucs_apply._Chunk", _all("_Chunk"), "htdemucs.apply"),
        Lesson("reference.htdemucs_apply._apply_valid", _all("_apply_valid"), "htdemucs.apply"),
        Lesson("reference.htdemucs_apply._apply_split", _all("_apply_split"), "htdemucs.apply"),
        Lesson("reference.htdemucs_apply._apply_one", _all("_apply_one"), "htdemucs.apply"),
        Lesson("reference.htdemucs_apply.bag_models", _all("BagOfModels"), "htdemucs.apply"),
        Lesson("reference.htdemucs_apply.apply_model", _all("apply_model"), "htdemucs.apply"),
        Lesson("reference.htdemucs_apply.separate_track", _all("separate_track"), "htdemucs.apply"),
    ),
    "weights": (
        Lesson(None, _all("load_weights"), "weights"),
        Lesson(None, _all("to_canonical"), "weights"),
        Lesson(None, _all("native_paths"), "weights"),
        Lesson(None, _all("save_native"), "weights"),
        Lesson(None, _all("load_native"), "weights"),
    ),
    "build": (
        Lesson(None, _all("from_canonical"), "weights"),
        Lesson(None, _all("from_canonical_file"), "weights"),
        Lesson(None, _all("load_module"), "weights"),
    ),
    "train": (
        Lesson(None, _all("spectrogram"), "train"),
        Lesson("reference.train.umx_loss", _ports("umx_loss", "umx_loss", "umx_loss", "UMXStep.graph"), "train"),
        Lesson(
            "reference.train.demucs_loss",
            _ports("demucs_loss", "demucs_loss", "demucs_loss", "DemucsStep.graph"),
            "train",
        ),
        Lesson("reference.train.adam_step", _all("make_optimizer"), "train"),
        Lesson("epochs.EpochTrainer", _all("Trainer"), "train"),
        Lesson(None, _all("loss_and_grads"), "train"),
    ),
}
"""Module -> its lesson, in the required order (plan of issue 15, section 1.2)."""

SHARED: dict[str, tuple[str, ...]] = {
    "transforms": (
        "reference.transforms.ShortSignalError",
        "reference.transforms.min_length",
        "reference.transforms.check_length",
        "reference.transforms.istft_span",
        "reference.transforms.istft_envelope",
        "reference.transforms.check_nola",
        "reference.transforms.NOLA_FLOOR",
    ),
    "layers": ("reference.layers.BATCH_NORM_EPS", "reference.layers.BATCH_NORM_MOMENTUM"),
    "umx": (
        "reference.umx.UMX_TRACE_KEYS",
        "trace.Recorder",
        "configs.constructor_kwargs",
        "configs.config_from_arguments",
        "configs.UMX_LSTM_DROPOUT",
    ),
    "demucs": (
        "shapes.valid_length",
        "shapes.output_length",
        "reference.demucs.DEMUCS_NORM_EPS",
        "reference.demucs.demucs_trace_keys",
        "trace.Recorder",
        "configs.constructor_kwargs",
        "configs.config_from_arguments",
    ),
    "resample": (
        "reference.resample.resample_width",
        "reference.resample.resample_kernels",
        "reference.resample.checked_kernels",
    ),
    "filtering": ("reference.filtering.PI_FLOAT32", "reference.filtering.check_channels"),
    "separator": (
        "separator_settings.SeparatorSettings",
        "separator_settings.separator_kwargs",
        "reference.separator.check_sources",
        "shapes.WienerChunks",
        "shapes.wiener_chunks",
    ),
    "apply": (
        "shapes.ShiftDraws",
        "shapes.shift_draws",
        "shapes.chunk_window",
        "shapes.segment_offsets",
        "shapes.transition_weight",
        "shapes.check_transition_power",
        "shapes.check_track",
        "shapes.max_shift",
        "shapes.is_silent",
    ),
    "htdemucs_spec": ("reference.htdemucs_spec.NORM_EPS", "reference.htdemucs_spec.spec_padding"),
    "htdemucs_layers": ("reference.htdemucs_layers.DCONV_KERNEL", "reference.htdemucs_layers.HLayer"),
    "htdemucs_transformer": (
        "reference.htdemucs_transformer.TRACE_PREFIX",
        "reference.htdemucs_transformer.check_transformer_config",
        "reference.htdemucs_transformer.transformer_trace_keys",
        "configs.HTDemucsConfig",
        "trace.Recorder",
    ),
    "htdemucs": (
        "reference.htdemucs.htdemucs_trace_keys",
        "reference.htdemucs.htdemucs_valid_length",
        "reference.htdemucs_layers.encoder_layers",
        "reference.htdemucs_layers.decoder_layers",
        "configs.HTDemucsConfig",
        "trace.Recorder",
    ),
    "htdemucs_apply": (
        "reference.htdemucs_apply.SEPARATE_EPS",
        "reference.htdemucs_apply.bag_models",
        "configs.BagConfig",
        "configs.segment_fraction",
        "shapes.ShiftDraws",
        "shapes.shift_draws",
        "shapes.check_track",
        "shapes.check_transition_power",
        "shapes.htdemucs_apply_segment",
        "shapes.htdemucs_chunk_target",
    ),
    "weights": (
        "params.WeightsMismatchError",
        "params.fold_lstm_bias",
        "params.lstm_bias_halves",
        "canonical.per_target",
        "canonical.check_canonical",
        "files.atomic_write",
        "files.default_file_mode",
        "files.paired_paths",
        "files.refuse_overwrite",
        "files.native_header",
        "files.write_pair",
        "files.read_native_header",
    ),
    "build": ("canonical.load_canonical",),
    "train": (
        "reference.train.ADAM_BETAS",
        "reference.train.ADAM_EPS",
        "epochs.EpochTrainer",
        "epochs.TrainerBase",
        "epochs.steps_per_epoch",
        "epochs.save_best",
        "training.input_scaler_weights",
    ),
}
"""Module -> the framework-neutral names its port modules import from ``core_spec`` (dotted paths below
``core_spec``, as :attr:`Lesson.spec`); a port module must not define them (no copy of neutral code)."""

PORT_CONSTANTS: dict[str, tuple[str, ...]] = {"weights": ("FORMAT",), "train": ("FRAMEWORK",)}
"""Module -> public constants every port module defines, each with its own value (its native format, its name)."""

MODULES: tuple[str, ...] = (
    "transforms",
    "layers",
    "umx",
    "demucs",
    "resample",
    "filtering",
    "separator",
    "apply",
    "htdemucs_spec",
    "htdemucs_embed",
    "htdemucs_layers",
    "htdemucs_transformer",
    "htdemucs",
    "htdemucs_apply",
    "weights",
    "build",
    "train",
)
"""The module map: every port package has exactly these modules (plus ``__init__``, ``__main__`` and a private
device/context module, see :data:`MODULE_LAYERS`)."""

MODULE_LAYERS: dict[str, int] = {
    # the private device/dtype context of a port (JAX ``_scope``, NNabla ``_context``; ``_device`` if renamed)
    "_scope": 0,
    "_context": 0,
    "_device": 0,
    # building blocks and mapping: import only the private context
    "transforms": 1,
    "layers": 1,
    "resample": 1,
    "filtering": 1,
    "weights": 1,
    "htdemucs_embed": 1,
    # HTDemucs's building blocks made of the ones above (the spectrogram wrapper, the hybrid layers, the
    # cross-transformer); a port that has HTDemucs has these modules (issues 25 and 26)
    "htdemucs_spec": 2,
    "htdemucs_layers": 2,
    "htdemucs_transformer": 2,
    # the models
    "umx": 3,
    "demucs": 3,
    "htdemucs": 3,
    # what runs a model: the UMX separator, the Demucs chunked apply (v2, and v4 with bags)
    "separator": 4,
    "apply": 4,
    "htdemucs_apply": 4,
    # model construction from weights (imports the models and weights.py)
    "build": 5,
    # a separator's compiled graph kept between processes (TensorFlow: StableHLO run by XlaCallModule)
    "exported": 5,
    # entry points
    "train": 6,
    "__main__": 6,
    "__init__": 7,
}
"""Module -> layer inside a port package: a module imports (at module or function level; ``TYPE_CHECKING`` blocks
excepted) only modules of a lower layer, so no import cycle is possible. Plan of issue 15, section 1.1, with its
layer 0 split in two (the private context below the modules that use it)."""
