"""Upstream file or folder -> canonical files (and, optionally, each framework's own format), all or nothing.

Everything is written into a staging folder beside the outputs first (same file system); only when every file
is complete, and no output exists (or ``force``), are they moved into place with ``os.replace``. A failure at
any point (unreadable input, wrong preset, a port that is not available yet) leaves no output behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core_spec.canonical import canonical_paths, save_canonical
from core_spec.configs import DemucsConfig, UMXSeparatorConfig
from core_spec.params import nb_parameters
from weights_convert.errors import OutputExistsError
from weights_convert.sources import Converted, read_upstream, sha256_file

from .convert_targets import framework, save_native

__all__ = ["PROGRESS_THRESHOLD", "Report", "Written", "convert", "default_out", "native_stem", "progress_bar"]

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

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    def lines(self) -> list[str]:
        c = self.converted
        out = [f"source    {c.source}  ({c.kind})"]
        for f in c.files:
            out.append(f"  read    {f.path.name}  {f.format}  {_size(f.nbytes)}  sha256 {f.sha256}")
        out.append(f"model     {describe(c.config)}")
        if c.preset:
            out.append(f"preset    {c.preset} (given; the file was checked against it)")
        elif c.matched_presets:
            out.append(f"preset    none given; the shapes match {', '.join(c.matched_presets)}")
        else:
            out.append("preset    none given; config inferred from the shapes")
        counts = ", ".join(f"{k} {v:,}" for k, v in self.parameters.items())
        extra = f"; total {self.total_parameters:,}" if len(self.parameters) > 1 else ""
        out.append(f"values    {counts}{extra} (parameters and BatchNorm statistics, float32)")
        dtypes = ", ".join(f"{n} x {k}" for k, n in sorted(c.source_dtypes.items()))
        out.append(f"dtypes    source tensors: {dtypes}")
        for note in c.notes:
            out.append(f"note      {note}")
        for w in self.outputs:
            out.append(f"wrote     {w.path}  {_size(w.nbytes)}  sha256 {w.sha256}")
        return out


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} B"


def describe(config: UMXSeparatorConfig | DemucsConfig) -> str:
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


def parameter_counts(config: UMXSeparatorConfig | DemucsConfig) -> dict[str, int]:
    if isinstance(config, UMXSeparatorConfig):
        return {t: nb_parameters(config.model) for t in config.separator.targets}
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


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    model: str | None = None,
    force: bool = False,
    to: Sequence[str] = (),
    targets: Sequence[str] | None = None,
    target: str | None = None,
    progress: str = "auto",
) -> Report:
    """Convert an upstream file or folder to ``<out>.safetensors`` + ``<out>.json`` (and ``--to`` formats).

    Raises the errors of :func:`weights_convert.sources.read_upstream`, :class:`OutputExistsError` when an output
    exists and ``force`` is false, and :class:`ConversionError` for an unavailable ``--to`` framework. Nothing is
    left behind on failure.
    """
    source = Path(source)
    st_path, json_path = canonical_paths(Path(out) if out is not None else default_out(source))
    st_path = st_path.absolute()
    json_path = json_path.absolute()
    frameworks = [framework(k).key for k in dict.fromkeys(to)]
    if not force:
        for p in (st_path, json_path):
            if p.exists():
                raise OutputExistsError(f"{p} exists; pass --force to overwrite it")
    converted = read_upstream(
        source, model, tuple(targets) if targets else None, target, progress=progress_bar(progress)
    )
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


def _nbytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
