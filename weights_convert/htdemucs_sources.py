"""demucs 4.x HTDemucs files -> canonical weights and an :class:`~core_spec.configs.HTDemucsConfig`, without torch.

- **a package** (``demucs.states.serialize_model``, ``955717e8-8726e21a.th``, ``5c90dfd2-34c22ccb.th``):
  ``{'klass': demucs.htdemucs.HTDemucs (recorded by name), 'args', 'kwargs' (with a ``fractions.Fraction``
  segment), 'state' (float16), 'training_args' (plain containers)}``; every constructor argument maps to
  :class:`~core_spec.configs.HTDemucsConfig` (an argument it does not know is an error): :func:`read_htdemucs`.
- **4.1.0's hub layout** (``<sig>.safetensors`` of ``adefossez/HTDemucs``...): the state as tensors, ``klass``,
  ``args`` and ``kwargs`` as JSON in the metadata, a Fraction as ``{"_type": "fraction", "numerator",
  "denominator"}``. Read with ``safetensors`` (NumPy), no pickle: :func:`read_hub`.
- **a bare state dict** (``torch.save(model.state_dict(), 'x.th')``): no constructor arguments, so the config is
  the preset the user names (``--model htdemucs`` / ``htdemucs_6s``), or, without one, the only HTDemucs preset
  whose inventory the shapes fit (the source *names* are then the preset's: a state dict stores only their
  number): :func:`read_bare_htdemucs`.

Every result is checked against :func:`core_spec.params.parameter_inventory` and upcast exactly to float32.
Bags (``remote/*.yaml``) are in :mod:`weights_convert.htdemucs_bags`.
"""

from __future__ import annotations

import dataclasses
import fractions
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import HTDEMUCS_PRESETS, BagConfig, HTDemucsConfig
from core_spec.params import WeightsMismatchError, check_weights

from .errors import CheckpointError, ConversionError
from .reading import (
    HTDEMUCS_CLASS,
    NOT_SUPPORTED_YET,
    Converted,
    SourceFile,
    as_state,
    config_differences,
    preset_config,
    preset_kind,
    sha256_file,
    to_float32,
)

__all__ = [
    "htdemucs_config_from_call",
    "hub_metadata",
    "is_bare_htdemucs",
    "read_bare_htdemucs",
    "read_htdemucs",
    "read_hub",
]


def _plain_argument(value: Any) -> bool:
    """A constructor argument as ``capture_init`` records it: a number, string, None, Fraction or a flat list."""
    scalar = (bool, int, float, str, fractions.Fraction, type(None))
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, scalar) and v is not None for v in value)
    return isinstance(value, scalar)


def htdemucs_config_from_call(args: Any, kwargs: Any, name: str = "package") -> HTDemucsConfig:
    """``HTDemucs(*args, **kwargs)`` as ``capture_init`` recorded it -> :class:`HTDemucsConfig`.

    Every argument is mapped under its name (positional ones in the constructor's order); one that demucs 4.1.0's
    ``HTDemucs`` does not take is an error naming it (upstream's ``load_model`` would drop it with a warning), and
    so is a value that is not a plain number, string, ``Fraction`` or list.
    """
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise ConversionError(f"{name}: package 'args' must be a tuple and 'kwargs' a dict")
    names = [f.name for f in dataclasses.fields(HTDemucsConfig) if f.init]
    if len(args) > len(names):
        raise ConversionError(f"{name}: {len(args)} positional constructor arguments, HTDemucs takes {len(names)}")
    values = dict(zip(names, args))
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        shown = ", ".join(f"{k}={kwargs[k]!r}" if isinstance(k, str) else repr(k) for k in unknown)
        raise ConversionError(
            f"{name}: constructor argument(s) {shown} unknown to demucs 4.1.0's {HTDEMUCS_CLASS}: this file comes "
            "from another version of demucs, which this converter does not know"
        )
    for key, value in kwargs.items():
        if key in values:
            raise ConversionError(f"{name}: constructor argument {key!r} given twice")
        values[key] = value
    bad = [f"{k}={v!r:.80}" for k, v in values.items() if not _plain_argument(v)]
    if bad:
        raise ConversionError(f"{name}: constructor argument(s) {', '.join(bad)} are not plain values")
    if "sources" not in values:
        raise ConversionError(f"{name}: the package records no 'sources'")
    if not all(isinstance(s, str) for s in values["sources"] or ()) or isinstance(values["sources"], str):
        raise ConversionError(f"{name}: 'sources' must be a list of names, got {values['sources']!r:.80}")
    try:
        return HTDemucsConfig(**values)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ConversionError(f"{name}: bad HTDemucs constructor arguments: {e}") from None


def _htdemucs_preset(preset: str, config: HTDemucsConfig, name: str) -> None:
    wanted = preset_config(preset)
    if isinstance(wanted, BagConfig):
        raise ConversionError(
            f"--model {preset} is a bag of {len(wanted.models)} HTDemucs models, but {name} is one model (a "
            f"{HTDEMUCS_CLASS} package): pass an HTDemucs model preset "
            f"({', '.join(n for n, p in HTDEMUCS_PRESETS.items() if isinstance(p, HTDemucsConfig))}) or none"
        )
    if not isinstance(wanted, HTDemucsConfig):
        raise ConversionError(
            f"--model {preset} is {preset_kind(wanted)}, but {name} holds a {HTDEMUCS_CLASS} (Hybrid "
            "Transformer Demucs, v4): pass an HTDemucs preset or none (the package records its constructor arguments)"
        )
    diffs = config_differences(config, wanted)
    if diffs:
        raise ConversionError(f"{name}: the package's constructor arguments differ from --model {preset}: {diffs}")


def read_htdemucs(obj: Mapping[str, Any], info: SourceFile, preset: str | None, kind: str) -> Converted:
    """An HTDemucs package (``{'klass', 'args', 'kwargs', 'state', ...}``, read from a ``.th`` or the hub layout)."""
    name = info.path.name
    notes: list[str] = []
    dtypes: dict[str, int] = {}
    config = htdemucs_config_from_call(obj.get("args", ()), obj.get("kwargs", {}), name)
    if preset is not None:
        _htdemucs_preset(preset, config, name)
    state = obj["state"]
    if isinstance(state, dict) and (state.get("__quantized") or "compressed" in state):
        raise ConversionError(
            f"{name}: the HTDemucs state is quantized (diffq): not supported yet; convert an unquantized release"
        )
    state = as_state(state, name)
    try:
        checked = check_weights(state, config, name)
    except NotImplementedError as e:
        raise ConversionError(f"{name}: {e}") from None
    weights = to_float32(checked, notes, dtypes, name)
    training_args = obj.get("training_args")
    if training_args is not None:
        notes.append(f"training_args ({type(training_args).__name__}) not used: only the model is converted")
    matched = [n for n, p in HTDEMUCS_PRESETS.items() if p == config]
    return Converted(weights, config, info.path, kind, [info], preset, matched, notes, dtypes)


def _decode_hub_json(value: Any) -> Any:
    """4.1.0's hub metadata JSON: ``{"_type": "fraction", "numerator", "denominator"}`` is a Fraction."""
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            num, den = value.get("numerator"), value.get("denominator")
            if type(num) is not int or type(den) is not int or den == 0:
                raise ConversionError(f"malformed fraction in the metadata: {value!r:.80}")
            return fractions.Fraction(num, den)
        return {k: _decode_hub_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_hub_json(v) for v in value]
    return value


def hub_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a safetensors file when it is 4.1.0's hub layout (it names a ``klass``), else ``None``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception:  # not a readable safetensors file: the caller says what it is
        return None
    return metadata if "klass" in metadata and "unmix_ports" not in metadata else None


def read_hub(path: Path, preset: str | None) -> Converted:
    from core_spec.canonical import read_arrays

    name = path.name
    metadata = hub_metadata(path)
    if metadata is None:
        raise ConversionError(f"{name} is a safetensors file but not demucs 4.1.0's hub layout (no 'klass' metadata)")
    if "structure" in metadata:
        raise ConversionError(f"{name}: a nested (diffq-quantized) hub state: not supported yet")
    try:
        args = _decode_hub_json(json.loads(metadata.get("args", "[]")))
        kwargs = _decode_hub_json(json.loads(metadata.get("kwargs", "{}")))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{name}: the args/kwargs metadata is not JSON ({e})") from None
    qualname = metadata["klass"]
    if qualname != HTDEMUCS_CLASS:
        what = NOT_SUPPORTED_YET.get(qualname, "a class this converter does not know")
        raise ConversionError(f"{name} is a demucs hub file of {qualname}, {what}: not supported yet")
    try:
        state = read_arrays(path)
    except Exception as e:
        raise CheckpointError(f"{name}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None
    info = SourceFile(path, sha256_file(path), "safetensors (demucs hub)", path.stat().st_size, "weights")
    package = {"klass": qualname, "args": args, "kwargs": kwargs, "state": state}
    return read_htdemucs(package, info, preset, "demucs 4.1.0 hub safetensors (HTDemucs)")


# --- bare state dicts -------------------------------------------------------------------------------------------


def is_bare_htdemucs(obj: Any) -> bool:
    """A bare state dict of a hybrid (v3/v4) demucs: its first encoder layer is ``encoder.0.conv`` (demucs 2.0.x:
    ``encoder.0.0``) and it records no ``klass``."""
    return isinstance(obj, dict) and "klass" not in obj and "encoder.0.conv.weight" in obj


def _model_presets() -> dict[str, HTDemucsConfig]:
    return {n: p for n, p in HTDEMUCS_PRESETS.items() if isinstance(p, HTDemucsConfig)}


def _mismatch_count(state: Mapping[str, np.ndarray], config: HTDemucsConfig) -> int | None:
    """``None`` when ``state`` fits the inventory of ``config``, else how many keys are missing, unexpected or
    mis-shaped."""
    try:
        check_weights(state, config)
    except WeightsMismatchError as e:
        return len(e.missing) + len(e.unexpected) + len(e.misshaped)
    return None


def _bare_preset(state: Mapping[str, np.ndarray], preset: str | None, name: str, notes: list[str]) -> str:
    """The HTDemucs preset a bare state dict is read with: the one given, or the only one its shapes fit."""
    presets = _model_presets()
    if preset is not None:
        wanted = preset_config(preset)
        if isinstance(wanted, BagConfig):
            raise ConversionError(
                f"--model {preset} is a bag of {len(wanted.models)} HTDemucs models, but {name} is the state dict of "
                f"one model: pass an HTDemucs model preset ({', '.join(presets)})"
            )
        if not isinstance(wanted, HTDemucsConfig):
            raise ConversionError(
                f"--model {preset} is {preset_kind(wanted)}, but {name} holds a bare state dict of a hybrid demucs "
                f"(encoder.0.conv: demucs 3.x/4.x): pass an HTDemucs preset ({', '.join(presets)})"
            )
        return preset
    mismatches = {n: _mismatch_count(state, p) for n, p in presets.items()}
    fits = [n for n, count in mismatches.items() if count is None]
    if len(fits) == 1:
        notes.append(
            f"{name}: a bare state dict records no constructor arguments; its shapes fit preset {fits[0]} only, "
            f"whose config (and source names {', '.join(presets[fits[0]].sources)}) is used"
        )
        return fits[0]
    if fits:
        raise ConversionError(f"{name}: the shapes of this bare state dict fit presets {', '.join(fits)}: pass --model")
    counts = ", ".join(f"{n}: {c} key(s) missing, unexpected or mis-shaped" for n, c in mismatches.items())
    raise ConversionError(
        f"{name} is a bare state dict of a hybrid demucs (no klass/args/kwargs, so no constructor arguments) whose "
        f"shapes fit no HTDemucs preset ({counts}): pass --model PRESET for the network it was saved from, or "
        "convert its demucs package (the .th that demucs.states.serialize_model writes records the arguments); an "
        "HDemucs (v3) state dict is not supported yet"
    )


def read_bare_htdemucs(obj: dict[str, Any], info: SourceFile, preset: str | None) -> Converted:
    """A bare ``HTDemucs.state_dict()`` (float16 or float32), read with ``preset``'s config (or the only preset
    its shapes fit); checked against that preset's inventory (a
    :class:`~core_spec.params.WeightsMismatchError` names every missing, unexpected and mis-shaped key)."""
    name = info.path.name
    notes: list[str] = []
    dtypes: dict[str, int] = {}
    state = as_state(obj, name)
    chosen = _bare_preset(state, preset, name, notes)
    config = _model_presets()[chosen]
    checked = check_weights(state, config, f"{name} (checked against preset {chosen})")
    weights = to_float32(checked, notes, dtypes, name)
    matched = [n for n, p in _model_presets().items() if p == config]
    kind = "demucs 4.x bare state dict (HTDemucs)"
    return Converted(weights, config, info.path, kind, [info], preset, matched, notes, dtypes)
