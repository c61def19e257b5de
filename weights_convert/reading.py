"""What every upstream reader shares: the record of a read (:class:`SourceFile`, :class:`Converted`), the presets
a user may name with ``--model``, and the checks that turn what a file held into canonical float32 weights.

:mod:`weights_convert.sources` (Open-Unmix, demucs 2.0.x, the entry point
:func:`~weights_convert.sources.read_upstream`), :mod:`weights_convert.htdemucs_sources` (demucs 4.x HTDemucs
packages, hub files, bare state dicts) and :mod:`weights_convert.htdemucs_bags` (``remote/*.yaml`` bags) build on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import (
    DEMUCS_PRESETS,
    HTDEMUCS_PRESETS,
    UMX_PRESETS,
    BagConfig,
    DemucsConfig,
    HTDemucsConfig,
    UMXSeparatorConfig,
)

from .errors import ConversionError, NonFiniteWeightsWarning
from .torch_pickle import GlobalRef, read_checkpoint

__all__ = [
    "HTDEMUCS_CLASS",
    "NOT_SUPPORTED_YET",
    "PRESET_ALIASES",
    "Converted",
    "Progress",
    "SourceFile",
    "as_state",
    "config_differences",
    "keys_preview",
    "klass_name",
    "preset_config",
    "preset_kind",
    "read_file",
    "sha256_file",
    "to_float32",
]

# Names a user may pass to --model beyond the core_spec presets: the quantized release is the ``demucs`` network.
PRESET_ALIASES = {"demucs_quantized": "demucs"}
HTDEMUCS_CLASS = "demucs.htdemucs.HTDemucs"
# Model classes of demucs 3.x/4.x packages that this project does not port yet.
NOT_SUPPORTED_YET = {
    "demucs.hdemucs.HDemucs": "HDemucs (Hybrid Demucs, demucs v3)",
    "demucs.demucs.Demucs": "the v3 time-domain Demucs of demucs 3.x/4.x (not the demucs 2.0.x demucs.model.Demucs)",
}

Progress = Callable[[int], Any]


@dataclass
class SourceFile:
    """One file that was read: where, its SHA-256, its format, what it held."""

    path: Path
    sha256: str
    format: str
    nbytes: int
    role: str

    def as_dict(self, base: Path | None = None) -> dict[str, Any]:
        return {
            "path": self.path.name if base is None else str(self.path.relative_to(base)),
            "sha256": self.sha256,
            "format": self.format,
            "bytes": self.nbytes,
            "role": self.role,
        }


@dataclass
class Converted:
    """An upstream model read back: canonical float32 weights, the config, where they came from."""

    weights: dict[str, np.ndarray]
    config: UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig
    source: Path
    kind: str
    files: list[SourceFile]
    preset: str | None = None
    matched_presets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source_dtypes: dict[str, int] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        """What the canonical JSON records about the source: path, SHA-256, kind, preset, notes."""
        base = self.source if self.source.is_dir() else None
        out: dict[str, Any] = {
            "source": self.source.name,
            "source_kind": self.kind,
            "files": [f.as_dict(base) for f in self.files],
            "preset": self.preset,
            "matched_presets": self.matched_presets,
            "source_dtypes": self.source_dtypes,
            "notes": self.notes,
            "converter": "weights_convert (unmix-ports)",
        }
        if len(self.files) == 1:
            out["sha256"] = self.files[0].sha256
        return out


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in blocks into one reused buffer (no new ``bytes`` per block)."""
    h = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


# --- presets ---------------------------------------------------------------------------------------------------


def preset_config(name: str) -> UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig:
    """The config of a preset name (``umxhq``, ``umxse``, ``demucs``, ``demucs_unittest``, ``demucs_quantized``,
    ``htdemucs``, ``htdemucs_6s``, ``htdemucs_ft`` (a bag)...)."""
    name = PRESET_ALIASES.get(name, name)
    if name in UMX_PRESETS:
        return UMX_PRESETS[name]
    if name in DEMUCS_PRESETS:
        return DEMUCS_PRESETS[name]
    if name in HTDEMUCS_PRESETS:
        return HTDEMUCS_PRESETS[name]
    known = sorted([*UMX_PRESETS, *DEMUCS_PRESETS, *HTDEMUCS_PRESETS, *PRESET_ALIASES])
    raise ConversionError(f"unknown model preset {name!r}; known: {', '.join(known)}")


def preset_kind(config: Any) -> str:
    """How a preset's family is named in messages (``an Open-Unmix preset``...)."""
    if isinstance(config, UMXSeparatorConfig):
        return "an Open-Unmix preset"
    if isinstance(config, DemucsConfig):
        return "a Demucs preset (v2, demucs 2.0.x)"
    if isinstance(config, BagConfig):
        return f"a bag preset of {len(config.models)} HTDemucs models (demucs v4)"
    return "an HTDemucs preset (demucs v4)"


# --- reading and cleaning state dicts ---------------------------------------------------------------------------


def read_file(path: Path, role: str, progress: Progress | None) -> tuple[Any, SourceFile]:
    """The object a ``torch.save`` file holds (read torch-free) and the record of the read."""
    with ThreadPoolExecutor(max_workers=1) as pool:  # hashing releases the GIL: it overlaps the read
        digest = pool.submit(sha256_file, path)
        checkpoint = read_checkpoint(path, progress=progress)
        info = SourceFile(path, digest.result(), checkpoint.format, checkpoint.nbytes, role)
    return checkpoint.obj, info


def as_state(obj: Any, name: str) -> dict[str, np.ndarray]:
    """A state dict (str -> array), or a clear error saying what the object is instead."""
    if not isinstance(obj, dict):
        raise ConversionError(
            f"{name} holds a {type(obj).__name__}, not a state dict (name -> tensor), a demucs package or a "
            "quantized state"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        shown = ", ".join(f"{k!r} ({type(obj[k]).__name__})" for k in bad[:6])
        raise ConversionError(
            f"{name} is not a state dict: entries {shown}{' ...' if len(bad) > 6 else ''} are not tensors "
            f"(keys: {keys_preview(obj)})"
        )
    return obj


def keys_preview(obj: Mapping, n: int = 8) -> str:
    keys = [str(k) for k in list(obj)[:n]]
    return ", ".join(keys) + (", ..." if len(obj) > n else "")


def to_float32(
    weights: Mapping[str, np.ndarray], notes: list[str], dtypes: dict[str, int], where: str
) -> dict[str, np.ndarray]:
    """float16/bfloat16 -> float32 exactly; float64 rounded (noted); NaN/Inf counted and warned about."""
    out: dict[str, np.ndarray] = {}
    rounded: list[str] = []
    for key, value in weights.items():
        dtypes[value.dtype.name] = dtypes.get(value.dtype.name, 0) + 1
        if value.dtype.kind not in "fiub":
            raise ConversionError(f"{where}: {key} has dtype {value.dtype}, which cannot be a weight")
        converted = value.astype(np.float32, copy=False)  # float32 tensors stay the reader's arrays
        if value.dtype.itemsize > 4 or value.dtype.kind in "iu":
            back = converted.astype(value.dtype)
            same = (
                np.array_equal(back, value, equal_nan=True) if value.dtype.kind == "f" else np.array_equal(back, value)
            )
            if not same:
                rounded.append(key)
        out[key] = converted
    if rounded:
        notes.append(f"{where}: {len(rounded)} float64/integer tensor(s) rounded to float32: {', '.join(rounded[:6])}")
    bad = []
    for key, value in out.items():
        if np.isfinite(value).all():  # one pass in the common case; count only where something is wrong
            continue
        nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        bad.append(f"{key} ({nan} NaN, {inf} Inf)")
    if bad:
        message = f"{where}: non-finite weights, converted as they are: {'; '.join(bad)}"
        warnings.warn(message, NonFiniteWeightsWarning, stacklevel=3)
        notes.append(message)
    return out


def config_differences(a: Any, b: Any, fields: tuple[str, ...] | None = None) -> list[str]:
    """``name: file X, preset Y`` for every constructor argument where config ``a`` (the file's) differs from ``b``."""
    names = fields or tuple(f.name for f in dataclasses.fields(a) if f.init)
    return [f"{n}: file {getattr(a, n)!r}, preset {getattr(b, n)!r}" for n in names if getattr(a, n) != getattr(b, n)]


def klass_name(klass: Any) -> str:
    """The qualified name of a package's ``klass`` (a pickled global recorded by name, or the hub's string)."""
    if isinstance(klass, GlobalRef):
        return klass.qualname
    if isinstance(klass, str):  # the hub layout records it as a string
        return klass
    return repr(klass)
