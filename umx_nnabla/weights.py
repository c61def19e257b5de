"""Canonical weights <-> NNabla parameters, and the port's own weight file (``nn.save_parameters`` ``.h5``).

The canonical names and layouts are upstream's PyTorch ones (:mod:`core_spec.canonical`). This module is the one
place where they are mapped to the parameter scopes of :mod:`umx_nnabla.umx` and :mod:`umx_nnabla.demucs`, by
rule (``<upstream module path>/<NNabla function scope>/<parameter>``):

==================================================  ==============================================================
canonical (PyTorch)                                 NNabla parameter
==================================================  ==============================================================
``input_mean``, ``input_scale``, ``output_*``        the same name and shape
``fcN.weight (out, in)``                            ``fcN/affine/W (in, out)`` (transpose)
``bnN.{weight, bias, running_mean, running_var}``   ``bnN/bn/{gamma, beta, mean, var} (1, 1, n)``
``lstm.weight_ih_l0[_reverse] (4H, I)`` and         ``lstm/lstm/weight_l0 (D, 4, H, I + H)``: per direction and
``lstm.weight_hh_l0[_reverse] (4H, H)``             gate, ``[W_ih | W_hh]`` (``PF.lstm``'s packing)
``lstm.weight_{ih,hh}_l<k>``, ``k >= 1``            ``lstm/lstm/weight (L - 1, D, 4, H, D H + H)``
``lstm.bias_ih_l<k>`` + ``lstm.bias_hh_l<k>``       ``lstm/lstm/bias (L, D, 4, H)``: their sum, in float64 rounded
                                                    once to float32 (:func:`core_spec.params.fold_lstm_bias`);
                                                    the two upstream biases are also kept, unused by the
                                                    graph, as ``lstm/lstm/bias_ih`` and ``bias_hh`` (need_grad
                                                    False), so that the canonical weights come back bit for bit
``encoder.<i>.<s>.{weight, bias}`` (Conv1d)         ``encoder/<i>/<s>/conv/{W (out, in, k), b}`` (same layout)
``decoder.<j>.0.{weight, bias}`` (Conv1d)           ``decoder/<j>/0/conv/{W, b}``
``decoder.<j>.2.{weight, bias}`` (ConvTranspose1d)  ``decoder/<j>/2/deconv/{W (in, out, k), b}`` (same layout)
``lstm.lstm.*`` (Demucs)                            ``lstm/lstm/lstm/*`` as above
``lstm.linear.{weight (C, 2C), bias}``              ``lstm/linear/affine/{W (2C, C), b}``
``target_models.<t>.<name>`` (UMX separator)        ``<t>/<NNabla name>``
HTDemucs: every ``<path>.<leaf>``                    ``<path with / for .>/<leaf>``, upstream's layout unchanged
                                                    (:mod:`umx_nnabla.htdemucs`: ``F.convolution`` /
                                                    ``F.deconvolution`` take PyTorch's kernel layouts, ``F.affine``
                                                    reads a Linear's weight transposed in the graph)
``models.<i>.<name>`` (HTDemucs bag)                 ``models/<i>/<name as above>``
==================================================  ==============================================================

Going back (:func:`canonical_from_parameters`), a folded LSTM bias is split into the kept upstream pair when they
still fold to it (:func:`core_spec.params.lstm_bias_halves`), else written as ``bias_ih`` with ``bias_hh = 0``
(the same network).

**The native file** (:func:`save_native` / :func:`load_native`): ``<stem>.h5`` written by ``nn.save_parameters``
(the parameters above, float32, with their ``need_grad`` flags) and ``<stem>.json`` beside it with the format tag
and the :mod:`core_spec.configs` JSON of the model. Load it in plain NNabla with::

    with nn.parameter_scope("", params):      # or the global scope
        nn.load_parameters("model.h5")

``unmix-convert --to nnabla`` writes it (in ``.venv-nnabla``: ``python -m unmix.convert_targets nnabla IN OUT``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nnabla as nn
import numpy as np

from core_spec.canonical import join_targets, per_target
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig
from core_spec.devices import device_name, dtype_name
from core_spec.files import native_header, paired_paths, read_native_header, refuse_overwrite, write_pair
from core_spec.params import (
    WeightsMismatchError,
    check_weights,
    fold_lstm_bias,
    lstm_bias_halves,
    parameter_inventory,
)

from ._context import device_context

if TYPE_CHECKING:  # the models are only annotations here: this module imports no model (no import cycle)
    from .demucs import Demucs
    from .htdemucs import HTDemucs
    from .htdemucs_apply import BagOfModels
    from .separator import Separator
    from .umx import OpenUnmix

    Model = OpenUnmix | Demucs | Separator | HTDemucs | BagOfModels

__all__ = [
    "FORMAT",
    "WeightsMismatchError",
    "canonical_from_parameters",
    "check_device_dtype",
    "htdemucs_parameter_name",
    "load_native",
    "load_weights",
    "native_paths",
    "parameters_from_canonical",
    "save_native",
    "to_canonical",
]


FORMAT = "unmix-ports/nnabla-h5/1"
Config = UMXConfig | UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig


# need_grad of each NNabla parameter: everything upstream trains, but not the BatchNorm statistics and the kept
# upstream LSTM biases
_FIXED_LEAVES = ("mean", "var", "bias_ih", "bias_hh")


_BN = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"}


# --- loading, reading back, the native file ------------------------------------------------------------------------


def _config_of(model: Model) -> Config:
    return model.config


def _set_parameters(root: OrderedDict, params: Mapping[str, np.ndarray]) -> None:
    with nn.parameter_scope("", root):
        for name, value in params.items():
            leaf = name.rsplit("/", 1)[-1]
            var = nn.Variable.from_numpy_array(value, need_grad=leaf not in _FIXED_LEAVES)
            nn.parameter.set_parameter(name, var)


def load_weights(model: Model, weights: Mapping[str, Any]) -> None:
    """Load canonical weights into ``model`` (an :class:`~umx_nnabla.umx.OpenUnmix`, :class:`~umx_nnabla.demucs.Demucs`,
    :class:`~umx_nnabla.separator.Separator`, :class:`~umx_nnabla.htdemucs.HTDemucs` or
    :class:`~umx_nnabla.htdemucs_apply.BagOfModels`, told apart by the type of ``model.config``), replacing its
    parameters; raises :class:`WeightsMismatchError` for anything missing, unexpected or mis-shaped."""
    config = _config_of(model)
    params = parameters_from_canonical(weights, config)
    if isinstance(config, UMXSeparatorConfig):
        _set_parameters(model.params, params)
        for target in model.target_models.values():
            target.graphs.clear()
    elif isinstance(config, BagConfig):
        _set_parameters(model.params, params)
        for member in model.models:
            member.graphs.clear()
        return
    else:
        with model.parameter_scope() as scope:
            _set_parameters(scope, params)
    model.graphs.clear()  # graphs built before hold the previous parameter arrays


def to_canonical(model: Model) -> dict[str, np.ndarray]:
    """The canonical weights of ``model`` (upstream names; ``target_models.<t>.<name>`` for a separator)."""
    params = {k: v.d.copy() for k, v in model.get_parameters(grad_only=False).items()}
    return canonical_from_parameters(params, _config_of(model))


def native_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.h5, <stem>.json)`` for a path given as the stem or either file
    (:func:`core_spec.files.paired_paths`)."""
    return paired_paths(path, ".h5")


def save_native(path: str | os.PathLike, weights: Mapping[str, Any], config: Config, force: bool = False) -> list[Path]:
    """Write ``<stem>.h5`` (``nn.save_parameters``) and ``<stem>.json`` atomically; refuse to overwrite unless
    ``force``. ``weights`` are canonical (checked against ``config``'s inventory). Returns the two paths."""
    h5_path, json_path = native_paths(path)
    refuse_overwrite(h5_path, json_path, force=force)  # before the weights are checked, as the files come first
    params = parameters_from_canonical(weights, config)
    variables = OrderedDict(
        (k, nn.Variable.from_numpy_array(v, need_grad=k.rsplit("/", 1)[-1] not in _FIXED_LEAVES))
        for k, v in params.items()
    )
    header = native_header(FORMAT, config)
    # nn.save_parameters picks its format by the extension: the temporary file ends with .h5
    return write_pair(h5_path, json_path, lambda tmp: nn.save_parameters(tmp, variables), header, force, ".h5")


def _read_native(path: str | os.PathLike) -> tuple[OrderedDict[str, np.ndarray], Config]:
    h5_path, json_path = native_paths(path)
    if not h5_path.exists():
        raise FileNotFoundError(f"NNabla weights: {h5_path} not found (save_native writes <stem>.h5 and <stem>.json)")
    _, config = read_native_header(json_path, FORMAT, "NNabla weights")
    scope: OrderedDict = OrderedDict()
    with nn.parameter_scope("", scope):
        nn.load_parameters(str(h5_path))
        params = OrderedDict((k, v.d.copy()) for k, v in nn.get_parameters(grad_only=False).items())
    return params, config


def load_native(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Config]:
    """Read ``<stem>.h5`` + ``<stem>.json``: ``(canonical weights, config)``."""
    params, config = _read_native(path)
    return canonical_from_parameters(params, config), config


# --- the mapping: canonical -> NNabla ------------------------------------------------------------------------------


def _float32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def parameters_from_canonical(weights: Mapping[str, Any], config: Config) -> OrderedDict[str, np.ndarray]:
    """Canonical arrays (checked against ``config``'s inventory) -> ``{NNabla parameter name: float32 array}``.

    For a :class:`UMXSeparatorConfig` the weights may be ``target_models.<t>.<name>`` or ``{t: {name: array}}``;
    the names are ``<t>/<NNabla name>``.
    """
    if isinstance(config, UMXSeparatorConfig):
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for target, w in per_target(weights, config.separator.targets).items():
            for k, v in parameters_from_canonical(w, config.model).items():
                out[f"{target}/{k}"] = v
        return out
    checked = {k: _float32(v) for k, v in check_weights(weights, config, "canonical weights").items()}
    if isinstance(config, HTDemucsConfig | BagConfig):
        return OrderedDict((htdemucs_parameter_name(k), v) for k, v in checked.items())
    mapped = _umx_to_nnabla(checked, config) if isinstance(config, UMXConfig) else _demucs_to_nnabla(checked, config)
    return OrderedDict((k, _float32(v)) for k, v in mapped.items())


def htdemucs_parameter_name(canonical: str) -> str:
    """HTDemucs (and bags of it): the NNabla parameter of a canonical name, its dots written as scopes
    (``encoder.0.conv.weight`` -> ``encoder/0/conv/weight``); the layout is upstream's."""
    return canonical.replace(".", "/")


def _lstm_to_nnabla(w: Mapping[str, np.ndarray], prefix: str, layers: int, directions: int) -> dict[str, np.ndarray]:
    """Upstream ``{prefix}weight_ih_l<k>[_reverse]`` ... -> ``weight_l0``, ``weight``, ``bias`` (+ the kept pair)."""
    suffixes = ("", "_reverse")[:directions]
    hidden = w[f"{prefix}weight_hh_l0"].shape[1]

    def packed(k: int) -> np.ndarray:  # (D, 4, H, I + H)
        return np.stack(
            [
                np.concatenate(
                    [
                        w[f"{prefix}weight_ih_l{k}{s}"].reshape(4, hidden, -1),
                        w[f"{prefix}weight_hh_l{k}{s}"].reshape(4, hidden, hidden),
                    ],
                    axis=-1,
                )
                for s in suffixes
            ]
        )

    def biases(kind: str) -> np.ndarray:  # (L, D, 4, H)
        return np.stack(
            [np.stack([w[f"{prefix}bias_{kind}_l{k}{s}"].reshape(4, hidden) for s in suffixes]) for k in range(layers)]
        )

    out = {"weight_l0": packed(0)}
    if layers > 1:
        out["weight"] = np.stack([packed(k) for k in range(1, layers)])
    bias_ih, bias_hh = biases("ih"), biases("hh")
    out["bias"] = fold_lstm_bias(bias_ih, bias_hh, np.float32)  # one rounding of the float64 sum
    out["bias_ih"], out["bias_hh"] = bias_ih, bias_hh
    return out


def _batch_norm_to_nnabla(w: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {f"{name}/bn/{nn_name}": w[f"{name}.{leaf}"].reshape(1, 1, -1) for leaf, nn_name in _BN.items()}


def _umx_to_nnabla(w: Mapping[str, np.ndarray], c: UMXConfig) -> dict[str, np.ndarray]:
    out = {k: w[k] for k in ("input_mean", "input_scale", "output_scale", "output_mean")}
    for index in (1, 2, 3):
        out[f"fc{index}/affine/W"] = w[f"fc{index}.weight"].T
        out.update(_batch_norm_to_nnabla(w, f"bn{index}"))
    lstm = _lstm_to_nnabla(w, "lstm.", c.nb_layers, c.nb_directions)
    out.update({f"lstm/lstm/{k}": v for k, v in lstm.items()})
    return out


def _demucs_conv_names(c: DemucsConfig) -> list[tuple[str, str]]:
    """``(canonical prefix, NNabla prefix)`` of every (transposed) convolution."""
    names = []
    for i in range(c.depth):
        names.append((f"encoder.{i}.0", f"encoder/{i}/0/conv"))
        if c.rewrite:
            names.append((f"encoder.{i}.2", f"encoder/{i}/2/conv"))
    for j in range(c.depth):
        slot = 0
        if c.rewrite:
            names.append((f"decoder.{j}.0", f"decoder/{j}/0/conv"))
            slot = 2
        names.append((f"decoder.{j}.{slot}", f"decoder/{j}/{slot}/deconv"))
    return names


def _demucs_to_nnabla(w: Mapping[str, np.ndarray], c: DemucsConfig) -> dict[str, np.ndarray]:
    out = {}
    for canonical, ours in _demucs_conv_names(c):
        out[f"{ours}/W"] = w[f"{canonical}.weight"]
        out[f"{ours}/b"] = w[f"{canonical}.bias"]
    if c.lstm_layers:
        lstm = _lstm_to_nnabla(w, "lstm.lstm.", c.lstm_layers, 2)
        out.update({f"lstm/lstm/lstm/{k}": v for k, v in lstm.items()})
        out["lstm/linear/affine/W"] = w["lstm.linear.weight"].T
        out["lstm/linear/affine/b"] = w["lstm.linear.bias"]
    return out


# --- NNabla -> canonical -------------------------------------------------------------------------------------------


def canonical_from_parameters(params: Mapping[str, np.ndarray], config: Config) -> dict[str, np.ndarray]:
    """Inverse of :func:`parameters_from_canonical`; the result is checked against the inventory."""
    if isinstance(config, UMXSeparatorConfig):
        per_target = {}
        for target in config.separator.targets:
            head = f"{target}/"
            own = {k[len(head) :]: v for k, v in params.items() if k.startswith(head)}
            per_target[target] = canonical_from_parameters(own, config.model)
        return join_targets(per_target)
    p = {k: np.asarray(v) for k, v in params.items()}
    out: dict[str, np.ndarray] = {}
    try:
        if isinstance(config, HTDemucsConfig | BagConfig):
            for name, _ in parameter_inventory(config):
                out[name] = p[htdemucs_parameter_name(name)]
        elif isinstance(config, UMXConfig):
            out.update({k: p[k] for k in ("input_mean", "input_scale", "output_scale", "output_mean")})
            for index in (1, 2, 3):
                out[f"fc{index}.weight"] = p[f"fc{index}/affine/W"].T
                for leaf, nn_name in _BN.items():
                    out[f"bn{index}.{leaf}"] = p[f"bn{index}/bn/{nn_name}"].reshape(-1)
            out.update(_lstm_to_canonical(p, "lstm/lstm", "lstm."))
        else:
            for canonical, ours in _demucs_conv_names(config):
                out[f"{canonical}.weight"] = p[f"{ours}/W"]
                out[f"{canonical}.bias"] = p[f"{ours}/b"]
            if config.lstm_layers:
                out.update(_lstm_to_canonical(p, "lstm/lstm/lstm", "lstm.lstm."))
                out["lstm.linear.weight"] = p["lstm/linear/affine/W"].T
                out["lstm.linear.bias"] = p["lstm/linear/affine/b"]
    except KeyError as e:
        raise KeyError(f"NNabla parameters lack {e.args[0]!r} (have {sorted(p)[:8]}...)") from None
    return check_weights({k: np.ascontiguousarray(v) for k, v in out.items()}, config, "NNabla parameters")


def _lstm_to_canonical(p: Mapping[str, np.ndarray], scope: str, prefix: str) -> dict[str, np.ndarray]:
    w0, bias = p[f"{scope}/weight_l0"], p[f"{scope}/bias"]
    directions, _, hidden, _ = w0.shape
    layers = bias.shape[0]
    bias_ih, bias_hh = p.get(f"{scope}/bias_ih"), p.get(f"{scope}/bias_hh")
    if bias_ih is None or bias_hh is None:
        bias_ih, bias_hh = bias, np.zeros_like(bias)  # no upstream pair: the folded bias alone
    else:
        bias_ih, bias_hh = lstm_bias_halves(bias, bias_ih, bias_hh)  # a stale pair gives way to the folded bias
    out = {}
    for k in range(layers):
        packed = w0 if k == 0 else p[f"{scope}/weight"][k - 1]  # (D, 4, H, I + H)
        for d, s in enumerate(("", "_reverse")[:directions]):
            out[f"{prefix}weight_ih_l{k}{s}"] = packed[d, :, :, :-hidden].reshape(4 * hidden, -1)
            out[f"{prefix}weight_hh_l{k}{s}"] = packed[d, :, :, -hidden:].reshape(4 * hidden, hidden)
            out[f"{prefix}bias_ih_l{k}{s}"] = bias_ih[k, d].reshape(-1)
            out[f"{prefix}bias_hh_l{k}{s}"] = bias_hh[k, d].reshape(-1)
    return out


# --- devices and dtypes --------------------------------------------------------------------------------------------


def check_device_dtype(device: str = "cpu", dtype: Any = "float32") -> str:
    """The ``device`` (``"cpu"`` or ``"gpu"``) once it is usable here, for ``dtype`` float32.

    Raises:
        ValueError: ``dtype`` float64 (the port computes in float32: :mod:`umx_nnabla._context`), or an unknown name.
        RuntimeError: ``"gpu"`` without ``nnabla-ext-cuda``.
    """
    if dtype_name(dtype) != "float32":
        raise ValueError(
            f"the NNabla port computes in float32 only (NNabla {nn.__version__}'s CPU extension has no float64 "
            f"kernels); got dtype {dtype!r}"
        )
    name = device_name(device)
    device_context(name)  # raises for a GPU without the CUDA extension
    return name
