"""Canonical weights <-> Keras weights, and the port's own weight file (Keras ``.weights.h5``).

The canonical names and layouts are upstream's PyTorch ones (:mod:`core_spec.canonical`). This module is the one
place where they are mapped to the Keras variables of :mod:`umx_tf.umx`, :mod:`umx_tf.demucs` and
:mod:`umx_tf.separator`, by rule:

==================================================  ==============================================================
canonical (PyTorch)                                 Keras variable
==================================================  ==============================================================
``fcN.weight (out, in)``                            ``fcN.kernel (in, out)`` (transpose)
``bnN.{weight, bias, running_mean, running_var}``   ``bnN.{gamma, beta, moving_mean, moving_variance}``
``lstm.weight_ih_l<k>[_reverse] (4H, I)``           ``lstm[k].{forward,backward}_layer.cell.kernel (I, 4H)``
``lstm.weight_hh_l<k>[_reverse] (4H, H)``           ``... .cell.recurrent_kernel (H, 4H)`` (transpose)
``lstm.bias_ih_l<k>`` + ``lstm.bias_hh_l<k>``       ``... .cell.bias (4H)`` (folded: the sum, taken in float64)
``input_mean``, ``input_scale``, ``output_*``       the model's own weights of the same name
``encoder.<i>.<s>.weight (out, in, k)``             ``encoder[i].layers[s].kernel (k, in, out)`` (``Conv1D``)
``decoder.<j>.0.weight (out, in, k)``               ``decoder[j].layers[0].kernel (k, in, out)`` (``Conv1D``)
``decoder.<j>.2.weight (in, out, k)``               ``decoder[j].layers[2].kernel (k, out, in)``
                                                    (``Conv1DTranspose``; transpose ``(2, 1, 0)``, no flip)
``lstm.lstm.*``, ``lstm.linear.*`` (Demucs)         ``lstm.lstm[k]...``, ``lstm.linear.{kernel, bias}``
``target_models.<t>.<name>`` (separator)            ``target_models[t]`` and the rules above
HTDemucs ``*.weight (out, in, k)`` (Conv1d)         ``*.kernel (k, in, out)`` (:class:`~umx_tf.htdemucs_layers.Conv`)
HTDemucs ``*.weight (out, in, kh, kw)`` (Conv2d)    ``*.kernel (kh, kw, in, out)`` (axes ``(2, 3, 1, 0)``)
HTDemucs ``*.conv_tr.weight (in, out, K[, 1])``     ``*.conv_tr.kernel (K[, 1], out, in)`` (no flip)
HTDemucs ``*.dconv.layers.<d>.{0,1,3,4,6}``         ``dconv.layers[d].{conv, norm, conv_out, norm_out, layer_scale}``
HTDemucs norms ``*.weight``, ``*.bias``             ``*.gamma``, ``*.beta``
HTDemucs ``*.in_proj_weight (3d, d)`` / ``_bias``   ``*.in_proj_kernel (d, 3d)`` (transpose) / ``*.in_proj_bias``
HTDemucs ``linear1``, ``linear2``, ``out_proj``     ``*.kernel (in, out)`` (transpose)
HTDemucs ``channel_*sampler*.weight (out, in, 1)``  ``*.kernel (1, in, out)``
HTDemucs ``*.gamma_1.scale``, ``*.gamma_2.scale``   ``*.gamma_1``, ``*.gamma_2`` (transformer layers' weights)
HTDemucs ``freq_emb.embedding.weight``              ``freq_emb.embeddings``
``models.<i>.<name>`` (a bag of HTDemucs)          ``models[i]`` and the HTDemucs rules
==================================================  ==============================================================

Keras's gate order ``i, f, c, o`` is PyTorch's ``i, f, g, o``, so LSTM matrices are only transposed. Keras's
LSTM has one bias: going back, :func:`to_canonical` writes the folded bias as ``bias_ih`` with ``bias_hh = 0``
(the same network).

**The native file** (:func:`save_native` / :func:`load_native`): ``<stem>.weights.h5``, written by
``keras.Model.save_weights`` (so ``model.load_weights(path)`` reads it into a model built from the config), plus
an ``unmix_ports`` group that Keras ignores, holding the config (attribute ``config``) and upstream's two LSTM
biases of every layer (``lstm_biases/<name>``: the Keras variables hold only their sum; keeping them makes
:func:`load_native` return the canonical weights bit for bit). ``<stem>.json`` beside it holds the format and
the :mod:`core_spec.configs` JSON, for people and for :func:`load_native`.

This module imports no model module (the models import it; :mod:`umx_tf.build` builds them): it dispatches on the
type of ``model.config``, and the Keras model behind a native file comes from Keras's registry of serialisable
classes (:func:`_keras_model`). ``tf_device`` / ``device_scope`` are re-exported from ``umx_tf._device``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from core_spec.canonical import MODEL_PREFIX, check_canonical
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig, config_from_json
from core_spec.files import native_header, paired_paths, read_native_header, refuse_overwrite, write_pair
from core_spec.params import WeightsMismatchError, fold_lstm_bias, lstm_bias_halves

from ._device import device_scope, tf_device

if TYPE_CHECKING:
    from .demucs import Demucs
    from .htdemucs import HTDemucs
    from .htdemucs_apply import BagOfModels
    from .separator import Separator
    from .umx import OpenUnmix

    Model = OpenUnmix | Separator | Demucs | HTDemucs | BagOfModels

__all__ = [
    "FORMAT",
    "WeightsMismatchError",
    "device_scope",
    "entries",
    "keras_value",
    "load_native",
    "load_weights",
    "native_config",
    "native_paths",
    "save_native",
    "tf_device",
    "to_canonical",
]

FORMAT = "unmix-ports/keras-weights-h5/1"
SUFFIX = ".weights.h5"
Config = UMXConfig | UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig


# canonical <-> Keras layouts as axis permutations, each its own inverse
_T = (1, 0)  # torch (out, in) <-> Keras (in, out)
_CONV = (2, 1, 0)  # torch (out, in, k) <-> Keras (k, in, out); transposed (in, out, k) <-> (k, out, in): no flip
_CONV2D = (2, 3, 1, 0)  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out); transposed (in, out, ..) -> (.., out, in)
_CONV2D_BACK = (3, 2, 0, 1)  # its inverse
_SAME = None


@dataclass(frozen=True)
class _Entry:
    """One Keras variable and the canonical array(s) it holds.

    ``names`` is one canonical name, or ``(bias_ih, bias_hh)`` for a folded LSTM bias. ``perm`` permutes the axes of
    the canonical layout into Keras's (``None``: the same layout); ``back`` is its inverse where it is not an
    involution (the 4-D kernels of HTDemucs).
    """

    names: tuple[str, ...]
    variable: keras.Variable
    perm: tuple[int, ...] | None
    back: tuple[int, ...] | None = None

    def to_keras(self, a: Any) -> np.ndarray:
        """A canonical array in Keras's layout (NumPy, contiguous)."""
        a = np.asarray(a)
        return a if self.perm is None else np.ascontiguousarray(a.transpose(self.perm))

    def to_canonical(self, a: Any) -> np.ndarray:
        """A Keras-layout array in the canonical layout (NumPy, contiguous)."""
        a = np.asarray(a)
        perm = self.back or self.perm
        return a if perm is None else np.ascontiguousarray(a.transpose(perm))


def _lstm_entries(prefix: str, stack: list[keras.layers.Layer]) -> Iterator[_Entry]:
    """``nn.LSTM`` names of a list of Keras ``Bidirectional(LSTM)`` / ``LSTM`` layers (one per layer)."""
    for k, layer in enumerate(stack):
        if isinstance(layer, keras.layers.Bidirectional):
            directions = [("", layer.forward_layer), ("_reverse", layer.backward_layer)]
        else:
            directions = [("", layer)]
        for suffix, rnn in directions:
            key = f"l{k}{suffix}"
            cell = rnn.cell
            yield _Entry((f"{prefix}weight_ih_{key}",), cell.kernel, _T)
            yield _Entry((f"{prefix}weight_hh_{key}",), cell.recurrent_kernel, _T)
            yield _Entry((f"{prefix}bias_ih_{key}", f"{prefix}bias_hh_{key}"), cell.bias, _SAME)


def _batch_norm_entries(prefix: str, layer: keras.layers.BatchNormalization) -> Iterator[_Entry]:
    yield _Entry((f"{prefix}.weight",), layer.gamma, _SAME)
    yield _Entry((f"{prefix}.bias",), layer.beta, _SAME)
    yield _Entry((f"{prefix}.running_mean",), layer.moving_mean, _SAME)
    yield _Entry((f"{prefix}.running_var",), layer.moving_variance, _SAME)


def _umx_entries(model: OpenUnmix, prefix: str = "") -> Iterator[_Entry]:
    for name in ("input_mean", "input_scale", "output_scale", "output_mean"):
        yield _Entry((f"{prefix}{name}",), getattr(model, name), _SAME)
    for index in (1, 2, 3):
        yield _Entry((f"{prefix}fc{index}.weight",), getattr(model, f"fc{index}").kernel, _T)
        yield from _batch_norm_entries(f"{prefix}bn{index}", getattr(model, f"bn{index}"))
    yield from _lstm_entries(f"{prefix}lstm.", model.lstm)


def _demucs_entries(model: Demucs) -> Iterator[_Entry]:
    for group, sequences in (("encoder", model.encoder), ("decoder", model.decoder)):
        for index, seq in enumerate(sequences):
            for slot, layer in enumerate(seq.layers):
                if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv1DTranspose)):
                    yield _Entry((f"{group}.{index}.{slot}.weight",), layer.kernel, _CONV)
                    yield _Entry((f"{group}.{index}.{slot}.bias",), layer.bias, _SAME)
    if model.lstm is not None:
        yield from _lstm_entries("lstm.lstm.", model.lstm.lstm)
        yield _Entry(("lstm.linear.weight",), model.lstm.linear.kernel, _T)
        yield _Entry(("lstm.linear.bias",), model.lstm.linear.bias, _SAME)


def _kernel_entries(prefix: str, layer: Any) -> Iterator[_Entry]:
    """A convolution (``Conv`` / ``ConvTranspose`` / ``Conv1x1``, 1-D or 2-D) of HTDemucs: ``weight``, ``bias``."""
    if len(layer.kernel.shape) == 4:
        yield _Entry((f"{prefix}.weight",), layer.kernel, _CONV2D, _CONV2D_BACK)
    else:
        yield _Entry((f"{prefix}.weight",), layer.kernel, _CONV)
    yield _Entry((f"{prefix}.bias",), layer.bias, _SAME)


def _norm_entries(prefix: str, layer: Any) -> Iterator[_Entry]:
    yield _Entry((f"{prefix}.weight",), layer.gamma, _SAME)
    yield _Entry((f"{prefix}.bias",), layer.beta, _SAME)


def _dense_entries(prefix: str, layer: keras.layers.Dense) -> Iterator[_Entry]:
    yield _Entry((f"{prefix}.weight",), layer.kernel, _T)
    yield _Entry((f"{prefix}.bias",), layer.bias, _SAME)


def _hlayer_entries(prefix: str, layer: Any) -> Iterator[_Entry]:
    """An ``HEncLayer`` / ``HDecLayer``: its convolutions, norms and DConv (upstream's slots 0, 1, 3, 4, 6)."""
    for name in ("conv", "conv_tr", "rewrite"):
        sub = getattr(layer, name, None)
        if sub is not None:
            yield from _kernel_entries(f"{prefix}.{name}", sub)
    for name in ("norm1", "norm2"):
        if getattr(layer, name) is not None:
            yield from _norm_entries(f"{prefix}.{name}", getattr(layer, name))
    if layer.dconv is not None:
        for d, block in enumerate(layer.dconv.layers):
            p = f"{prefix}.dconv.layers.{d}"
            yield from _kernel_entries(f"{p}.0", block.conv)
            yield from _norm_entries(f"{p}.1", block.norm)
            yield from _kernel_entries(f"{p}.3", block.conv_out)
            yield from _norm_entries(f"{p}.4", block.norm_out)
            yield _Entry((f"{p}.6.scale",), block.layer_scale.scale, _SAME)


def _attention_entries(prefix: str, attn: Any) -> Iterator[_Entry]:
    yield _Entry((f"{prefix}.in_proj_weight",), attn.in_proj_kernel, _T)
    yield _Entry((f"{prefix}.in_proj_bias",), attn.in_proj_bias, _SAME)
    yield from _dense_entries(f"{prefix}.out_proj", attn.out_proj)


def _transformer_layer_entries(prefix: str, layer: Any) -> Iterator[_Entry]:
    for name in ("self_attn", "cross_attn"):
        if hasattr(layer, name):
            yield from _attention_entries(f"{prefix}.{name}", getattr(layer, name))
    yield from _dense_entries(f"{prefix}.linear1", layer.linear1)
    yield from _dense_entries(f"{prefix}.linear2", layer.linear2)
    for name in ("norm1", "norm2", "norm3", "norm_out"):
        if hasattr(layer, name):
            yield from _norm_entries(f"{prefix}.{name}", getattr(layer, name))
    yield _Entry((f"{prefix}.gamma_1.scale",), layer.gamma_1, _SAME)
    yield _Entry((f"{prefix}.gamma_2.scale",), layer.gamma_2, _SAME)


def _htdemucs_entries(model: HTDemucs, prefix: str = "") -> Iterator[_Entry]:
    for group in ("encoder", "decoder", "tencoder", "tdecoder"):
        for index, layer in enumerate(getattr(model, group)):
            yield from _hlayer_entries(f"{prefix}{group}.{index}", layer)
    if model.freq_emb is not None:
        yield _Entry((f"{prefix}freq_emb.embedding.weight",), model.freq_emb.embeddings, _SAME)
    for name in ("channel_upsampler", "channel_downsampler", "channel_upsampler_t", "channel_downsampler_t"):
        if getattr(model, name) is not None:
            yield from _kernel_entries(f"{prefix}{name}", getattr(model, name))
    ct = model.crosstransformer
    if ct is not None:
        yield from _norm_entries(f"{prefix}crosstransformer.norm_in", ct.norm_in)
        yield from _norm_entries(f"{prefix}crosstransformer.norm_in_t", ct.norm_in_t)
        for branch in ("layers", "layers_t"):
            for index, layer in enumerate(getattr(ct, branch)):
                yield from _transformer_layer_entries(f"{prefix}crosstransformer.{branch}.{index}", layer)


def load_weights(model: Model, weights: Mapping[str, Any]) -> None:
    """Assign canonical arrays (e.g. :func:`core_spec.seeded.random_weights`) to ``model``'s variables, in its
    dtype. For a separator, pass ``target_models.<target>.<name>`` keys or ``{target: weights}``.

    Raises:
        WeightsMismatchError: naming every missing, unexpected or mis-shaped key.
    """
    checked = check_canonical(weights, model.config)
    for entry in entries(model):
        entry.variable.assign(keras_value(entry.names, entry.perm, checked, np.dtype(entry.variable.dtype)))


def to_canonical(model: Model) -> dict[str, np.ndarray]:
    """``model``'s weights as canonical float32 arrays, in inventory order (a folded LSTM bias becomes
    ``bias_ih``, with ``bias_hh = 0``)."""
    out: dict[str, np.ndarray] = {}
    for entry in entries(model):
        value = entry.to_canonical(np.asarray(entry.variable.numpy())).astype(np.float32)
        out[entry.names[0]] = np.ascontiguousarray(value)
        if len(entry.names) == 2:
            out[entry.names[1]] = np.zeros_like(value)
    return check_canonical(out, model.config, f"{type(model).__name__} weights")


# --- the native file ------------------------------------------------------------------------------------------


def native_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.weights.h5, <stem>.json)`` for ``<stem>``, ``<stem>.weights.h5`` or ``<stem>.json``."""
    return paired_paths(path, SUFFIX)


def save_native(path: str | os.PathLike, weights: Mapping[str, Any], config: Config, force: bool = False) -> list[Path]:
    """Write canonical ``weights`` as a Keras ``.weights.h5`` file and its JSON config (module docstring).

    Args:
        path: ``<stem>``, ``<stem>.weights.h5`` or ``<stem>.json``.
        weights: canonical arrays (checked against the inventory of ``config``; stored as float32).
        config: the model config.
        force: overwrite existing files.

    Returns:
        ``[<stem>.weights.h5, <stem>.json]``.
    """
    h5_path, json_path = native_paths(path)
    refuse_overwrite(h5_path, json_path, force=force)  # before the model is built
    checked = check_canonical(weights, config)
    model = _keras_model(config, checked)
    header = native_header(FORMAT, config, keras=keras.__version__, tensorflow=tf.__version__)
    biases = {k: np.asarray(v, np.float32) for k, v in checked.items() if "bias_ih_" in k or "bias_hh_" in k}

    def write(tmp: str) -> None:
        model.save_weights(tmp, overwrite=True)
        with h5py.File(tmp, "a") as f:
            group = f.create_group("unmix_ports")
            group.attrs["header"] = json.dumps(header, sort_keys=True)
            lstm = group.create_group("lstm_biases")
            for name, value in biases.items():
                lstm.create_dataset(name, data=value)

    return write_pair(h5_path, json_path, write, header, force=force, suffix=SUFFIX)  # Keras checks the suffix


_KERAS_CLASSES = {
    UMXConfig: "OpenUnmix",
    UMXSeparatorConfig: "Separator",
    DemucsConfig: "Demucs",
    HTDemucsConfig: "HTDemucs",
    BagConfig: "BagOfModels",
}


def _keras_model(config: Config, weights: Mapping[str, Any] | None = None) -> Model:
    """The float32 Keras model ``config`` describes (``weights`` loaded if given), for the native file's Keras side.

    The class comes from Keras's registry of serialisable objects (``umx_tf>OpenUnmix``, ``umx_tf>Separator``,
    ``umx_tf>Demucs``: each model class registers itself), the mechanism Keras rebuilds saved models with, so this
    mapping module imports no model module (model building proper is :mod:`umx_tf.build`).
    """
    name = _KERAS_CLASSES.get(type(config))
    if name is None:
        raise TypeError(f"no TensorFlow model for {type(config).__name__}")
    cls = keras.saving.get_registered_object(f"umx_tf>{name}")
    if cls is None:
        raise RuntimeError(f"umx_tf>{name} is not registered with Keras: import umx_tf first")
    model = cls.from_config(config, dtype="float32")
    if weights is not None:
        load_weights(model, weights)
    return model


def load_native(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Config]:
    """Read a native file: ``(canonical weights, config)``, bit for bit what :func:`save_native` was given,
    checked against the inventory.

    The LSTM biases come from the file's ``unmix_ports/lstm_biases`` where their float64 sum rounds to the Keras
    bias (always, for a file :func:`save_native` wrote); otherwise (a file written by ``model.save_weights``, or
    a bias changed since) the folded bias is returned as ``bias_ih`` with ``bias_hh = 0``.
    """
    h5_path, config = native_config(path)
    model = _keras_model(config)
    model.load_weights(str(h5_path))
    weights = to_canonical(model)
    stored: dict[str, np.ndarray] = {}
    with h5py.File(h5_path, "r") as f:
        if "unmix_ports/lstm_biases" in f:
            stored = {name: np.asarray(data) for name, data in f["unmix_ports/lstm_biases"].items()}
    for name in [k for k in weights if "bias_ih_" in k]:
        partner = name.replace("bias_ih_", "bias_hh_")
        if name in stored and partner in stored:
            weights[name], weights[partner] = lstm_bias_halves(weights[name], stored[name], stored[partner])
    return weights, model.config


def entries(model: Model) -> list[_Entry]:
    """Every Keras variable of ``model`` with the canonical name(s) it holds, in inventory order (by the type of
    ``model.config``: a separator's targets in order, an Open-Unmix, a Demucs)."""
    config = model.config
    if isinstance(config, UMXSeparatorConfig):
        out = []
        for target, sub in model.target_models.items():
            out += list(_umx_entries(sub, f"target_models.{target}."))
        return out
    if isinstance(config, UMXConfig):
        return list(_umx_entries(model))
    if isinstance(config, DemucsConfig):
        return list(_demucs_entries(model))
    if isinstance(config, HTDemucsConfig):
        return list(_htdemucs_entries(model))
    if isinstance(config, BagConfig):
        out = []
        for index, sub in enumerate(model.models):
            out += list(_htdemucs_entries(sub, f"{MODEL_PREFIX}{index}."))
        return out
    raise TypeError(f"expected an OpenUnmix, Separator, Demucs, HTDemucs or bag, got {type(model).__name__}")


def keras_value(names: tuple[str, ...], perm: tuple[int, ...] | None, checked: Mapping[str, Any], dtype: Any) -> Any:
    """The value of the Keras variable that holds canonical ``names`` of ``checked`` weights, in ``dtype`` and
    Keras's layout (``perm``, :class:`_Entry`): what :func:`load_weights` assigns, and what
    :mod:`umx_tf.exported` passes to an exported graph. NumPy, or a ``tf.Tensor`` where the axes are permuted
    (TensorFlow's transpose is about 5x faster than NumPy's copy for Demucs's 128-MiB LSTM matrices: 0.09
    against 0.51 s)."""
    if len(names) == 2:  # folded LSTM bias, summed in float64 (exact for float32 inputs)
        value = fold_lstm_bias(*(checked[name] for name in names), np.float64).astype(dtype)
    else:  # in the variable's dtype before the layout change: no float64 copy of a float32 model's weights
        value = np.asarray(checked[names[0]], dtype)
    return value if perm is None else tf.transpose(value, perm)


def native_config(path: str | os.PathLike) -> tuple[Path, Config]:
    """``(<stem>.weights.h5, config)`` of a native file: the config of ``<stem>.json``, or of the copy inside the h5
    file where the JSON is missing.

    Raises:
        FileNotFoundError: no ``<stem>.weights.h5``.
        ValueError: another format, or no config anywhere.
    """
    h5_path, json_path = native_paths(path)
    if not h5_path.exists():
        raise FileNotFoundError(f"native Keras weights {h5_path} not found")
    if json_path.exists():
        return h5_path, read_native_header(json_path, FORMAT, "native Keras weights")[1]
    with h5py.File(h5_path, "r") as f:
        text = f["unmix_ports"].attrs.get("header") if "unmix_ports" in f else None
    if not text:
        raise ValueError(f"{h5_path} carries no unmix-ports config and {json_path} does not exist")
    header = json.loads(text)
    if header.get("format") != FORMAT:
        raise ValueError(f"{h5_path}: format {header.get('format')!r}, expected {FORMAT!r}")
    return h5_path, config_from_json(json.dumps(header["config"]))
