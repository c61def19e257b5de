"""Upstream file or folder, or canonical files -> canonical files (and, optionally, each framework's own format),
or upstream's own layouts (``export``), all or nothing.

Sources (:func:`read_source`):

- one upstream file or openunmix model folder, or a demucs 4.x bag (a ``remote/*.yaml``, or a folder holding one
  yaml and the files its signatures name): :func:`weights_convert.sources.read_upstream`;
- Open-Unmix target networks in the canonical format (an ``unmix-train`` run folder, a folder of one-target
  ``<target>.safetensors`` files, such files; one source or several): joined into one separator
  (:func:`unmix.targets.collect_targets`, :func:`unmix.targets.join_separator`);
- one canonical file of a whole model (a UMX separator or a Demucs model; or a folder holding exactly one such file
  and no upstream weights, such as a Demucs run folder): read as it is.

Everything is written into a staging folder beside the outputs first (same file system); only when every file
is complete, and no output exists (or ``force``), are they moved into place with ``os.replace``. A failure at
any point (unreadable input, wrong preset, a port that is not available yet) leaves no output behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core_spec.canonical import canonical_paths, load_canonical, save_canonical
from core_spec.configs import UMX_PRESETS, BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig
from core_spec.params import nb_parameters
from weights_convert.errors import ConversionError, OutputExistsError
from weights_convert.htdemucs_bags import BAG_SUFFIXES
from weights_convert.sources import Converted, SourceFile, hub_metadata, preset_config, read_upstream, sha256_file

from . import export_upstream
from .convert_targets import framework, save_native
from .targets import TargetError, collect_targets, join_separator, read_config

__all__ = [
    "PROGRESS_THRESHOLD",
    "CanonicalRead",
    "Report",
    "Written",
    "convert",
    "default_out",
    "native_stem",
    "progress_bar",
    "read_source",
]

Source = str | os.PathLike

# Storages larger than this in total get a progress bar in "auto" mode (the full umxhq set is 142 MB, demucs 1 GB).
PROGRESS_THRESHOLD = 64 << 20


@dataclass
class Written:
    path: Path
    sha256: str
    nbytes: int


@dataclass
class Report:
    """What :func:`convert` read and wrote."""

    converted: Converted
    outputs: list[Written]
    parameters: dict[str, int]
    frameworks: list[str] = field(default_factory=list)
    export: str | None = None
    upstream: list[str] = field(default_factory=list)

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    def lines(self) -> list[str]:
        c = self.converted
        sources = getattr(c, "sources", None) or [c.source]
        out = [f"source    {', '.join(map(str, sources))}  ({c.kind})"]
        for f in c.files:
            role = f"  ({f.role})" if f.role.startswith(("target ", "model ")) else ""
            out.append(f"  read    {f.path.name}  {f.format}  {_size(f.nbytes)}  sha256 {f.sha256}{role}")
        out.append(f"model     {describe(c.config)}")
        if getattr(c, "config_line", ""):
            out.append(f"config    {c.config_line}")
        elif c.preset:
            out.append(f"preset    {c.preset} (given; the file was checked against it)")
        elif isinstance(c.config, (HTDemucsConfig, BagConfig)):  # a v4 file records its constructor arguments
            matched = f"; they are preset {', '.join(c.matched_presets)}'s" if c.matched_presets else ""
            where = "the files'" if isinstance(c.config, BagConfig) else "the file's"
            out.append(f"preset    none given; config from {where} constructor arguments{matched}")
        elif c.matched_presets:
            out.append(f"preset    none given; the shapes match {', '.join(c.matched_presets)}")
        else:
            out.append("preset    none given; config inferred from the shapes")
        counts = ", ".join(f"{k} {v:,}" for k, v in self.parameters.items())
        extra = f"; total {self.total_parameters:,}" if len(self.parameters) > 1 else ""
        v4 = isinstance(c.config, (HTDemucsConfig, BagConfig))
        what = "parameters" if v4 else "parameters and BatchNorm statistics"
        out.append(f"values    {counts}{extra} ({what}, float32)")
        dtypes = ", ".join(f"{n} x {k}" for k, n in sorted(c.source_dtypes.items()))
        out.append(f"dtypes    source tensors: {dtypes}")
        for note in c.notes:
            out.append(f"note      {note}")
        for w in self.outputs:
            out.append(f"wrote     {w.path}  {_size(w.nbytes)}  sha256 {w.sha256}")
        if self.export:
            out.append(f"layout    {EXPORT_LAYOUTS[self.export]}")
        for line in self.upstream:
            out.append(f"upstream  {line}")
        return out


EXPORT_LAYOUTS = {
    "openunmix": "openunmix 1.3.0 model folder (separator.json, <target>.json, <target>.pth)",
    "demucs": "demucs 2.0.3 package (demucs.utils.save_model: klass, args, kwargs, state, training_args)",
}


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} B"


def describe(config: UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig) -> str:
    if isinstance(config, BagConfig):
        weights = (
            "all ones"
            if config.weights is None
            else " ".join(f"[{' '.join(f'{w:g}' for w in r)}]" for r in config.weights)
        )
        segment = "the models' own" if config.segment is None else f"{config.segment[0]}/{config.segment[1]} s"
        models = [describe(m) for m in dict.fromkeys(config.models)]
        same = "the same network" if len(models) == 1 else f"{len(models)} different networks"
        return (
            f"bag of {len(config.models)} HTDemucs models ({same}): {'; '.join(models)}; per-source weights "
            f"{weights}; segment {segment}"
        )
    if isinstance(config, HTDemucsConfig):
        return (
            f"HTDemucs (v4), sources {', '.join(config.sources)}: channels {config.channels}, depth {config.depth}, "
            f"nfft {config.nfft}, dconv_mode {config.dconv_mode}, bottom_channels {config.bottom_channels}, "
            f"transformer {config.transformer_channels} wide x {config.t_layers} layers, segment "
            f"{config.segment_fraction} s, {config.samplerate} Hz"
        )
    if isinstance(config, UMXSeparatorConfig):
        m, s = config.model, config.separator
        lstm = f"{m.nb_layers} {'uni' if m.unidirectional else 'bi'}directional LSTM layers"
        return (
            f"Open-Unmix, targets {', '.join(s.targets)}: nb_bins {m.nb_bins}, max_bin {m.max_bin}, nb_channels "
            f"{m.nb_channels}, hidden_size {m.hidden_size}, {lstm}; STFT {s.stft.n_fft}/{s.stft.n_hop} at "
            f"{s.sample_rate:g} Hz"
        )
    return (
        f"Demucs v2, sources {', '.join(config.sources)}: channels {config.channels}, depth {config.depth}, "
        f"audio_channels {config.audio_channels}, kernel {config.kernel_size}/stride {config.stride}, "
        f"lstm_layers {config.lstm_layers}, context {config.context}, resample {config.resample}, "
        f"{config.samplerate} Hz"
    )


def parameter_counts(config: UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig) -> dict[str, int]:
    if isinstance(config, BagConfig):
        return {f"model {i}": nb_parameters(m) for i, m in enumerate(config.models)}
    if isinstance(config, UMXSeparatorConfig):
        return {t: nb_parameters(config.model) for t in config.separator.targets}
    if isinstance(config, HTDemucsConfig):
        return {"htdemucs": nb_parameters(config)}
    return {"demucs": nb_parameters(config)}


def progress_bar(mode: str = "auto") -> Callable[[int], Any] | None:
    """A factory for :func:`weights_convert.torch_pickle.read_checkpoint`'s ``progress``: a tqdm bar on stderr
    (``auto``: only for storages of :data:`PROGRESS_THRESHOLD` bytes or more)."""
    if mode == "off":
        return None

    def make(total: int) -> Any:
        from tqdm import tqdm

        show = mode == "on" or total >= PROGRESS_THRESHOLD
        return tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="reading tensors",
            disable=not show,
            file=sys.stderr,
            leave=False,
        )

    return make


def default_out(source: Path) -> Path:
    """``./<name>`` for a folder, ``./<file name without suffixes>`` for a file."""
    return Path.cwd() / (source.name if source.is_dir() else source.name.split(".", 1)[0])


def native_stem(stem: Path, framework_key: str) -> Path:
    """Where ``--to FW`` writes: ``<stem>-<fw>`` plus the port's own suffixes (``model-torch.pth``,
    ``model-tf.weights.h5`` + ``model-tf.json``, ...)."""
    return stem.with_name(f"{stem.name}-{framework_key}")


def _move(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)


@dataclass
class CanonicalRead(Converted):
    """Canonical input read back: one whole model as it is, or one-target networks joined into a separator.

    ``sources``: the paths given; ``config_line``: where the config came from (for the summary); ``record``:
    added to the provenance (the joined targets and their own provenance, or the file's).
    """

    sources: list[Path] = field(default_factory=list)
    config_line: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": ", ".join(p.name for p in self.sources),
            "source_kind": self.kind,
            "files": [f.as_dict() for f in self.files],
            "matched_presets": self.matched_presets,
            "notes": self.notes,
            "converter": "unmix-convert (unmix-ports)",
        }
        if len(self.files) == 1:
            out["sha256"] = self.files[0].sha256
        return {**out, **self.record}


_CANONICAL = ".safetensors"


def _canonical_file(path: Path) -> Path | None:
    """The ``.safetensors`` file a path names when it is a canonical file (or its ``.json``), else ``None``."""
    if path.is_file() and path.name.endswith(_CANONICAL):
        return path
    if path.is_file() and path.name.endswith(".json"):
        st_path = canonical_paths(path)[0]
        return st_path if st_path.is_file() else None
    return None


def _source_kind(path: Path) -> tuple[str, Path]:
    """``("targets", path)``, ``("model", canonical file)`` or ``("upstream", path)`` for a single source."""
    st_path = _canonical_file(path)
    if st_path is not None and hub_metadata(st_path) is not None:  # demucs 4.1.0's hub layout: upstream
        return "upstream", st_path
    if st_path is not None:
        return ("targets" if isinstance(read_config(st_path), UMXConfig) else "model"), st_path
    if not path.is_dir():
        return "upstream", path
    if any(p.suffix in BAG_SUFFIXES and p.is_file() for p in path.iterdir()):  # a demucs bag and its files
        return "upstream", path
    models: list[Path] = []
    for p in sorted(path.iterdir()):
        if not p.name.endswith(_CANONICAL) or p.name.startswith(".") or not p.is_file():
            continue
        try:
            config = read_config(p)
        except TargetError:
            continue
        if isinstance(config, UMXConfig):
            return "targets", path
        models.append(p)
    # a run folder's native twin of its model (demucs-torch.pth beside demucs.safetensors) is the same model
    natives = tuple(f"{m.name[: -len(_CANONICAL)]}-" for m in models)
    upstream = [p for p in path.iterdir() if p.suffix in (".pth", ".th") and not p.name.startswith((".", *natives))]
    if len(models) == 1 and not upstream:
        return "model", models[0]
    return "upstream", path


def _file(path: Path, role: str) -> SourceFile:
    return SourceFile(path, sha256_file(path), "canonical safetensors", path.stat().st_size, role)


def _read_model(st_path: Path, given: Path, model: str | None, targets: Any, target: str | None) -> CanonicalRead:
    used = [o for o, v in (("--model", model), ("--targets", targets), ("--target", target)) if v]
    weights, config, provenance = load_canonical(st_path)
    if used:
        raise ConversionError(
            f"{st_path} is a canonical file of {export_upstream.describe_kind(config)}: its config is used as it is, "
            f"so {', '.join(used)} do(es) not apply; leave {'it' if len(used) == 1 else 'them'} out"
        )
    return CanonicalRead(
        weights=weights,
        config=config,
        source=given,
        kind="canonical file",
        files=[_file(st_path, "weights")],
        source_dtypes={"float32": len(weights)},
        sources=[given],
        config_line=f"from {canonical_paths(st_path)[1].name} (canonical)",
        record={"canonical_provenance": provenance},
    )


def _differences(a: Any, b: Any) -> list[str]:
    return [
        f"{f.name} {getattr(a, f.name)!r} (preset) vs {getattr(b, f.name)!r}"
        for f in dataclasses.fields(a)
        if getattr(a, f.name) != getattr(b, f.name)
    ]


def _join(paths: list[Path], model: str | None, targets: Sequence[str] | None, target: str | None) -> CanonicalRead:
    for p in paths:
        if p.is_file() and _canonical_file(p) is None:
            raise ConversionError(
                f"{p} is not a canonical .safetensors file: several sources are joined as Open-Unmix target "
                f"networks (unmix-train run folders, <target>.safetensors files); convert an upstream file on its "
                f"own first (unmix-convert {p} -o STEM)"
            )
    found = collect_targets(paths)
    if target is not None:
        if len(found) != 1:
            raise ConversionError(
                f"--target names the target of a single network, but {len(found)} were found "
                f"({', '.join(t.name for t in found)}); a target is named after its file: rename the file instead"
            )
        found = [dataclasses.replace(found[0], name=target)]
    if targets:
        by_name = {t.name: t for t in found}
        missing = [t for t in targets if t not in by_name]
        if missing:
            raise ConversionError(
                f"--targets: {', '.join(missing)} not found in {', '.join(map(str, paths))} (targets there: "
                f"{', '.join(by_name)}); pass some of those"
            )
        found = [by_name[t] for t in dict.fromkeys(targets)]
    settings: dict[str, Any] = {}
    if model is not None:
        preset = preset_config(model)
        if not isinstance(preset, UMXSeparatorConfig):
            raise ConversionError(
                f"--model {model} is a Demucs preset, but {', '.join(map(str, paths))} hold(s) Open-Unmix target "
                f"networks; pass an Open-Unmix preset ({', '.join(UMX_PRESETS)}) or none"
            )
        differ = _differences(preset.model, found[0].config)
        if differ:
            raise ConversionError(
                f"{found[0].path}: the network is not preset {model}'s: {', '.join(differ)}; pass the preset it was "
                f"trained with, or no --model (the separator settings then follow its number of STFT bins)"
            )
        settings = {"sample_rate": preset.separator.sample_rate, "stft": preset.separator.stft}
    weights, config = join_separator(found, **settings)
    files = [_file(t.path, f"target {t.name}") for t in found]
    sep = config.separator
    origin = f"--model {model}" if model else f"the Open-Unmix preset of {config.model.nb_bins} STFT bins"
    return CanonicalRead(
        weights=weights,
        config=config,
        source=paths[0],
        kind=f"{len(found)} one-target canonical file{'s' if len(found) > 1 else ''}, joined",
        files=files,
        preset=model,
        matched_presets=[n for n, p in UMX_PRESETS.items() if p.model == config.model],
        notes=[f"separator settings from {origin}: {sep.sample_rate:g} Hz, STFT {sep.stft.n_fft}/{sep.stft.n_hop}"],
        source_dtypes={"float32": len(weights)},
        sources=paths,
        config_line=f"the targets' network (UMXConfig){f', checked against preset {model}' if model else ''}",
        record={
            "targets": {
                t.name: {"file": t.path.name, "sha256": f.sha256, "provenance": t.provenance}
                for t, f in zip(found, files, strict=True)
            }
        },
    )


def read_source(
    source: Source | Sequence[Source],
    model: str | None = None,
    targets: Sequence[str] | None = None,
    target: str | None = None,
    progress: str = "auto",
) -> Converted:
    """Read one source or several into canonical weights and a config (see the module's docstring).

    Raises the errors of :func:`weights_convert.sources.read_upstream` for an upstream source, and
    :class:`unmix.targets.TargetError` / :class:`ConversionError` for canonical ones.
    """
    paths = _as_paths(source)
    if not paths:
        raise ConversionError("no source given")
    if len(paths) == 1:
        kind, path = _source_kind(paths[0])
        if kind == "upstream":
            return read_upstream(
                path, model, tuple(targets) if targets else None, target, progress=progress_bar(progress)
            )
        if kind == "model":
            return _read_model(path, paths[0], model, targets, target)
    return _join(paths, model, targets, target)


def _as_paths(source: Source | Sequence[Source]) -> list[Path]:
    return [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(s) for s in source]


def convert(
    source: Source | Sequence[Source],
    out: str | os.PathLike | None = None,
    model: str | None = None,
    force: bool = False,
    to: Sequence[str] = (),
    targets: Sequence[str] | None = None,
    target: str | None = None,
    progress: str = "auto",
    export: str | None = None,
) -> Report:
    """Convert an upstream file or folder, or join canonical targets, to ``<out>.safetensors`` + ``<out>.json``
    (and ``--to`` formats); with ``export``, write upstream's layout at ``out`` instead
    (:mod:`unmix.export_upstream`).

    Raises the errors of :func:`read_source`, :class:`OutputExistsError` when an output exists and ``force`` is
    false, and :class:`ConversionError` for an unavailable ``--to`` framework or a model ``export`` cannot write.
    Nothing is left behind on failure.
    """
    sources = _as_paths(source)
    if export is not None:
        return _export(sources, out, model, force, to, targets, target, progress, export)
    first = sources[0] if sources else Path("model")
    st_path, json_path = canonical_paths(Path(out) if out is not None else default_out(first))
    st_path = st_path.absolute()
    json_path = json_path.absolute()
    frameworks = [framework(k).key for k in dict.fromkeys(to)]
    if not force:
        for p in (st_path, json_path):
            if p.exists():
                raise OutputExistsError(f"{p} exists; pass --force to overwrite it")
    converted = read_source(sources, model, targets, target, progress)
    parent = st_path.parent
    created = [p for p in [parent, *parent.parents] if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{st_path.stem}.", suffix=".staging"))
    committed = False
    try:
        stem = staging / st_path.stem
        save_canonical(stem, converted.weights, converted.config, converted.provenance())
        for key in frameworks:  # <stem>-<fw>.*: a port's files never collide with the canonical <stem>.json
            save_native(key, native_stem(stem, key), converted.weights, converted.config, force=True)
        staged = sorted(staging.iterdir())
        finals = [(p, parent / p.name) for p in staged]
        existing = [str(dst) for _, dst in finals if dst.exists()]
        if existing and not force:
            raise OutputExistsError(f"{', '.join(existing)} exist(s); pass --force to overwrite")
        for src, dst in finals:
            _move(src, dst)
        committed = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not committed:
            for p in created:  # innermost first
                try:
                    p.rmdir()
                except OSError:
                    break
    outputs = [Written(dst, sha256_file(dst) if dst.is_file() else "", _nbytes(dst)) for _, dst in finals]
    return Report(converted, outputs, parameter_counts(converted.config), frameworks)


def _export(
    sources: list[Path],
    out: str | os.PathLike | None,
    model: str | None,
    force: bool,
    to: Sequence[str],
    targets: Sequence[str] | None,
    target: str | None,
    progress: str,
    fmt: str,
) -> Report:
    if fmt not in export_upstream.FORMATS:
        raise ConversionError(f"--export {fmt!r}: unknown layout; choose from {', '.join(export_upstream.FORMATS)}")
    if to:
        raise ConversionError(
            "--to writes a framework's format beside a canonical file; --export writes upstream's layout only: "
            "leave --to out (or run unmix-convert once with --to, once with --export)"
        )
    if out is None:
        raise ConversionError(
            f"--export {fmt} needs -o/--out: the {'model folder' if fmt == 'openunmix' else '.th package'} to write"
        )
    export_upstream.require_torch(fmt)  # before reading a large file for nothing
    path = export_upstream.export_path(fmt, out)
    if not force and (path.exists() or path.is_symlink()):
        raise OutputExistsError(f"{path} exists; pass --force to replace it")
    converted = read_source(sources, model, targets, target, progress)
    written = export_upstream.export(
        fmt,
        path,
        converted.weights,
        converted.config,
        info=converted.provenance(),
        force=force,
        source=", ".join(map(str, sources)),
        sources=sources,
    )
    outputs = [Written(p, sha256_file(p), p.stat().st_size) for p in written]
    return Report(
        converted,
        outputs,
        parameter_counts(converted.config),
        export=fmt,
        upstream=export_upstream.upstream_command(fmt, path, converted.config),
    )


def _nbytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
