"""One-target Open-Unmix networks, as ``unmix-train`` writes them, joined into a separator.

``unmix-train --model umx --target vocals --out run_vocals`` writes ``run_vocals/vocals.safetensors`` +
``vocals.json``: the canonical weights of *one* target network (config :class:`~core_spec.configs.UMXConfig`).
Upstream's training script writes the same thing for each target (``<target>.pth`` + ``<target>.json``) and its
``umx --model <folder>`` separates with the targets it finds there. Here:

- :func:`collect_targets` finds the target networks that paths name: a run folder or any folder holding one-target
  canonical files (every top-level ``*.safetensors`` whose config is a ``UMXConfig``; other canonical files there,
  a whole separator or a Demucs model, are skipped), or one such file (a file holding a separator or a Demucs model
  is refused: it is not a target). The target's name is the file's stem (``vocals.safetensors`` -> ``vocals``).
  Paths are taken in the order given, the files of a folder sorted by name. The same target name twice is an error
  naming both files.
- :func:`join_separator` joins them into the canonical weights and :class:`~core_spec.configs.UMXSeparatorConfig`
  of one separator (:func:`core_spec.canonical.join_targets`): the targets must share one network config, and the
  separator's sample rate and STFT are those of the Open-Unmix preset with the same number of STFT bins
  (``umx``/``umxhq``/``umxl``: 2049 bins, 44.1 kHz, 4096/1024; ``umxse``: 513 bins, 16 kHz, 1024/512), as
  ``unmix-train`` trained them (:func:`core_spec.training.train_stft`), unless given.

Errors are :class:`TargetError` (a ``ValueError``); each names the file(s), what was expected and what to pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.canonical import FORMAT, canonical_paths, join_targets, load_canonical
from core_spec.configs import (
    UMX_PRESETS,
    SeparatorConfig,
    STFTConfig,
    UMXConfig,
    UMXSeparatorConfig,
    WienerConfig,
    config_from_json,
)

__all__ = ["TargetError", "TargetFile", "canonical_files", "collect_targets", "join_separator", "read_config"]

SUFFIX = ".safetensors"


class TargetError(ValueError):
    """Paths that do not give Open-Unmix target networks, or targets that cannot be joined (the message says why)."""


@dataclass(frozen=True)
class TargetFile:
    """One target network read from a canonical file.

    ``name``: the target (the file's stem); ``path``: the ``.safetensors`` file; ``weights``: its canonical arrays
    (upstream ``OpenUnmix.state_dict()`` names, checked against the inventory); ``provenance``: what the JSON
    records (``unmix-train``: the framework, epoch, validation loss and the recipe).
    """

    name: str
    path: Path
    config: UMXConfig
    weights: dict[str, np.ndarray] = field(repr=False)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)


def read_config(st_path: str | os.PathLike) -> Any:
    """The config of a canonical file, without reading its arrays (the JSON beside it, else the copy in the
    safetensors metadata).

    Raises:
        TargetError: no config can be read (not a canonical file of this project).
    """
    st_path, json_path = canonical_paths(st_path)
    try:
        if json_path.exists():
            text = json_path.read_text()
        else:
            from safetensors import safe_open

            with safe_open(str(st_path), framework="numpy") as f:
                text = (f.metadata() or {}).get("unmix_ports", "")
        header = json.loads(text) if text else {}
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {FORMAT!r}")
        return config_from_json(json.dumps(header["config"]))
    except Exception as e:  # any failure to read means: not a canonical file we can use
        raise TargetError(
            f"{st_path}: cannot read its canonical config ({type(e).__name__}: {e}); expected a .safetensors file "
            f"with its .json as unmix-train or unmix-convert writes them"
        ) from None


def canonical_files(folder: str | os.PathLike) -> list[tuple[Path, Any]]:
    """``(file, config)`` of every top-level canonical ``*.safetensors`` in ``folder``, sorted by name (hidden
    files, such as the temporary files of an interrupted write, are skipped).

    Raises:
        TargetError: a ``.safetensors`` file there whose config cannot be read.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))
    return [(p, read_config(p)) for p in files if p.is_file()]


def _describe(config: Any) -> str:
    if isinstance(config, UMXSeparatorConfig):
        return f"a whole Open-Unmix separator (targets {', '.join(config.separator.targets)})"
    return f"a {type(config).__name__}"


def _read_target(st_path: Path, name: str | None = None) -> TargetFile:
    try:
        weights, config, provenance = load_canonical(st_path)
    except (ValueError, KeyError, OSError) as e:
        raise TargetError(f"{st_path}: cannot read it ({type(e).__name__}: {e})") from None
    if not isinstance(config, UMXConfig):  # the header said otherwise: the file changed under us
        raise TargetError(f"{st_path}: holds {_describe(config)}, not one Open-Unmix target network (UMXConfig)")
    return TargetFile(name or st_path.name[: -len(SUFFIX)], st_path, config, weights, dict(provenance))


def _targets_of(path: Path) -> list[TargetFile]:
    if path.is_dir():
        found = canonical_files(path)
        targets = [p for p, config in found if isinstance(config, UMXConfig)]
        if not targets:
            others = "; ".join(f"{p.name} holds {_describe(c)}" for p, c in found) or "no .safetensors file"
            raise TargetError(
                f"{path}: no Open-Unmix target network (a <target>.safetensors + .json with a UMXConfig, as "
                f"unmix-train --model umx writes) ({others}); to join targets, pass run folders of unmix-train "
                f"--model umx or one-target files; a folder of one model is a --model of its own (pass it alone)"
            )
        return [_read_target(p) for p in targets]
    st_path, _ = canonical_paths(path)
    if not st_path.is_file():
        raise TargetError(
            f"{path}: not found (expected a run folder of unmix-train, a folder of one-target canonical files, or "
            f"a <target>.safetensors file)"
        )
    config = read_config(st_path)
    if not isinstance(config, UMXConfig):
        raise TargetError(
            f"{st_path}: holds {_describe(config)}, not one Open-Unmix target network (UMXConfig); it is not a "
            f"target to join with others: pass it alone"
        )
    return [_read_target(st_path)]


def collect_targets(paths: Iterable[str | os.PathLike]) -> list[TargetFile]:
    """The Open-Unmix target networks that ``paths`` name, in the order given (a folder's files sorted by name).

    Each path is a folder (an ``unmix-train`` run folder or any folder holding one-target canonical files: every
    top-level ``*.safetensors`` whose config is a ``UMXConfig``) or one such file (``.safetensors``, its ``.json``,
    or the stem). The name of each target is its file's stem.

    Raises:
        TargetError: a path that does not exist, a file that is not a one-target canonical file (a separator or a
            Demucs model), a folder with no target, an unreadable file, or the same target name twice (naming
            both files).
    """
    targets: list[TargetFile] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for target in _targets_of(Path(path)):
            if target.name in seen:
                raise TargetError(
                    f"target {target.name!r} is given twice: {seen[target.name]} and {target.path}; a separator "
                    f"holds each target once: pass only one of them"
                )
            seen[target.name] = target.path
            targets.append(target)
    if not targets:
        raise TargetError("no target network given: pass a run folder or a one-target .safetensors file")
    return targets


def _differences(a: UMXConfig, b: UMXConfig) -> list[str]:
    return [
        f"{f.name} {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}"
        for f in dataclasses.fields(UMXConfig)
        if getattr(a, f.name) != getattr(b, f.name)
    ]


def preset_settings(config: UMXConfig, where: str = "the targets") -> tuple[str, SeparatorConfig]:
    """``(preset name, its separator settings)`` of the first Open-Unmix preset whose network has ``config``'s
    number of STFT bins (the preset ``unmix-train`` trained it with).

    Raises:
        TargetError: no preset has that many bins.
    """
    for name, preset in UMX_PRESETS.items():
        if preset.model.nb_bins == config.nb_bins:
            return name, preset.separator
    known = ", ".join(f"{n}: {p.model.nb_bins}" for n, p in UMX_PRESETS.items())
    raise TargetError(
        f"{where}: networks of {config.nb_bins} STFT bins match no Open-Unmix preset ({known} bins), so the sample "
        f"rate and STFT of the separator are unknown; give them (sample_rate=, stft=)"
    )


def join_separator(
    targets: Sequence[TargetFile],
    *,
    sample_rate: float | None = None,
    stft: STFTConfig | None = None,
    wiener: WienerConfig | None = None,
) -> tuple[dict[str, np.ndarray], UMXSeparatorConfig]:
    """The canonical weights (``target_models.<target>.<name>``) and config of the separator of ``targets``, in
    their order.

    Args:
        targets: from :func:`collect_targets`; their networks must share one ``UMXConfig``.
        sample_rate, stft: the separator's (default: those of the preset with the networks' number of STFT bins,
            see :func:`preset_settings`).
        wiener: the Wiener-filter settings (default: the preset's, i.e. upstream's: ``niter=1``, no residual).

    Raises:
        TargetError: no targets, the same name twice, networks that differ (naming the fields and both files), or
            no preset for their number of bins when ``stft``/``sample_rate`` are not given.
    """
    if not targets:
        raise TargetError("no target network to join")
    first = targets[0]
    names: dict[str, Path] = {}
    for target in targets:
        if target.name in names:
            raise TargetError(
                f"target {target.name!r} is given twice: {names[target.name]} and {target.path}; pass only one of them"
            )
        names[target.name] = target.path
        differ = _differences(first.config, target.config)
        if differ:
            raise TargetError(
                f"targets {first.name!r} ({first.path}) and {target.name!r} ({target.path}) are different networks: "
                f"{', '.join(differ)}; the targets of one separator share one network config (train them with the "
                f"same --preset), or separate with each alone (--residual)"
            )
    if stft is not None and stft.nb_bins != first.config.nb_bins:
        raise TargetError(
            f"{first.path}: a network of {first.config.nb_bins} STFT bins, but stft n_fft={stft.n_fft} gives "
            f"{stft.nb_bins}; give an STFT with n_fft = {2 * (first.config.nb_bins - 1)}"
        )
    separator = SeparatorConfig(targets=tuple(names))
    if sample_rate is None or stft is None:
        _, preset = preset_settings(first.config, ", ".join(str(t.path) for t in targets))
        separator = dataclasses.replace(preset, targets=tuple(names))
    separator = dataclasses.replace(
        separator,
        sample_rate=float(sample_rate if sample_rate is not None else separator.sample_rate),
        stft=stft if stft is not None else separator.stft,
        wiener=wiener if wiener is not None else separator.wiener,
    )
    weights = join_targets({t.name: t.weights for t in targets})
    return weights, UMXSeparatorConfig(model=first.config, separator=separator)
