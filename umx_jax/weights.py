"""Canonical weights <-> Flax NNX state, and the port's own weight file.

The canonical names and layouts are upstream's PyTorch ones (:mod:`core_spec.canonical`). This module is the one
place where they are mapped to the Flax state of :mod:`umx_jax.umx`, :mod:`umx_jax.demucs`,
:mod:`umx_jax.separator`, :mod:`umx_jax.htdemucs` and the bags of :mod:`umx_jax.htdemucs_apply`, by rule:

=================================================  ===============================================================
canonical (PyTorch)                                Flax state (``nnx.state(module)`` path)
=================================================  ===============================================================
``fcN.weight (out, in)``                           ``fcN.kernel (in, out)`` (transpose)
``bnN.{weight, bias, running_mean, running_var}``  ``bnN.{scale, bias, mean, var}``
``lstm.weight_ih_l<k>[_reverse] (4H, I)``          ``lstm.layers.<k>.kernel_ih[d] (I, 4H)`` (transpose; ``d`` = 0
                                                   forward, 1 reverse)
``lstm.weight_hh_l<k>[_reverse] (4H, H)``          ``lstm.layers.<k>.kernel_hh[d] (H, 4H)``
``lstm.bias_ih_l<k>`` + ``lstm.bias_hh_l<k>``      ``lstm.layers.<k>.bias[d]`` (folded: the sum, taken in float64)
``encoder.<i>.0`` / ``.2`` (Conv1d ``(out, in, k)``)  ``encoder.<i>.conv`` / ``.rewrite`` ``kernel (k, in, out)``
``decoder.<j>.0`` (Conv1d)                         ``decoder.<j>.rewrite.kernel (k, in, out)``
``decoder.<j>.2`` (ConvTranspose1d ``(in, out, k)``)  ``decoder.<j>.conv_tr.kernel (k, in, out)`` (unflipped)
``lstm.linear.{weight, bias}`` (Demucs)            ``lstm.linear.{kernel, bias}``
``target_models.<t>.<name>`` (separator)           ``target_models.<t>.<path>``
HTDemucs ``*.weight (out, in, *k)`` (Conv1d/2d)    ``*.kernel (*k, in, out)`` (axes moved)
HTDemucs ``*.conv_tr.weight (in, out, K[, 1])``    ``*.conv_tr.kernel (K, in, out)`` (unflipped; frequency layers
                                                   drop the width-1 axis)
HTDemucs ``*.dconv.layers.<d>.<slot>.*``           ``*.dconv.layers.<d>.layers.<slot>.*`` (an ``nnx.Sequential``)
HTDemucs norms ``*.weight (C,)``                   ``*.scale``
HTDemucs ``*.in_proj_weight (3d, d)`` / ``_bias``  ``*.in_proj.kernel (d, 3d)`` (transpose) / ``*.in_proj.bias``
HTDemucs ``linear1``, ``linear2``, ``out_proj``    ``*.kernel (in, out)`` (transpose)
HTDemucs ``*.gamma_1.scale``, ``*.gamma_2.scale``  ``*.gamma_1``, ``*.gamma_2`` (the parameters themselves)
HTDemucs ``freq_emb.embedding.weight``             ``freq_emb.embedding.embedding``
``models.<i>.<name>`` (a bag of HTDemucs)          ``models.<i>.<path>``
=================================================  ===============================================================

Gate order stays PyTorch's ``i, f, g, o`` (the columns of the transposed matrices). Going back,
:func:`to_canonical` writes a folded LSTM bias as ``bias_ih`` with ``bias_hh = 0``: the same network.

**The native file** (:func:`save_native` / :func:`load_native`): ``<stem>.msgpack``, the ``flax.serialization``
msgpack encoding of ``{"format", "config", "state", "lstm_biases"}`` where ``state`` is
``nnx.to_pure_dict(nnx.state(module, (nnx.Param, nnx.BatchStat)))`` (the nested dict of NumPy arrays that
``nnx.replace_by_pure_dict`` restores), ``config`` the :mod:`core_spec.configs` JSON of the model, and
``lstm_biases`` upstream's two LSTM biases of every layer (the state holds only their sum, so keeping them makes
``load_native`` return the canonical weights bit for bit). ``<stem>.json`` holds the same header without arrays,
for people. msgpack rather than orbax: one self-contained file, readable without a checkpoint manager or
directory layout, bit-exact for float32 arrays, and the serialisation Flax itself uses for ``nnx.State`` pytrees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from core_spec.canonical import MODEL_PREFIX, check_canonical, join_targets, per_model, per_target
from core_spec.configs import (
    BagConfig,
    DemucsConfig,
    HTDemucsConfig,
    UMXConfig,
    UMXSeparatorConfig,
    config_from_json,
    config_to_json,
)
from core_spec.files import native_header, paired_paths, write_pair
from core_spec.params import (
    WeightsMismatchError,
    check_weights,
    fold_lstm_bias,
    lstm_bias_halves,
    parameter_inventory,
)

from ._scope import canonical_dtype, default_device, dtype_scope

if TYPE_CHECKING:
    from flax import nnx

# Flax is imported by the functions that handle modules or the msgpack file, not here: the mapping between
# canonical weights and the pure state runs without it, so a command that runs an exported graph
# (umx_jax.exported) never imports Flax (0.2 s of its start).

__all__ = [
    "FORMAT",
    "WeightsMismatchError",
    "canonical_from_state",
    "load_native",
    "load_weights",
    "materialize",
    "native_paths",
    "save_native",
    "state_from_canonical",
    "to_canonical",
]

FORMAT = "unmix-ports/jax-nnx-msgpack/1"
Config = UMXConfig | UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig
PureDict = dict[Any, Any]


# --- canonical -> pure Flax state ----------------------------------------------------------------------------


def _lstm_to_state(w: Mapping[str, np.ndarray], prefix: str, layers: int, directions: int) -> PureDict:
    out: PureDict = {}
    suffixes = ("", "_reverse")[:directions]
    for k in range(layers):
        names = [f"l{k}{s}" for s in suffixes]
        out[k] = {
            "kernel_ih": np.stack([np.asarray(w[f"{prefix}weight_ih_{n}"]).T for n in names]),
            "kernel_hh": np.stack([np.asarray(w[f"{prefix}weight_hh_{n}"]).T for n in names]),
            "bias": np.stack(
                [fold_lstm_bias(w[f"{prefix}bias_ih_{n}"], w[f"{prefix}bias_hh_{n}"], np.float64) for n in names]
            ),
        }
    return {"layers": out}


def _bn_to_state(w: Mapping[str, np.ndarray], prefix: str) -> PureDict:
    return {
        "scale": w[f"{prefix}.weight"],
        "bias": w[f"{prefix}.bias"],
        "mean": w[f"{prefix}.running_mean"],
        "var": w[f"{prefix}.running_var"],
    }


def _umx_state(w: Mapping[str, np.ndarray], c: UMXConfig) -> PureDict:
    state: PureDict = {k: w[k] for k in ("input_mean", "input_scale", "output_scale", "output_mean")}
    for n in (1, 2, 3):
        state[f"fc{n}"] = {"kernel": np.asarray(w[f"fc{n}.weight"]).T}
        state[f"bn{n}"] = _bn_to_state(w, f"bn{n}")
    state["lstm"] = _lstm_to_state(w, "lstm.", c.nb_layers, c.nb_directions)
    return state


def _conv_state(w: Mapping[str, np.ndarray], prefix: str, transposed: bool = False) -> PureDict:
    weight = np.asarray(w[f"{prefix}.weight"])
    # Conv1d (out, in, k) -> (k, in, out); ConvTranspose1d (in, out, k) -> (k, in, out), unflipped
    kernel = weight.transpose(2, 0, 1) if transposed else weight.transpose(2, 1, 0)
    return {"kernel": kernel, "bias": w[f"{prefix}.bias"]}


def _demucs_state(w: Mapping[str, np.ndarray], c: DemucsConfig) -> PureDict:
    encoder: PureDict = {}
    decoder: PureDict = {}
    for i in range(c.depth):
        encoder[i] = {"conv": _conv_state(w, f"encoder.{i}.0")}
        if c.rewrite:
            encoder[i]["rewrite"] = _conv_state(w, f"encoder.{i}.2")
        slot = 2 if c.rewrite else 0
        decoder[i] = {"conv_tr": _conv_state(w, f"decoder.{i}.{slot}", transposed=True)}
        if c.rewrite:
            decoder[i]["rewrite"] = _conv_state(w, f"decoder.{i}.0")
    state: PureDict = {"encoder": encoder, "decoder": decoder}
    if c.lstm_layers:
        state["lstm"] = {
            "lstm": _lstm_to_state(w, "lstm.lstm.", c.lstm_layers, 2),
            "linear": {"kernel": np.asarray(w["lstm.linear.weight"]).T, "bias": w["lstm.linear.bias"]},
        }
    return state


def _htdemucs_rule(name: str, ndim: int) -> tuple[tuple[str | int, ...], str]:
    """Where an HTDemucs canonical name lives in the Flax state, and how its array changes: ``(path, kind)`` with
    ``kind`` one of ``"conv"`` (``(out, in, *k) -> (*k, in, out)``), ``"conv_tr"`` (``(in, out, K[, 1]) ->
    (K, in, out)``), ``"linear"`` (transpose) or ``"same"``; ``ndim`` is the canonical array's."""
    parts: list[str] = name.split(".")
    if ".dconv.layers." in name:  # upstream's Sequential slots are the nnx.Sequential's ``layers``
        at = parts.index("dconv") + 3
        parts.insert(at, "layers")
    leaf, parent = parts[-1], parts[-2]
    kind = "same"
    if leaf in ("in_proj_weight", "in_proj_bias"):
        parts[-1:] = ["in_proj", "kernel" if leaf == "in_proj_weight" else "bias"]
        kind = "linear" if leaf == "in_proj_weight" else "same"
    elif parent in ("gamma_1", "gamma_2") and leaf == "scale":
        parts.pop()
    elif name == "freq_emb.embedding.weight":
        parts[-1] = "embedding"
    elif leaf == "weight":
        if parent == "conv_tr":
            kind, parts[-1] = "conv_tr", "kernel"
        elif ndim >= 3:
            kind, parts[-1] = "conv", "kernel"
        elif ndim == 2:
            kind, parts[-1] = "linear", "kernel"
        else:  # GroupNorm / LayerNorm
            parts[-1] = "scale"
    return tuple(int(p) if p.isdigit() else p for p in parts), kind


def _nest(flat: Mapping[tuple[str | int, ...], np.ndarray]) -> PureDict:
    """``{path: array}`` -> the nested pure dict ``nnx.replace_by_pure_dict`` takes."""
    out: PureDict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _htdemucs_state(w: Mapping[str, np.ndarray], c: HTDemucsConfig) -> PureDict:
    flat = {}
    for name, value in w.items():
        value = np.asarray(value)
        path, kind = _htdemucs_rule(name, value.ndim)
        if kind == "conv":
            value = value.transpose(*range(2, value.ndim), 1, 0)
        elif kind == "conv_tr":
            value = value.reshape(value.shape[:3]).transpose(2, 0, 1)
        elif kind == "linear":
            value = value.T
        flat[path] = value
    return _nest(flat)


def _bag_state(weights: Mapping[str, Any], c: BagConfig) -> PureDict:
    models = per_model(weights, c, "weights")
    return {"models": {i: _htdemucs_state(w, m) for i, (w, m) in enumerate(zip(models, c.models, strict=True))}}


# --- pure Flax state -> canonical ----------------------------------------------------------------------------


def _lstm_to_canonical(state: PureDict, prefix: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, layer in sorted(state["layers"].items(), key=lambda kv: int(kv[0])):
        for d, suffix in enumerate(("", "_reverse")[: np.shape(layer["bias"])[0]]):
            name = f"l{k}{suffix}"
            bias = np.asarray(layer["bias"][d])
            out[f"{prefix}weight_ih_{name}"] = np.asarray(layer["kernel_ih"][d]).T
            out[f"{prefix}weight_hh_{name}"] = np.asarray(layer["kernel_hh"][d]).T
            out[f"{prefix}bias_ih_{name}"] = bias
            out[f"{prefix}bias_hh_{name}"] = np.zeros_like(bias)
    return out


def _umx_canonical(state: PureDict) -> dict[str, np.ndarray]:
    out = {k: np.asarray(state[k]) for k in ("input_mean", "input_scale", "output_scale", "output_mean")}
    for n in (1, 2, 3):
        out[f"fc{n}.weight"] = np.asarray(state[f"fc{n}"]["kernel"]).T
        bn = state[f"bn{n}"]
        out.update(
            {
                f"bn{n}.weight": np.asarray(bn["scale"]),
                f"bn{n}.bias": np.asarray(bn["bias"]),
                f"bn{n}.running_mean": np.asarray(bn["mean"]),
                f"bn{n}.running_var": np.asarray(bn["var"]),
            }
        )
    out.update(_lstm_to_canonical(state["lstm"], "lstm."))
    return out


def _conv_canonical(state: PureDict, prefix: str, transposed: bool = False) -> dict[str, np.ndarray]:
    kernel = np.asarray(state["kernel"])
    weight = kernel.transpose(1, 2, 0) if transposed else kernel.transpose(2, 1, 0)
    return {f"{prefix}.weight": weight, f"{prefix}.bias": np.asarray(state["bias"])}


def _demucs_canonical(state: PureDict, c: DemucsConfig) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    slot = 2 if c.rewrite else 0
    for i in range(c.depth):
        enc, dec = state["encoder"][i], state["decoder"][i]
        out.update(_conv_canonical(enc["conv"], f"encoder.{i}.0"))
        if c.rewrite:
            out.update(_conv_canonical(enc["rewrite"], f"encoder.{i}.2"))
            out.update(_conv_canonical(dec["rewrite"], f"decoder.{i}.0"))
        out.update(_conv_canonical(dec["conv_tr"], f"decoder.{i}.{slot}", transposed=True))
    if c.lstm_layers:
        out.update(_lstm_to_canonical(state["lstm"]["lstm"], "lstm.lstm."))
        out["lstm.linear.weight"] = np.asarray(state["lstm"]["linear"]["kernel"]).T
        out["lstm.linear.bias"] = np.asarray(state["lstm"]["linear"]["bias"])
    return out


def _htdemucs_canonical(state: PureDict, c: HTDemucsConfig) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, shape in parameter_inventory(c):
        path, kind = _htdemucs_rule(name, len(shape))
        value = state
        for key in path:
            value = value[key]
        value = np.asarray(value)
        if kind == "conv":
            value = value.transpose(value.ndim - 1, value.ndim - 2, *range(value.ndim - 2))
        elif kind == "conv_tr":
            value = value.transpose(1, 2, 0).reshape(shape)
        elif kind == "linear":
            value = value.T
        out[name] = value
    return out


def _bag_canonical(state: PureDict, c: BagConfig) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i, model in enumerate(c.models):
        out.update({f"{MODEL_PREFIX}{i}.{k}": v for k, v in _htdemucs_canonical(state["models"][i], model).items()})
    return out


# --- modules -----------------------------------------------------------------------------------------------


def _pure(module: nnx.Module) -> PureDict:
    from flax import nnx

    state = nnx.state(module, (nnx.Param, nnx.BatchStat))
    return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


_CONFIGS = (UMXConfig, UMXSeparatorConfig, DemucsConfig, HTDemucsConfig, BagConfig)


def _config_of(module: nnx.Module) -> Config:
    """The module's config (what the mapping dispatches on): an ``OpenUnmix``, ``Separator``, ``Demucs``,
    ``HTDemucs`` or a bag of them."""
    config = getattr(module, "config", None)
    if not isinstance(config, _CONFIGS):
        raise TypeError(f"no canonical weights for {type(module).__name__}")
    return config


def load_weights(module: nnx.Module, weights: Mapping[str, Any]) -> None:
    """Replace ``module``'s parameters (in place, in its dtype and on its devices) by canonical ``weights``
    (an ``OpenUnmix``, a ``Separator``: ``{target: {name: array}}`` or ``target_models.<t>.<name>``, a ``Demucs``,
    an ``HTDemucs``, a bag of them: ``models.<i>.<name>``)."""
    from flax import nnx

    config = _config_of(module)
    if isinstance(config, UMXSeparatorConfig):
        for target, w in per_target(weights, config.separator.targets).items():
            load_weights(module.target_models[target], w)
        return
    pure = state_from_canonical(config, weights)
    state = nnx.state(module, (nnx.Param, nnx.BatchStat))
    current = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(
        state, jax.tree.map(lambda old, new: jax.device_put(jnp.asarray(new, old.dtype), old.sharding), current, pure)
    )
    nnx.update(module, state)


def to_canonical(module: nnx.Module) -> dict[str, np.ndarray]:
    """Canonical weights of a module (NumPy, the module's dtype); LSTM biases folded into ``bias_ih``."""
    return canonical_from_state(_config_of(module), _pure(module))


# --- the native file -----------------------------------------------------------------------------------------


def native_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.msgpack, <stem>.json)`` for a path given as the stem or either file (other dots stay)."""
    return paired_paths(path, ".msgpack")


def _lstm_biases(config: Config, weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Upstream's two biases of every LSTM layer, float32 (what the folded state cannot give back)."""
    return {k: np.asarray(v, np.float32) for k, v in check_canonical(weights, config, "weights").items() if _is_bias(k)}


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith(("bias_ih", "bias_hh"))


def save_native(path: str | os.PathLike, weights: Mapping[str, Any], config: Config, force: bool = False) -> list[Path]:
    """Write canonical ``weights`` as the JAX port's native file (see the module docstring).

    Args:
        path: ``<stem>``, ``<stem>.msgpack`` or ``<stem>.json``.
        weights: canonical arrays (checked against the inventory of ``config``; stored as float32).
        config: the model config.
        force: overwrite existing files.

    Returns:
        ``[<stem>.msgpack, <stem>.json]``.
    """
    from flax import serialization

    msgpack_path, json_path = native_paths(path)
    state = state_from_canonical(config, weights)
    state = jax.tree.map(lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float32)), state)
    payload = {
        "format": FORMAT,
        "config": config_to_json(config),
        "state": _str_keys(state),
        "lstm_biases": _lstm_biases(config, weights),
    }
    data = serialization.msgpack_serialize(payload)
    return write_pair(msgpack_path, json_path, lambda tmp: Path(tmp).write_bytes(data), native_header(FORMAT, config),
                      force)  # fmt: skip


def _str_keys(tree: Any) -> Any:
    """Integer keys (list indices of the state) as strings: msgpack maps keep one key type."""
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _int_keys(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree


def _read_native(path: str | os.PathLike) -> tuple[PureDict, Config, dict[str, np.ndarray]]:
    from flax import serialization

    msgpack_path, _ = native_paths(path)
    if not msgpack_path.exists():
        raise FileNotFoundError(f"native JAX weights {msgpack_path} not found")
    payload = serialization.msgpack_restore(msgpack_path.read_bytes())
    if payload.get("format") != FORMAT:
        raise ValueError(f"{msgpack_path}: format {payload.get('format')!r}, expected {FORMAT!r}")
    config = config_from_json(payload["config"])
    return _int_keys(payload["state"]), config, dict(payload.get("lstm_biases", {}))


def load_native(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Config]:
    """Read a native file: ``(canonical weights, config)``, bit for bit what :func:`save_native` was given
    (minus legacy keys), checked against the inventory. Upstream's two LSTM biases come back where they still
    fold to the state's bias (:func:`core_spec.params.lstm_bias_halves`), else the folded bias and zeros."""
    state, config, biases = _read_native(path)
    weights = canonical_from_state(config, state)
    for name in biases:
        if name not in weights:
            raise WeightsMismatchError([], [(name, tuple(np.shape(biases[name])))], [], str(path))
    for name in [k for k in weights if k.rsplit(".", 1)[-1].startswith("bias_ih")]:
        twin = name[: name.rindex("bias_ih")] + "bias_hh" + name[name.rindex("bias_ih") + 7 :]
        if name in biases and twin in biases:
            weights[name], weights[twin] = lstm_bias_halves(weights[name], biases[name], biases[twin])
    return weights, config


def state_from_canonical(config: Config, weights: Mapping[str, Any]) -> PureDict:
    """The pure Flax state (nested dict of NumPy arrays, canonical dtype) of canonical ``weights``.

    The weights are checked against the inventory of ``config`` first (legacy keys and ``num_batches_tracked``
    dropped); a mismatch raises :class:`core_spec.params.WeightsMismatchError` naming every key.
    """
    if isinstance(config, UMXSeparatorConfig):
        nested = per_target(weights, config.separator.targets, "weights")
        return {
            "target_models": {
                t: _umx_state(check_weights(w, config.model, f"weights [target {t}]"), config.model)
                for t, w in nested.items()
            }
        }
    if isinstance(config, UMXConfig):
        return _umx_state(check_weights(weights, config), config)
    if isinstance(config, DemucsConfig):
        return _demucs_state(check_weights(weights, config), config)
    if isinstance(config, HTDemucsConfig):
        return _htdemucs_state(check_weights(weights, config), config)
    if isinstance(config, BagConfig):
        return _bag_state(weights, config)
    raise TypeError(f"no Flax model for {type(config).__name__}")


def canonical_from_state(config: Config, state: PureDict) -> dict[str, np.ndarray]:
    """Canonical weights (inventory order, the state's dtype) of a pure Flax state; LSTM biases come out folded
    (``bias_ih`` = the sum, ``bias_hh`` = 0)."""
    if isinstance(config, UMXSeparatorConfig):
        per_target = {t: _umx_canonical(state["target_models"][t]) for t in config.separator.targets}
        return join_targets({t: check_weights(w, config.model) for t, w in per_target.items()})
    if isinstance(config, UMXConfig):
        return check_weights(_umx_canonical(state), config)
    if isinstance(config, DemucsConfig):
        return check_weights(_demucs_canonical(state, config), config)
    if isinstance(config, HTDemucsConfig):
        return check_weights(_htdemucs_canonical(state, config), config)
    if isinstance(config, BagConfig):
        return check_weights(_bag_canonical(state, config), config)
    raise TypeError(f"no Flax model for {type(config).__name__}")


def materialize(
    make: Callable[[], nnx.Module],
    config: UMXConfig | DemucsConfig | HTDemucsConfig | BagConfig,
    weights: Mapping[str, Any],
    dtype: Any = jnp.float32,
    device: Any = None,
) -> nnx.Module:
    """The module ``make()`` builds, holding canonical ``weights``, without a random initialisation first.

    ``make`` runs under ``nnx.eval_shape`` (abstract, shape-only parameters: nothing is allocated or drawn), then
    the parameters are the weights (checked against ``config``'s inventory) in ``dtype`` on ``device`` (a
    ``jax.Device``, ``"cpu"``, ``"gpu"`` or ``None``: JAX's default; float64 under ``jax.enable_x64``).
    """
    from flax import nnx

    dtype = canonical_dtype(dtype)
    leaves, treedef = jax.tree.flatten(state_from_canonical(config, weights))
    with dtype_scope(dtype), default_device(device):
        graphdef, params = _abstract(make)
        for i in range(len(leaves)):  # each NumPy leaf freed once it is on the device, not all at the end
            leaves[i] = jnp.asarray(leaves[i], dtype)
        nnx.replace_by_pure_dict(params, jax.tree.unflatten(treedef, leaves))
        return nnx.merge(graphdef, params)


_ABSTRACT: dict[Any, tuple[Any, Any]] = {}  # a few abstract models by their constructor call (see _abstract)


def _abstract(make: Callable[[], nnx.Module]) -> tuple[Any, Any]:
    """``nnx.split(nnx.eval_shape(make))``, the abstract state a fresh copy (it is filled in place). Cached when
    ``make`` is a ``functools.partial`` of hashable arguments (``Cls.from_config(config, dtype=...)``): tracing a
    constructor abstractly costs seconds for HTDemucs (Flax's counter of random draws), and a bag often holds
    several models of one config."""
    from flax import nnx

    key = None
    if isinstance(make, partial):
        key = (make.func, make.args, tuple(sorted(make.keywords.items())), jax.config.jax_enable_x64)
        try:
            hash(key)
        except TypeError:
            key = None
    if key is None:
        return nnx.split(nnx.eval_shape(make))
    if key not in _ABSTRACT:
        if len(_ABSTRACT) >= 8:
            _ABSTRACT.pop(next(iter(_ABSTRACT)))
        _ABSTRACT[key] = nnx.split(nnx.eval_shape(make))
    graphdef, params = _ABSTRACT[key]
    return graphdef, jax.tree.map(lambda leaf: leaf, params)
