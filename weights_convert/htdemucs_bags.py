"""demucs 4.x bags of models (``demucs/remote/*.yaml``) -> one canonical model, without torch.

A bag is a yaml (``models: [sig, ...]``; optional ``weights``: one row per model, one weight per source; optional
``segment`` in seconds) read with ``yaml.safe_load``, and the files its signatures name, in the yaml's folder
(what demucs 4.1.0's ``LocalRepo`` and the hub find):

- ``<sig>-<checksum>.th`` (upstream's ``files.txt`` naming, ``save_with_checksum``): the checksum (hex) must be
  the start of the file's SHA-256, as upstream checks it;
- ``<sig>.th``;
- ``<sig>.safetensors`` (4.1.0's hub layout, :func:`weights_convert.htdemucs_sources.read_hub`).

Every signature is resolved before anything is read; a missing one is a :class:`ConversionError` that lists the
names looked for, a signature with two candidate files too. Each file is an HTDemucs package or hub file (a bag of
HDemucs or v3 models, the ``mdx`` family, is refused naming the class); the models must agree on sources, sample
rate and audio channels.

The result (:func:`read_bag`): a bag of several models (or one model with non-unit weights or a ``segment``) is a
:class:`~core_spec.configs.BagConfig` whose canonical weights are upstream's ``BagOfModels.state_dict()`` names,
``models.<i>.<name>``; a yaml of one model without weights or segment (``htdemucs.yaml``, ``htdemucs_6s.yaml``) is
that model, an ordinary :class:`~core_spec.configs.HTDemucsConfig`.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core_spec.configs import HTDEMUCS_PRESETS, BagConfig, HTDemucsConfig

from .errors import ConversionError
from .htdemucs_sources import hub_metadata, read_htdemucs, read_hub
from .reading import (
    HTDEMUCS_CLASS,
    NOT_SUPPORTED_YET,
    Converted,
    Progress,
    SourceFile,
    config_differences,
    klass_name,
    preset_config,
    preset_kind,
    read_file,
    sha256_file,
)

__all__ = ["BAG_SUFFIXES", "BagYaml", "find_bag_yaml", "read_bag", "read_bag_yaml", "resolve_signature"]

BAG_SUFFIXES = (".yaml", ".yml")
_SIGNATURE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_CHECKSUM = re.compile(r"^[0-9a-f]+$")
_YAML_KEYS = ("models", "weights", "segment")


@dataclass
class BagYaml:
    """What a bag yaml says: ``signatures`` (in order), ``weights`` (rows per model, or ``None``), ``segment``
    (seconds as written, or ``None``), and ``notes`` (keys it holds that upstream does not read)."""

    signatures: list[str]
    weights: tuple[tuple[float, ...], ...] | None
    segment: int | float | None
    notes: list[str]


def find_bag_yaml(folder: Path) -> Path | None:
    """The one bag yaml in ``folder`` (``None`` when it holds none); several are an error naming them."""
    found = sorted(p for p in folder.iterdir() if p.suffix in BAG_SUFFIXES and p.is_file())
    if len(found) > 1:
        raise ConversionError(
            f"{folder} holds {len(found)} bag yamls ({', '.join(p.name for p in found)}): pass the one to convert"
        )
    return found[0] if found else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_bag_yaml(path: Path) -> BagYaml:
    """Parse and check a bag yaml (``yaml.safe_load``: no tags, no code)."""
    try:
        import yaml
    except ImportError:
        raise ConversionError(f"{path.name}: reading a bag yaml needs PyYAML ('pip install pyyaml')") from None
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path.name}: not a readable yaml ({e})") from None
    if not isinstance(data, dict) or "models" not in data:
        raise ConversionError(f"{path.name}: not a demucs bag (a yaml mapping with 'models: [signature, ...]')")
    models = data["models"]
    if not isinstance(models, list) or not models:
        raise ConversionError(f"{path.name}: 'models' must be a non-empty list of signatures, got {models!r:.80}")
    bad = [m for m in models if not isinstance(m, str) or not _SIGNATURE.match(m)]
    if bad:
        raise ConversionError(
            f"{path.name}: model signatures {', '.join(map(repr, bad))} are not names of letters, digits, '_' and "
            "'-' (quote a signature that yaml reads as a number)"
        )
    weights = data.get("weights")
    if weights is not None:
        rows_ok = isinstance(weights, list) and all(isinstance(r, list) and all(map(_number, r)) for r in weights)
        if not rows_ok or len(weights) != len(models):
            raise ConversionError(
                f"{path.name}: 'weights' must be {len(models)} rows (one per model) of numbers, got {weights!r:.120}"
            )
        weights = tuple(tuple(float(w) for w in row) for row in weights)
    segment = data.get("segment")
    if segment is not None and (not _number(segment) or segment <= 0):
        raise ConversionError(f"{path.name}: 'segment' must be a positive number of seconds, got {segment!r:.40}")
    other = [str(k) for k in data if k not in _YAML_KEYS]
    notes = [f"{path.name}: ignored key(s) {', '.join(other)} (upstream reads only {', '.join(_YAML_KEYS)})"]
    return BagYaml(list(models), weights, segment, notes if other else [])


def resolve_signature(folder: Path, signature: str, yaml_name: str) -> Path:
    """The file of ``signature`` in ``folder`` (module docstring); an error lists what was looked for."""
    candidates = [folder / f"{signature}.th", folder / f"{signature}.safetensors"]
    for path in sorted(folder.glob(f"{glob.escape(signature)}-*.th")):
        sig, checksum = path.name[: -len(".th")].rsplit("-", 1)
        if sig == signature and _CHECKSUM.match(checksum):
            candidates.append(path)
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise ConversionError(
            f"{yaml_name} names model {signature!r}, but {folder} holds no {signature}-<checksum>.th (upstream's "
            f"files.txt naming), {signature}.th or {signature}.safetensors (the hub's); nothing was written"
        )
    if len(found) > 1:
        raise ConversionError(
            f"{yaml_name}: model {signature!r} has {len(found)} files in {folder} ({', '.join(p.name for p in found)}):"
            " keep one"
        )
    return found[0]


def _check_checksum(path: Path) -> None:
    """``<sig>-<checksum>.th``: the checksum must start the file's SHA-256 (demucs' ``check_checksum``)."""
    if path.suffix != ".th" or "-" not in path.stem:
        return
    checksum = path.stem.rsplit("-", 1)[1]
    actual = sha256_file(path)
    if not actual.startswith(checksum):
        raise ConversionError(
            f"{path.name}: the file name's checksum {checksum} is not the start of its SHA-256 {actual}: the file is "
            "corrupt or truncated (download it again)"
        )


def _read_member(path: Path, index: int, signature: str, progress: Progress | None) -> Converted:
    role = f"model {index} ({signature})"
    _check_checksum(path)
    if path.suffix == ".safetensors":
        if hub_metadata(path) is None:
            raise ConversionError(f"{path.name}: a safetensors file but not demucs 4.1.0's hub layout (no 'klass')")
        member = read_hub(path, None)
        member.files[0].role = role
        return member
    obj, info = read_file(path, role, progress)
    if not (isinstance(obj, dict) and "klass" in obj and "state" in obj):
        raise ConversionError(
            f"{path.name} ({role}) is not a demucs package (klass, args, kwargs, state): a bag's models are files "
            "as demucs.states.serialize_model writes them"
        )
    qualname = klass_name(obj["klass"])
    if qualname in NOT_SUPPORTED_YET:
        raise ConversionError(f"{path.name} ({role}) is a package of {qualname}, {NOT_SUPPORTED_YET[qualname]}: "
                              "not supported yet")  # fmt: skip
    if qualname != HTDEMUCS_CLASS:
        raise ConversionError(f"{path.name} ({role}) is a package of {qualname}: a demucs 4.x bag of HTDemucs expected")
    return read_htdemucs(obj, info, None, "demucs 4.x package (HTDemucs)")


def _check_agree(members: list[Converted]) -> None:
    """The models of a bag agree on sources, sample rate and audio channels (upstream's ``BagOfModels`` asserts)."""
    for name in ("sources", "samplerate", "audio_channels"):
        values = [getattr(m.config, name) for m in members]
        if any(v != values[0] for v in values):
            shown = "; ".join(f"{m.files[0].path.name}: {v!r}" for m, v in zip(members, values, strict=True))
            raise ConversionError(f"the bag's models disagree on {name}, which one bag cannot hold: {shown}")


def _check_preset(config: HTDemucsConfig | BagConfig, preset: str, name: str) -> None:
    wanted = preset_config(preset)
    if isinstance(config, HTDemucsConfig) and isinstance(wanted, HTDemucsConfig):
        diffs = config_differences(config, wanted)
        if diffs:
            raise ConversionError(f"{name}: the model's constructor arguments differ from --model {preset}: {diffs}")
        return
    if isinstance(config, BagConfig) and isinstance(wanted, BagConfig):
        if len(config.models) != len(wanted.models):
            raise ConversionError(f"{name}: a bag of {len(config.models)} models, --model {preset} has "
                                  f"{len(wanted.models)}")  # fmt: skip
        for i, (got, want) in enumerate(zip(config.models, wanted.models, strict=True)):
            diffs = config_differences(got, want)
            if diffs:
                raise ConversionError(
                    f"{name}: model {i}'s constructor arguments differ from --model {preset}: {diffs}"
                )
        if config.source_weights() != wanted.source_weights() or config.segment != wanted.segment:
            raise ConversionError(
                f"{name}: weights {config.source_weights()} / segment {config.segment} differ from --model {preset}'s "
                f"{wanted.source_weights()} / {wanted.segment}"
            )
        return
    got = f"a bag of {len(config.models)} HTDemucs models" if isinstance(config, BagConfig) else "one HTDemucs model"
    raise ConversionError(f"--model {preset} is {preset_kind(wanted)}, but {name} is {got}")


def read_bag(path: Path, preset: str | None = None, progress: Progress | None = None) -> Converted:
    """A bag yaml (or a folder holding one) and its models -> canonical weights and a config (module docstring).

    ``preset`` (``htdemucs_ft``; ``htdemucs``/``htdemucs_6s`` for a yaml of one model) is checked against what the
    files record. Raises :class:`ConversionError` (missing or ambiguous files, a checksum mismatch, models that
    disagree, a model class not ported), and the errors of the readers of each file.
    """
    path = Path(path).absolute()  # files are recorded relative to a folder source
    yaml_path = find_bag_yaml(path) if path.is_dir() else path
    if yaml_path is None:
        raise ConversionError(f"{path} holds no bag yaml")
    if preset is not None and not isinstance(preset_config(preset), (HTDemucsConfig, BagConfig)):
        raise ConversionError(
            f"--model {preset} is {preset_kind(preset_config(preset))}, but {yaml_path.name} is a demucs 4.x bag"
        )
    bag = read_bag_yaml(yaml_path)
    if preset is not None:  # what the yaml alone shows, before any model file is read
        wanted, count = preset_config(preset), len(bag.signatures)
        if isinstance(wanted, HTDemucsConfig) and count > 1:
            raise ConversionError(
                f"--model {preset} is {preset_kind(wanted)}, but {yaml_path.name} is a bag of {count} HTDemucs models"
            )
        if isinstance(wanted, BagConfig) and count != len(wanted.models):
            raise ConversionError(
                f"{yaml_path.name}: a bag of {count} models, --model {preset} has {len(wanted.models)}"
            )
    files = [resolve_signature(yaml_path.parent, sig, yaml_path.name) for sig in bag.signatures]
    members = [_read_member(f, i, sig, progress) for i, (f, sig) in enumerate(zip(files, bag.signatures, strict=True))]
    _check_agree(members)
    nb_sources = len(members[0].config.sources)
    if bag.weights is not None and any(len(row) != nb_sources for row in bag.weights):
        raise ConversionError(
            f"{yaml_path.name}: 'weights' rows must hold one weight per source ({nb_sources}: "
            f"{', '.join(members[0].config.sources)}), got rows of {[len(row) for row in bag.weights]}"
        )
    notes = list(bag.notes)
    dtypes: dict[str, int] = {}
    for member in members:
        notes += member.notes
        for k, n in member.source_dtypes.items():
            dtypes[k] = dtypes.get(k, 0) + n
    single = len(members) == 1 and bag.segment is None and (bag.weights is None or set(bag.weights[0]) == {1.0})
    config: HTDemucsConfig | BagConfig
    if single:
        config, weights = members[0].config, members[0].weights
        notes.append(f"{yaml_path.name}: one model, no weights or segment: written as that model (no bag)")
    else:
        models = tuple(m.config for m in members)
        config = BagConfig(models=models, weights=bag.weights, segment=bag.segment)
        weights = {f"models.{i}.{k}": v for i, m in enumerate(members) for k, v in m.weights.items()}
    if preset is not None:
        _check_preset(config, preset, yaml_path.name)
    matched = [n for n, p in HTDEMUCS_PRESETS.items() if p == config]
    info = SourceFile(yaml_path, sha256_file(yaml_path), "yaml (demucs bag)", yaml_path.stat().st_size, "bag")
    files_read = [info, *(f for m in members for f in m.files)]
    kind = f"demucs 4.x bag ({yaml_path.name}) of {len(members)} HTDemucs model{'s' if len(members) > 1 else ''}"
    return Converted(weights, config, path, kind, files_read, preset, matched, notes, dtypes)
