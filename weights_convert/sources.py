"""What upstream weight files hold, and how each becomes canonical weights plus a model config.

Understood (each read with :mod:`weights_convert.torch_pickle`, no torch needed except for diffq):

- **openunmix per-target state dict** (``vocals-b62c91ce.pth``, ``speech_f5e0d9f9.pth``, ``<target>.pth``):
  ``OpenUnmix.state_dict()``. The 2019 ``umx``/``umxhq`` files also hold ``sample_rate``, ``stft.window`` and
  ``transform.0.window`` (dropped, with a note); ``bn*.num_batches_tracked`` is dropped. A training checkpoint
  (``<target>.chkpnt``: ``{'state_dict', 'optimizer', ...}``) is read through its ``state_dict`` entry, and a whole
  ``Separator.state_dict()`` (``target_models.<target>.<name>``) is understood too.
- **openunmix model folder** as ``scripts/train.py`` writes it: ``separator.json`` (``nfft``, ``nhop``,
  ``sample_rate``, ``nb_channels``), ``<target>.json`` (training log with ``args``), ``<target>*.pth``; or a
  folder of hub files (``vocals-b62c91ce.pth``, ...) without JSON.
- **demucs 2.0.x state dict** (``demucs-e07c671f.th``, ``demucs48_hq-28a1282c.th``, ``demucs_extra-3646af93.th``,
  ``demucs_unittest-09ebc15f.th``): ``Demucs.state_dict()``, float32 or float16 (upcast exactly).
- **demucs package** (``demucs.utils.save_model``): ``{'klass': demucs.model.Demucs (recorded by name),
  'args', 'kwargs', 'state', 'training_args'}``; the config comes from ``args``/``kwargs``.
- **demucs 4.x HTDemucs files**: packages (``demucs.states.serialize_model``, ``955717e8-8726e21a.th``), 4.1.0's
  hub ``<sig>.safetensors``, bare ``HTDemucs.state_dict()`` files (read with a preset):
  :mod:`weights_convert.htdemucs_sources`.
- **demucs 4.x bags** (a ``remote/*.yaml`` naming signatures, or a folder holding one yaml and its files):
  :mod:`weights_convert.htdemucs_bags`.
- Packages of the demucs 3.x/4.x models not ported yet (``demucs.hdemucs.HDemucs``, the v3
  ``demucs.demucs.Demucs``) are refused naming the class.
- **diffq-quantized state** (``demucs_quantized-07afea75.th``: ``{'compressed': zlib(torch.save(quantized
  state))}``, and packages whose ``state`` is such a dict): dequantized through diffq's own API when torch,
  diffq and demucs are importable (:func:`dequantize_demucs`), otherwise a :class:`ConversionError` says what to
  install.

Where a file carries no config, it is inferred from the shapes (UMX: ``nb_bins``, ``max_bin``, ``nb_channels``,
``hidden_size``, ``nb_layers``, ``unidirectional``; Demucs: ``audio_channels``, ``channels``, ``kernel_size``,
``depth``, ``growth``, ``rewrite``, ``glu``, ``context``, ``lstm_layers``, number of sources); a preset
(``--model``) replaces the inference and is validated against the file. Every result is checked against
:func:`core_spec.params.parameter_inventory` (:class:`~core_spec.params.WeightsMismatchError` names every
missing, unexpected and mis-shaped key with both shapes).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.canonical import join_targets
from core_spec.configs import (
    DEMUCS_PRESETS,
    UMX_PRESETS,
    DemucsConfig,
    SeparatorConfig,
    STFTConfig,
    UMXConfig,
    UMXSeparatorConfig,
)
from core_spec.params import UMX_IGNORED_ON_LOAD, check_weights, is_ignored_on_load, parameter_inventory

from .errors import CheckpointError, ConversionError
from .htdemucs_bags import BAG_SUFFIXES, find_bag_yaml, read_bag
from .htdemucs_sources import (
    htdemucs_config_from_call,
    hub_metadata,
    is_bare_htdemucs,
    read_bare_htdemucs,
    read_htdemucs,
    read_hub,
)
from .reading import (
    HTDEMUCS_CLASS,
    NOT_SUPPORTED_YET,
    PRESET_ALIASES,
    Converted,
    Progress,
    SourceFile,
    as_state,
    config_differences,
    keys_preview,
    klass_name,
    preset_config,
    preset_kind,
    read_file,
    sha256_file,
    to_float32,
)
from .torch_pickle import Namespace, read_checkpoint

__all__ = [
    "PRESET_ALIASES",
    "Converted",
    "SourceFile",
    "dequantize_demucs",
    "htdemucs_config_from_call",
    "hub_metadata",
    "infer_demucs_config",
    "infer_umx_config",
    "preset_config",
    "preset_kind",
    "read_upstream",
    "sha256_file",
]

# Constructor arguments demucs 2.0.x does not record in a state dict: the defaults of ``demucs.model.Demucs``.
_DEMUCS_UNRECORDED = ("stride", "resample", "normalize", "samplerate", "segment_length", "rescale")
_HASH_SUFFIX = re.compile(r"^(?P<target>.+?)[-_](?P<hash>[0-9a-f]{8})$")
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


# --- presets ---------------------------------------------------------------------------------------------------


def _matching_presets(config: UMXConfig | DemucsConfig) -> list[str]:
    if isinstance(config, UMXConfig):
        return [n for n, p in UMX_PRESETS.items() if p.model == config]
    return [n for n, p in DEMUCS_PRESETS.items() if p == config]


# --- cleaning state dicts --------------------------------------------------------------------------------------


def _drop_ignored(state: Mapping[str, np.ndarray], notes: list[str], where: str) -> dict[str, np.ndarray]:
    legacy = [k for k in state if k in UMX_IGNORED_ON_LOAD]
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    if legacy:
        notes.append(
            f"{where}: dropped {', '.join(legacy)}: buffers of the 2019 Open-Unmix files (v1.0 model with its own "
            "STFT) that hold no weights"
        )
    if counters:
        notes.append(f"{where}: dropped {len(counters)} BatchNorm num_batches_tracked counter(s)")
    return {k: v for k, v in state.items() if not is_ignored_on_load(k)}


# --- config inference -------------------------------------------------------------------------------------------


def _need(state: Mapping[str, np.ndarray], keys: list[str], what: str, name: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ConversionError(
            f"{name}: cannot infer the {what} config: missing {', '.join(missing)} (keys: {keys_preview(state)})"
        )


def _shape(state: Mapping[str, np.ndarray], key: str, ndim: int, name: str) -> tuple[int, ...]:
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ConversionError(f"{name}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def infer_umx_config(state: Mapping[str, np.ndarray], name: str = "state dict") -> UMXConfig:
    """``OpenUnmix`` constructor arguments from the shapes of its state dict."""
    _need(state, ["input_mean", "output_mean", "fc1.weight", "lstm.weight_hh_l0"], "Open-Unmix", name)
    (max_bin,) = _shape(state, "input_mean", 1, name)
    (nb_bins,) = _shape(state, "output_mean", 1, name)
    hidden_size, fc1_in = _shape(state, "fc1.weight", 2, name)
    if max_bin == 0 or fc1_in % max_bin:
        raise ConversionError(f"{name}: fc1.weight {(hidden_size, fc1_in)} is not a multiple of max_bin={max_bin}")
    nb_layers = 0
    while f"lstm.weight_ih_l{nb_layers}" in state:
        nb_layers += 1
    unidirectional = "lstm.weight_ih_l0_reverse" not in state
    lstm_hidden = _shape(state, "lstm.weight_hh_l0", 2, name)[1]
    expected_hidden = hidden_size if unidirectional else hidden_size // 2
    if lstm_hidden != expected_hidden:
        raise ConversionError(
            f"{name}: lstm.weight_hh_l0 has hidden size {lstm_hidden}, fc1 implies {expected_hidden} "
            f"({'uni' if unidirectional else 'bi'}directional)"
        )
    try:
        return UMXConfig(
            nb_bins=nb_bins,
            nb_channels=fc1_in // max_bin,
            hidden_size=hidden_size,
            nb_layers=nb_layers,
            unidirectional=unidirectional,
            max_bin=max_bin,
        )
    except ValueError as e:
        raise ConversionError(f"{name}: inconsistent Open-Unmix shapes: {e}") from None


def infer_demucs_config(
    state: Mapping[str, np.ndarray], name: str = "state dict", base: DemucsConfig | None = None
) -> DemucsConfig:
    """``demucs.model.Demucs`` (2.0.x) constructor arguments from the shapes of its state dict.

    What shapes do not show (``stride``, ``resample``, ``normalize``, ``samplerate``, ``segment_length``,
    ``rescale``, the source names) is taken from ``base`` (default: the demucs 2.0.x defaults).
    """
    base = base or DemucsConfig()
    _need(state, ["encoder.0.0.weight"], "Demucs", name)
    channels, audio_channels, kernel_size = _shape(state, "encoder.0.0.weight", 3, name)
    depth = 0
    while f"encoder.{depth}.0.weight" in state:
        depth += 1
    growth = base.growth
    if depth > 1:
        growth = _shape(state, "encoder.1.0.weight", 3, name)[0] / channels
    rewrite = "encoder.0.2.weight" in state
    glu = base.glu
    context = base.context
    if rewrite:
        glu = _shape(state, "encoder.0.2.weight", 3, name)[0] == 2 * channels
        _need(state, ["decoder.0.0.weight"], "Demucs", name)
        context = _shape(state, "decoder.0.0.weight", 3, name)[2]
    outer = f"decoder.{depth - 1}.{2 if rewrite else 0}.weight"
    _need(state, [outer], "Demucs", name)
    out_channels = _shape(state, outer, 3, name)[1]
    if audio_channels == 0 or out_channels % audio_channels:
        raise ConversionError(f"{name}: {outer} has {out_channels} outputs, not a multiple of {audio_channels}")
    nb_sources = out_channels // audio_channels
    lstm_layers = 0
    while f"lstm.lstm.weight_ih_l{lstm_layers}" in state:
        lstm_layers += 1
    sources = base.sources
    if len(sources) != nb_sources:
        sources = tuple(f"source{i}" for i in range(nb_sources))
    return dataclasses.replace(
        base,
        sources=sources,
        audio_channels=audio_channels,
        channels=channels,
        depth=depth,
        rewrite=rewrite,
        glu=glu,
        kernel_size=kernel_size,
        growth=growth,
        lstm_layers=lstm_layers,
        context=context,
    )


# --- Open-Unmix -------------------------------------------------------------------------------------------------


def _target_from_filename(path: Path) -> str:
    stem = path.name.split(".", 1)[0]
    m = _HASH_SUFFIX.match(stem)
    return m.group("target") if m else stem


def _check_target_name(target: str) -> str:
    if not _TARGET_NAME.match(target):
        raise ConversionError(f"target name {target!r} must be made of letters, digits, '_' and '-' (use --target)")
    return target


def _umx_separator_config(
    model: UMXConfig,
    targets: tuple[str, ...],
    preset: str | None,
    separator_json: Mapping[str, Any] | None,
    legacy_rate: float | None,
    notes: list[str],
    name: str,
) -> tuple[UMXSeparatorConfig, list[str]]:
    """The separator config around ``model``: from the preset, ``separator.json``, a matching preset, or assumed."""
    matched = _matching_presets(model)
    if preset is not None:
        base = preset_config(preset)
        assert isinstance(base, UMXSeparatorConfig)
        separator = dataclasses.replace(base.separator, targets=targets)
        if separator_json is not None:
            stft = STFTConfig(n_fft=int(separator_json["nfft"]), n_hop=int(separator_json["nhop"]))
            diffs = []
            if stft != separator.stft:
                diffs.append(f"STFT {stft} vs {separator.stft}")
            if float(separator_json["sample_rate"]) != separator.sample_rate:
                diffs.append(f"sample_rate {separator_json['sample_rate']} vs {separator.sample_rate}")
            if diffs:
                raise ConversionError(f"{name}: separator.json disagrees with --model {preset}: {'; '.join(diffs)}")
        return UMXSeparatorConfig(model=base.model, separator=separator), matched
    if separator_json is not None:
        stft = STFTConfig(n_fft=int(separator_json["nfft"]), n_hop=int(separator_json["nhop"]))
        if stft.nb_bins != model.nb_bins:
            raise ConversionError(
                f"{name}: separator.json nfft={stft.n_fft} gives {stft.nb_bins} bins, the weights have {model.nb_bins}"
            )
        if int(separator_json["nb_channels"]) != model.nb_channels:
            raise ConversionError(
                f"{name}: separator.json nb_channels={separator_json['nb_channels']}, the weights have "
                f"{model.nb_channels}"
            )
        separator = SeparatorConfig(targets=targets, sample_rate=float(separator_json["sample_rate"]), stft=stft)
        return UMXSeparatorConfig(model=model, separator=separator), matched
    if legacy_rate is not None:  # the 2019 files' sample_rate buffer: keep the presets that agree with it
        matched = [p for p in matched if UMX_PRESETS[p].separator.sample_rate == legacy_rate]
    if matched:
        separator = dataclasses.replace(UMX_PRESETS[matched[0]].separator, targets=targets)
        notes.append(
            f"the shapes match preset(s) {', '.join(matched)}: their STFT ({separator.stft.n_fft}/"
            f"{separator.stft.n_hop}) and sample rate ({separator.sample_rate:g} Hz) are used"
        )
        return UMXSeparatorConfig(model=model, separator=separator), matched
    n_fft = 2 * (model.nb_bins - 1)
    rate = legacy_rate if legacy_rate is not None else 44100.0
    stft = STFTConfig(n_fft=n_fft, n_hop=n_fft // 4)
    notes.append(
        f"no separator.json and no matching preset: assumed n_fft={n_fft} (from {model.nb_bins} bins), "
        f"n_hop={n_fft // 4}, sample_rate={rate:g} Hz{' (from the sample_rate buffer)' if legacy_rate else ''}; "
        "pass --model or a folder with separator.json to set them"
    )
    return UMXSeparatorConfig(model=model, separator=SeparatorConfig(targets=targets, sample_rate=rate, stft=stft)), []


def _umx_model_for(
    state: Mapping[str, np.ndarray], preset: str | None, name: str
) -> tuple[UMXConfig, dict[str, np.ndarray]]:
    """Infer (or take from the preset) the network config and check the state against it."""
    if preset is not None:
        config = preset_config(preset)
        if not isinstance(config, UMXSeparatorConfig):
            raise ConversionError(f"--model {preset} is {preset_kind(config)}, but {name} holds an Open-Unmix model")
        model = config.model
    else:
        model = infer_umx_config(state, name)
    return model, check_weights(state, model, name)


def _legacy_rate(obj: Mapping[str, Any]) -> float | None:
    value = obj.get("sample_rate")
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(()))
    return None


def _umx_from_states(
    states: dict[str, tuple[dict[str, np.ndarray], str]],
    preset: str | None,
    separator_json: Mapping[str, Any] | None,
    legacy_rate: float | None,
    notes: list[str],
    dtypes: dict[str, int],
    name: str,
) -> tuple[dict[str, np.ndarray], UMXSeparatorConfig, list[str]]:
    """``{target: (state, where)}`` -> canonical separator weights and config."""
    models: dict[str, UMXConfig] = {}
    checked: dict[str, dict[str, np.ndarray]] = {}
    for target, (state, where) in states.items():
        state = _drop_ignored(state, notes, where)
        models[target], weights = _umx_model_for(state, preset, where)
        checked[target] = to_float32(weights, notes, dtypes, where)
    distinct = set(models.values())
    if len(distinct) > 1:
        lines = [f"{t}: {m}" for t, m in models.items()]
        raise ConversionError(
            f"{name}: the targets have different network configs, which one canonical file cannot hold:\n  "
            + "\n  ".join(lines)
        )
    model = distinct.pop()
    config, matched = _umx_separator_config(model, tuple(states), preset, separator_json, legacy_rate, notes, name)
    return join_targets(checked), config, matched


def _read_umx_args(path: Path) -> dict[str, Any]:
    try:
        args = json.loads(path.read_text())["args"]
        if not isinstance(args, dict):
            raise TypeError("'args' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path}: not an Open-Unmix training log with 'args' ({e!r})") from None
    return args


def _check_umx_args(args: Mapping[str, Any], model: UMXConfig, where: str) -> None:
    """The training log's ``args`` (what ``load_target_models`` reads) must describe the weights."""
    nfft = args.get("nfft")
    checks = [
        ("nfft", nfft, nfft // 2 + 1 if isinstance(nfft, int) else None, model.nb_bins),
        ("nb_channels", args.get("nb_channels"), args.get("nb_channels"), model.nb_channels),
        ("hidden_size", args.get("hidden_size"), args.get("hidden_size"), model.hidden_size),
        ("unidirectional", args.get("unidirectional"), args.get("unidirectional"), model.unidirectional),
    ]
    diffs = [
        f"{key}={given!r} (weights: {'nb_bins ' if key == 'nfft' else ''}{expected!r})"
        for key, given, value, expected in checks
        if given is not None and value != expected
    ]
    if diffs:
        raise ConversionError(f"{where}: the training log disagrees with the weights: " + "; ".join(diffs))


def _find_target_file(folder: Path, target: str) -> Path | None:
    candidates = sorted(folder.glob(f"{glob.escape(target)}*.pth"))
    for path in candidates:  # exact name first, then <target>-<hash>.pth, then what upstream's glob finds first
        if path.name == f"{target}.pth":
            return path
    for path in candidates:
        if _target_from_filename(path) == target:
            return path
    return candidates[0] if candidates else None


def _read_umx_folder(
    folder: Path, preset: str | None, targets: tuple[str, ...] | None, progress: Progress | None
) -> Converted:
    notes: list[str] = []
    dtypes: dict[str, int] = {}
    logs = {p.stem: p for p in sorted(folder.glob("*.json")) if p.name != "separator.json"}
    pths = sorted(folder.glob("*.pth"))
    if targets is None:
        found = list(logs) if logs else [_target_from_filename(p) for p in pths]
        found = list(dict.fromkeys(found))
        order = list(preset_config(preset).separator.targets) if preset and preset in UMX_PRESETS else []
        if not order:
            for p in UMX_PRESETS.values():
                if set(found) <= set(p.separator.targets):
                    order = list(p.separator.targets)
                    break
        targets = tuple([t for t in order if t in found] + sorted(t for t in found if t not in order))
    if not targets:
        listing = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
        raise ConversionError(
            f"{folder} is a directory without an Open-Unmix model: expected <target>.pth files (with separator.json "
            f"and <target>.json as scripts/train.py writes them); it holds: {listing}"
        )
    files: list[SourceFile] = []
    states: dict[str, tuple[dict[str, np.ndarray], str]] = {}
    legacy_rate = None
    for target in targets:
        _check_target_name(target)
        path = _find_target_file(folder, target)
        if path is None:
            raise ConversionError(
                f"{folder}: no weights for target {target!r} (expected {target}.pth or {target}-*.pth)"
            )
        obj, info = read_file(path, f"target {target}", progress)
        files.append(info)
        where = str(path.name)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            notes.append(f"{where}: read the 'state_dict' entry of a training checkpoint")
            obj = obj["state_dict"]
        state = as_state(obj, where)
        legacy_rate = _legacy_rate(state) or legacy_rate
        states[target] = (state, where)
    separator_json = None
    sep_path = folder / "separator.json"
    if sep_path.exists():
        try:
            separator_json = json.loads(sep_path.read_text())
            for key in ("nfft", "nhop", "sample_rate", "nb_channels"):
                separator_json[key]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConversionError(f"{sep_path}: not an Open-Unmix separator.json ({e!r})") from None
        files.append(SourceFile(sep_path, sha256_file(sep_path), "json", sep_path.stat().st_size, "separator"))
    weights, config, matched = _umx_from_states(states, preset, separator_json, legacy_rate, notes, dtypes, str(folder))
    for target in targets:
        if target in logs:
            _check_umx_args(_read_umx_args(logs[target]), config.model, str(logs[target].name))
            log = logs[target]
            files.append(SourceFile(log, sha256_file(log), "json", log.stat().st_size, f"training log {target}"))
        elif separator_json is not None:
            notes.append(f"no {target}.json training log: the network config was inferred from the weights")
    return Converted(weights, config, folder, "openunmix model folder", files, preset, matched, notes, dtypes)


def _read_umx_file(
    obj: dict[str, Any], info: SourceFile, preset: str | None, target: str | None, kind: str
) -> Converted:
    notes: list[str] = []
    dtypes: dict[str, int] = {}
    name = info.path.name
    state = as_state(obj, name)
    if any(k.startswith("target_models.") for k in state):
        per_target: dict[str, dict[str, np.ndarray]] = {}
        dropped = [k for k in state if not k.startswith("target_models.")]
        for key, value in state.items():
            if key.startswith("target_models."):
                t, rest = key[len("target_models.") :].split(".", 1)
                per_target.setdefault(t, {})[rest] = value
        if dropped:
            notes.append(f"{name}: dropped separator buffers {', '.join(dropped)}")
        legacy_rate = _legacy_rate(state)
        states = {_check_target_name(t): (s, f"{name} [target {t}]") for t, s in per_target.items()}
        kind = "openunmix Separator state dict"
    else:
        target = _check_target_name(target or _target_from_filename(info.path))
        legacy_rate = _legacy_rate(state)
        states = {target: (state, name)}
    weights, config, matched = _umx_from_states(states, preset, None, legacy_rate, notes, dtypes, name)
    return Converted(weights, config, info.path, kind, [info], preset, matched, notes, dtypes)


# --- Demucs -----------------------------------------------------------------------------------------------------


def _demucs_preset(preset: str | None, name: str) -> DemucsConfig | None:
    if preset is None:
        return None
    config = preset_config(preset)
    if not isinstance(config, DemucsConfig):
        raise ConversionError(
            f"--model {preset} is {preset_kind(config)}, but {name} holds a demucs 2.0.x Demucs "
            "(demucs.model.Demucs, v2); pass a Demucs v2 preset or none"
        )
    return config


def _demucs_state(
    state: dict[str, np.ndarray], config: DemucsConfig | None, preset: str | None, name: str, notes: list[str]
) -> tuple[DemucsConfig, dict[str, np.ndarray], list[str]]:
    state = _drop_ignored(state, notes, name)
    if config is None:
        config = infer_demucs_config(state, name)
        matched = _matching_presets(config)
        notes.append(
            f"{', '.join(_DEMUCS_UNRECORDED)} are not recorded in a state dict: the demucs 2.0.x defaults are used"
            + (f" (the shapes match preset(s) {', '.join(matched)})" if matched else "")
        )
        if config.sources != DemucsConfig().sources:
            notes.append(f"{len(config.sources)} sources: named {', '.join(config.sources)} (names are not stored)")
    else:
        matched = _matching_presets(config)
    return config, check_weights(state, config, name), matched


def _demucs_config_from_call(args: Any, kwargs: Any, name: str, notes: list[str]) -> DemucsConfig:
    """``Demucs(*args, **kwargs)`` as recorded by ``capture_init`` -> :class:`DemucsConfig`."""
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise ConversionError(f"{name}: package 'args' must be a tuple and 'kwargs' a dict")
    names = [f.name for f in dataclasses.fields(DemucsConfig) if f.init]
    if len(args) > len(names):
        raise ConversionError(f"{name}: {len(args)} positional constructor arguments, Demucs takes {len(names)}")
    values = dict(zip(names, args))
    for key, value in kwargs.items():
        if key in values:
            raise ConversionError(f"{name}: constructor argument {key!r} given twice")
        if key not in names:
            notes.append(f"{name}: dropped constructor argument {key}={value!r} unknown to demucs 2.0.x Demucs")
            continue
        values[key] = value
    for key, value in values.items():
        plain = value if not isinstance(value, (list, tuple)) else None
        ok = isinstance(plain, (bool, int, float, str)) if plain is not None else all(isinstance(v, str) for v in value)
        if not ok:
            raise ConversionError(f"{name}: constructor argument {key}={value!r} is not a plain value")
    if "sources" not in values:
        raise ConversionError(f"{name}: the package records no 'sources'")
    try:
        return DemucsConfig(**values)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{name}: bad Demucs constructor arguments: {e}") from None


def _training_quantizer(training_args: Any) -> dict[str, Any]:
    """How ``demucs.utils.get_quantizer`` rebuilt the quantizer from the training arguments."""
    get = (lambda k, d=None: training_args.attrs.get(k, d)) if isinstance(training_args, Namespace) else None
    if get is None:
        return {"method": "diffq", "min_size": 1.0, "group_size": 8}
    if get("diffq"):
        return {"method": "diffq", "min_size": float(get("q_min_size", 1.0)), "group_size": 8}
    if get("qat"):
        return {"method": "uniform", "min_size": float(get("q_min_size", 1.0)), "bits": int(get("qat"))}
    raise ConversionError("the package state is compressed but its training_args name no quantizer (diffq or qat)")


def _read_quantized_state(compressed: Any, name: str) -> dict[str, Any]:
    if not isinstance(compressed, bytes):
        raise ConversionError(f"{name}: 'compressed' must hold bytes, got {type(compressed).__name__}")
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as e:
        raise CheckpointError(f"{name}: the compressed quantized state is corrupt ({e})") from None
    state = read_checkpoint(raw, name=f"{name} [quantized state]").obj
    if not isinstance(state, dict) or not {"quantized", "float16", "others"} <= set(state):
        raise ConversionError(f"{name}: the compressed state is not a diffq quantized state")
    return state


def _stored_bytes(x: Any) -> int:
    """Bytes of every array (and bytes object) inside a nested state."""
    if isinstance(x, np.ndarray):
        return int(x.nbytes)
    if isinstance(x, (bytes, bytearray)):
        return len(x)
    if isinstance(x, Mapping):
        return sum(_stored_bytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_stored_bytes(v) for v in x)
    return 0


def dequantize_demucs(
    state: Mapping[str, Any],
    config: DemucsConfig,
    method: str = "diffq",
    min_size: float = 1.0,
    group_size: int = 8,
    bits: int | None = None,
    name: str = "quantized state",
) -> dict[str, np.ndarray]:
    """Dequantize a diffq quantized state (read torch-free) with diffq's own API; needs torch, diffq, demucs.

    ``demucs_quantized`` was saved from ``DiffQuantizer(Demucs(SOURCES, channels=64), group_size=8,
    min_size=1)``; a package saved during training names its quantizer in ``training_args`` (``diffq``,
    ``q_min_size``; ``qat`` for the uniform quantizer). The model is rebuilt from ``config`` (upstream
    ``demucs.model.Demucs``), the quantizer attached to it the same way, and its restored state dict returned.

    The config comes from the file: before anything is built, its parameter count is checked against what the
    state can hold (diffq stores every parameter in at least one bit), so that a corrupt file cannot make the
    converter allocate a model of arbitrary size.
    """
    nb_params = sum(math.prod(shape) for _, shape in parameter_inventory(config))
    stored = _stored_bytes(state)
    if nb_params > 8 * stored + 1024:
        raise ConversionError(
            f"{name}: a Demucs(channels={config.channels}, depth={config.depth}, ...) has {nb_params} parameters, "
            f"more than the {stored} bytes of the quantized state can hold: corrupt file or wrong --model"
        )
    try:
        import torch
        from demucs.model import Demucs
        from diffq import DiffQuantizer, UniformQuantizer
    except ImportError as e:
        raise ConversionError(
            f"{name} is diffq-quantized: dequantizing it needs torch, diffq<0.2 (0.1.1 tested) and demucs 2.0.3 "
            f"with julius, which are not importable here ({e}). Install them, e.g. "
            "'pip install torch==2.13.0 julius==0.2.8 && pip install --no-deps diffq==0.1.1 demucs==2.0.3', or "
            "convert the file once on a machine that has them: the canonical file needs none of them."
        ) from None

    def to_torch(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.array(x, copy=True))
        if isinstance(x, (list, tuple)):
            return type(x)(to_torch(v) for v in x)
        if isinstance(x, dict):
            return {k: to_torch(v) for k, v in x.items()}
        return x

    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    kwargs["sources"] = list(config.sources)
    model = Demucs(**kwargs)
    if method == "diffq":
        quantizer = DiffQuantizer(model, group_size=group_size, min_size=min_size)
    else:
        quantizer = UniformQuantizer(model, bits=bits, min_size=min_size)
    expected = {
        "quantized": sum(1 for q in getattr(quantizer, "_qparams", []) if q.other is None),
        "float16": len(getattr(quantizer, "_float16", [])),
        "others": len(getattr(quantizer, "_others", [])),
    }
    found = {k: len(state[k]) for k in expected}
    if found != expected:
        raise ConversionError(
            f"{name}: the quantized state holds {found} parameter groups, a {method} quantizer on "
            f"Demucs(channels={config.channels}, depth={config.depth}, ...) expects {expected}: pass the right --model"
        )
    try:
        quantizer.restore_quantized_state(to_torch(state))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConversionError(f"{name}: the quantized state does not fit the model config: {e}") from None
    quantizer.detach()
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _infer_quantized_config(state: Mapping[str, Any], name: str, notes: list[str]) -> DemucsConfig:
    others = state.get("others") or []
    first = others[0] if others else None
    if not isinstance(first, np.ndarray) or first.ndim != 3:
        raise ConversionError(f"{name}: cannot infer the model from the quantized state; pass --model")
    channels, audio_channels, kernel_size = first.shape
    notes.append(
        f"model inferred from the quantized state's first tensor {first.shape}: Demucs(channels={channels}); other "
        "arguments are the demucs 2.0.x defaults (pass --model to choose)"
    )
    return DemucsConfig(channels=channels, audio_channels=audio_channels, kernel_size=kernel_size)


def _read_demucs(obj: dict[str, Any], info: SourceFile, preset: str | None) -> Converted:
    notes: list[str] = []
    dtypes: dict[str, int] = {}
    name = info.path.name
    if "klass" in obj and "state" in obj:
        qualname = klass_name(obj["klass"])
        if qualname == HTDEMUCS_CLASS:
            return read_htdemucs(obj, info, preset, "demucs 4.x package (HTDemucs)")
        if qualname in NOT_SUPPORTED_YET:
            raise ConversionError(
                f"{name} is a demucs package of {qualname}, {NOT_SUPPORTED_YET[qualname]}: not supported yet "
                f"(this project reads demucs.model.Demucs (demucs 2.0.x) and {HTDEMUCS_CLASS} (v4) packages)"
            )
    config = _demucs_preset(preset, name)
    state: Any = obj
    quantizer: dict[str, Any] | None = None
    if "klass" in obj and "state" in obj:
        qualname = klass_name(obj["klass"])
        if qualname != "demucs.model.Demucs":
            raise ConversionError(
                f"{name} is a demucs package of {qualname}: only demucs.model.Demucs (demucs 2.0.x, the v2 waveform "
                "model) is supported"
            )
        recorded = _demucs_config_from_call(obj.get("args", ()), obj.get("kwargs", {}), name, notes)
        if config is not None and config != recorded:
            diffs = config_differences(recorded, config)
            raise ConversionError(f"{name}: the package's constructor arguments differ from --model {preset}: {diffs}")
        config = recorded
        state = obj["state"]
        kind = "demucs package"
        if isinstance(state, dict) and "compressed" in state:
            quantizer = _training_quantizer(obj.get("training_args"))
    else:
        kind = "demucs state dict"
        if set(obj) == {"compressed"}:
            quantizer = {"method": "diffq", "min_size": 1.0, "group_size": 8}
            kind = "demucs diffq-quantized state"
    if quantizer is not None:
        if not isinstance(state, dict):
            raise ConversionError(f"{name}: malformed quantized state")
        quantized = _read_quantized_state(state["compressed"], name)
        if config is None:
            config = _infer_quantized_config(quantized, name, notes)
        method = quantizer.pop("method")
        state = dequantize_demucs(quantized, config, method, name=name, **quantizer)
        notes.append(f"dequantized with {method} ({', '.join(f'{k}={v}' for k, v in quantizer.items())})")
        kind += " (diffq-quantized)" if method == "diffq" else " (uniformly quantized)"
    state = as_state(state, name)
    config, checked, matched = _demucs_state(state, config, preset, name, notes)
    weights = to_float32(checked, notes, dtypes, name)
    return Converted(weights, config, info.path, kind, [info], preset, matched, notes, dtypes)


# --- entry point ------------------------------------------------------------------------------------------------


def read_upstream(
    path: str | Path,
    model: str | None = None,
    targets: tuple[str, ...] | None = None,
    target: str | None = None,
    progress: Progress | None = None,
) -> Converted:
    """Read an upstream weight file, openunmix model folder or demucs 4.x bag into canonical weights and a config.

    Args:
        path: a ``.pth``/``.th``/``.pt`` file, a demucs 4.1.0 hub ``<sig>.safetensors``, an openunmix model
            folder, a demucs bag ``.yaml`` or a folder holding one (:func:`weights_convert.htdemucs_bags.read_bag`).
        model: a preset name (``umxhq``, ``umxse``, ``demucs``, ``demucs_unittest``, ``htdemucs``, ...): the config
            to use instead of inferring one (needed for a bare HTDemucs state dict whose shapes fit several
            presets); the file is checked against it.
        targets: for a folder, the targets to read, in order (default: all found).
        target: for a single Open-Unmix file, its target name (default: from the file name, ``vocals-<hash>``
            -> ``vocals``).
        progress: see :func:`weights_convert.torch_pickle.read_checkpoint`.

    Raises:
        CheckpointError: the file is not a readable checkpoint (or refers to a forbidden global).
        ConversionError: readable but not convertible (unknown layout, wrong preset, missing files).
        core_spec.params.WeightsMismatchError: the weights do not match the (inferred or given) config.
    """
    path = Path(path)
    if model is not None:
        preset_config(model)
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    if path.is_dir() and find_bag_yaml(path) is not None:
        return read_bag(path, model, progress)
    if path.is_file() and path.suffix in BAG_SUFFIXES:
        return read_bag(path, model, progress)
    if path.is_dir():
        if model is not None and not isinstance(preset_config(model), UMXSeparatorConfig):
            raise ConversionError(
                f"--model {model} is {preset_kind(preset_config(model))}, but {path} is a folder (an Open-Unmix model)"
            )
        return _read_umx_folder(path, model, targets, progress)
    if path.name.endswith(".safetensors") and hub_metadata(path) is not None:
        return read_hub(path, model)
    obj, info = read_file(path, "weights", progress)
    name = path.name
    kind = "openunmix state dict"
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict) and "klass" not in obj:
        obj = obj["state_dict"]
        kind = "openunmix training checkpoint (state_dict entry)"
    if not isinstance(obj, dict):
        as_state(obj, name)  # raises with a description
    if is_bare_htdemucs(obj):
        return read_bare_htdemucs(obj, info, model)
    is_demucs = ("klass" in obj and "state" in obj) or set(obj) == {"compressed"} or "encoder.0.0.weight" in obj
    if is_demucs:
        return _read_demucs(obj, info, model)
    if "fc1.weight" in obj or any(isinstance(k, str) and k.startswith("target_models.") for k in obj):
        return _read_umx_file(obj, info, model, target, kind)
    as_state(obj, name)
    raise ConversionError(
        f"{name}: a state dict with keys {keys_preview(obj)} is neither an Open-Unmix, a Demucs v2 nor an HTDemucs "
        "model"
    )
