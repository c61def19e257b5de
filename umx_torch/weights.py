"""Canonical weights <-> PyTorch state dicts, and the checks every load goes through.

The canonical names and layouts are the upstream PyTorch ones, so the mapping is the identity: this module only
checks (against :func:`core_spec.params.parameter_inventory`), converts dtypes and devices, drops what upstream
files carry beside the weights, and reads/writes the canonical files (:mod:`core_spec.canonical`).

- ``OpenUnmix``: the 2019 ``umx``/``umxhq`` files hold ``sample_rate``, ``stft.window`` and
  ``transform.0.window`` (their model held its own STFT): dropped with a :class:`LegacyKeysWarning`.
  ``*.num_batches_tracked`` counters are optional.
- ``Separator``: keys ``target_models.<target>.<name>`` (upstream's ``Separator.state_dict()``); its
  ``sample_rate``, ``stft.window`` and ``istft.window`` buffers are dropped.
- ``Demucs``, ``HTDemucs``: exactly the inventory.
- ``BagOfModels`` (HTDemucs bags): keys ``models.<i>.<name>`` (upstream's ``BagOfModels.state_dict()``, the
  canonical bag file); :func:`load_weights` also takes one mapping per model, in bag order.

Anything else missing, unexpected or mis-shaped raises :class:`core_spec.params.WeightsMismatchError`, which
names every offending key with its expected and actual shape.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from core_spec.canonical import TARGET_PREFIX, check_canonical, load_canonical, per_target, save_canonical
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig
from core_spec.files import native_header, paired_paths, read_native_header, refuse_overwrite, write_pair
from core_spec.params import UMX_IGNORED_ON_LOAD, WeightsMismatchError, check_weights

if TYPE_CHECKING:
    from .demucs import Demucs
    from .htdemucs import HTDemucs
    from .htdemucs_apply import BagOfModels
    from .separator import Separator
    from .umx import OpenUnmix

    Module = OpenUnmix | Demucs | Separator | HTDemucs | BagOfModels

__all__ = [
    "FORMAT",
    "LegacyKeysWarning",
    "WeightsMismatchError",
    "canonical_from_state_dict",
    "load_canonical_into",
    "load_native",
    "load_weights",
    "native_paths",
    "prepare_state_dict",
    "save_canonical_from",
    "save_native",
    "state_dict_from_canonical",
    "to_canonical",
]

FORMAT = "unmix-ports/torch-state-dict/1"

# buffers of upstream's Separator.state_dict() that hold no weights
SEPARATOR_BUFFERS = ("sample_rate", "stft.window", "istft.window")

# the prefix of a bag's model weights (``models.<i>.<name>``, upstream's BagOfModels.state_dict())
MODEL_PREFIX = "models."

Config = UMXConfig | UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig


def load_weights(module: Module, weights: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
    """Load canonical arrays (e.g. :func:`core_spec.seeded.random_weights`) into ``module``, in its dtype and
    on its device. For a separator, pass ``target_models.<target>.<name>`` keys or ``{target: weights}``
    (exactly the separator's targets, :func:`core_spec.canonical.per_target`); for a bag, ``models.<i>.<name>``
    keys or one mapping per model, in bag order."""
    ref = next(module.parameters())
    state = state_dict_from_canonical(weights, _model_config_of(module), ref.dtype, ref.device)
    module.load_state_dict(state)


def to_canonical(module: Module) -> dict[str, np.ndarray]:
    """``module``'s weights as canonical float32 arrays (upstream names)."""
    return canonical_from_state_dict(module.state_dict(), _model_config_of(module))


def native_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.pth, <stem>.json)`` for a path given with either suffix or none
    (:func:`core_spec.files.paired_paths`: other dots in the name are kept)."""
    return paired_paths(path, ".pth")


def save_native(
    path: str | os.PathLike,
    weights: Mapping[str, Any],
    config: Config,
    force: bool = False,
) -> list[Path]:
    """Write ``<stem>.pth``, a plain ``torch.save``'d state dict with upstream's names (float32; what
    ``openunmix``'s and ``demucs``'s ``load_state_dict`` read), and ``<stem>.json`` (format tag and config).

    Atomic; an existing file is an error unless ``force``.
    """
    pth, js = native_paths(path)
    refuse_overwrite(pth, js, force=force)
    state = state_dict_from_canonical(weights, config)
    return write_pair(pth, js, lambda tmp: torch.save(state, tmp), native_header(FORMAT, config), force=force)


def load_native(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Config]:
    """Read ``<stem>.pth`` + ``<stem>.json``: ``(canonical weights, config)``, checked against the inventory.

    The ``.pth`` is read with ``torch.load(weights_only=True)`` (no code from the file runs).
    """
    pth, js = native_paths(path)
    if not pth.exists():
        raise FileNotFoundError(f"PyTorch weights: {pth} not found (save_native writes <stem>.pth and <stem>.json)")
    _, config = read_native_header(js, FORMAT, "PyTorch weights")
    state = torch.load(pth, map_location="cpu", weights_only=True)
    return canonical_from_state_dict(state, config), config


# --- beyond the lesson: state dicts, upstream's extra keys, canonical files -------------------------------------


class LegacyKeysWarning(UserWarning):
    """A state dict carried keys of the 2019 Open-Unmix files; they were dropped."""


def _model_config_of(obj: nn.Module) -> Config:
    config = getattr(obj, "config", None)
    if not isinstance(config, (UMXConfig, UMXSeparatorConfig, DemucsConfig, HTDemucsConfig, BagConfig)):
        raise TypeError(f"expected an OpenUnmix, Separator, Demucs, HTDemucs or BagOfModels, got {type(obj).__name__}")
    return config


def _as_tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def _check_one(state: Mapping[str, Any], config: Config, source: str, strict: bool) -> dict:
    """Drop legacy keys (with a warning), check against the inventory, keep ``num_batches_tracked`` if present."""
    legacy = [k for k in state if k in UMX_IGNORED_ON_LOAD]
    if legacy and isinstance(config, UMXConfig):
        warnings.warn(
            f"{source}: dropping {legacy}, keys of the 2019 Open-Unmix files that hold no weights",
            LegacyKeysWarning,
            stacklevel=4,
        )
    if not strict:
        return {k: _as_tensor(v) for k, v in state.items() if k not in legacy}
    checked = check_weights(state, config, source)
    counters = {k: v for k, v in state.items() if k.endswith("num_batches_tracked")}
    return {k: _as_tensor(v) for k, v in {**checked, **counters}.items()}


def prepare_state_dict(module: Module, state_dict: Mapping[str, Any], strict: bool = True) -> dict[str, Tensor]:
    """The state dict ``module`` should load: legacy keys dropped, checked against the module's config.

    Args:
        module: an :class:`~umx_torch.umx.OpenUnmix`, :class:`~umx_torch.demucs.Demucs`,
            :class:`~umx_torch.separator.Separator`, :class:`~umx_torch.htdemucs.HTDemucs` or
            :class:`~umx_torch.htdemucs_apply.BagOfModels` (names ``models.<i>.<name>``).
        state_dict: name -> tensor or NumPy array (upstream names).
        strict: raise :class:`WeightsMismatchError` for anything missing, unexpected or mis-shaped.

    Returns:
        name -> tensor, ready for ``nn.Module.load_state_dict(..., strict=False)``.
    """
    source = f"{type(module).__name__} state dict"
    config = module.config
    if isinstance(config, UMXSeparatorConfig):
        targets = config.separator.targets
        weights = {k: v for k, v in state_dict.items() if k not in SEPARATOR_BUFFERS}
        unknown = [k for k in weights if not k.startswith(TARGET_PREFIX)]
        if unknown and strict:
            raise WeightsMismatchError([], [(k, tuple(np.shape(weights[k]))) for k in unknown], [], source)
        nested = per_target({k: v for k, v in weights.items() if k.startswith(TARGET_PREFIX)}, targets, source)
        out = {}
        for target, w in nested.items():
            checked = _check_one(w, config.model, f"{source} [target {target}]", strict)
            out.update({f"{TARGET_PREFIX}{target}.{k}": v for k, v in checked.items()})
        return out
    return _check_one(state_dict, config, source, strict)


def state_dict_from_canonical(
    weights: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    config: Config,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    copy: bool = False,
) -> dict[str, Tensor]:
    """Canonical arrays -> a torch state dict (same names), checked against ``config``'s inventory
    (:func:`core_spec.canonical.check_canonical`).

    For a :class:`UMXSeparatorConfig` the names are ``target_models.<target>.<name>``; ``{target: weights}`` is
    accepted too. For a :class:`BagConfig` they are ``models.<i>.<name>``; one mapping per model is accepted too.
    Without ``copy`` a tensor may share the memory of its NumPy array (already float32 on the CPU).
    """
    if isinstance(config, BagConfig) and not isinstance(weights, Mapping):
        weights = {f"{MODEL_PREFIX}{i}.{k}": v for i, w in enumerate(weights) for k, v in w.items()}
    checked = check_canonical(weights, config)
    return {k: _as_tensor(v).to(device=device, dtype=dtype, copy=copy) for k, v in checked.items()}


def canonical_from_state_dict(state_dict: Mapping[str, Tensor], config: Config) -> dict[str, np.ndarray]:
    """A torch state dict -> canonical float32 arrays (``num_batches_tracked`` and legacy keys dropped)."""
    arrays = {
        k: v.detach().to("cpu", torch.float32).numpy() if isinstance(v, Tensor) else np.asarray(v, np.float32)
        for k, v in state_dict.items()
        if k not in SEPARATOR_BUFFERS and not k.endswith("num_batches_tracked")
    }
    return check_canonical(arrays, config, "state dict")


def _differences(a: Any, b: Any) -> list[str]:
    return [
        f"{f.name}: file {getattr(a, f.name)!r}, model {getattr(b, f.name)!r}"
        for f in dataclasses.fields(a)
        if f.init and getattr(a, f.name) != getattr(b, f.name)
    ]


def _check_config(file_config: Any, model_config: Any, path: Any) -> None:
    """The file's config must describe the model: same network (and targets, STFT, rate for a separator)."""
    if type(file_config) is not type(model_config):
        raise ValueError(
            f"{path} holds a {type(file_config).__name__}, the model is described by a {type(model_config).__name__}"
        )
    if isinstance(file_config, UMXSeparatorConfig):
        diffs = _differences(file_config.model, model_config.model)
        fs, ms = file_config.separator, model_config.separator
        for name in ("targets", "sample_rate", "stft"):
            if getattr(fs, name) != getattr(ms, name):
                diffs.append(f"separator.{name}: file {getattr(fs, name)!r}, model {getattr(ms, name)!r}")
    else:
        diffs = _differences(file_config, model_config)
    if diffs:
        raise ValueError(f"{path} was saved for another model config:\n  " + "\n  ".join(diffs))


def load_canonical_into(module: Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a canonical file (``<stem>.safetensors`` + ``<stem>.json``) into ``module``; returns the provenance.

    The file's config must describe ``module`` (a clear error lists every differing field).
    """
    weights, config, provenance = load_canonical(path)
    _check_config(config, _model_config_of(module), path)
    load_weights(module, weights)
    return provenance


def save_canonical_from(
    module: Module,
    path: str | os.PathLike,
    provenance: Mapping[str, Any] | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write ``module``'s weights and config as a canonical file (float32)."""
    config = _model_config_of(module)
    arrays = canonical_from_state_dict(module.state_dict(), config)
    return save_canonical(path, arrays, config, provenance, force=force)
