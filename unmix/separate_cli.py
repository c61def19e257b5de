"""``unmix-separate``: separate audio files into stems with Open-Unmix, Demucs v2 or HTDemucs (v4), in the ports.

::

    unmix-separate INPUT... --model MODEL --framework torch|tf|jax|nnabla [-o OUTDIR] [options]
    python -m umx_<fw> separate INPUT... --model MODEL [options]       # the same code, --framework fixed

``INPUT``: audio files, or folders (every audio file inside, recursively, sorted). ``MODEL``: a canonical file, a
native file of the port, an upstream file/folder (converted once, then read from the cache), or what
``unmix-train`` writes: a run folder
or a one-target file; ``--model`` repeated joins the Open-Unmix targets of several runs into one separator
(:mod:`unmix.separate_models`, :mod:`unmix.targets`). Stems go to ``OUTDIR/<model name>/<--filename>`` (default
``separated/<model>/<track>/<stem>.wav``; the model name is the file's stem or the folder's name, for several
``--model`` their names joined by ``+``).

Defaults are those of upstream's own commands: openunmix 1.3.0's ``umx`` for Open-Unmix (``--niter 1``,
``--wiener-win-len 300``, no residual, no soft mask; 32-bit float WAV, nothing clipped), demucs 2.0.3's
``python -m demucs.separate`` for Demucs v2 (``--shifts 0``, ``--overlap 0.25``, split into the model's segments;
16-bit WAV, each stem rescaled by ``max(1.01 * peak, 1)``) and demucs 4.1.0's ``demucs`` for HTDemucs (``htdemucs``,
``htdemucs_6s``, the ``htdemucs_ft`` bag: ``--shifts 1``, ``--overlap 0.25``, split into the training segment,
``--segment`` at most that segment, ``--two-stems`` with ``--other-method add``; 16-bit WAV rescaled as v2; the
track normalised by its mean and ``std + 1e-8`` as demucs 4.1.0's ``Separator``). Differences: shifts are drawn from
``--seed`` (upstream's are unseeded); digital silence gives silent stems (upstream's Demucs v2 gives NaN);
``--device`` defaults to ``cpu`` (upstream takes CUDA when it sees it); 16-bit samples are rounded (demucs
truncates).

Every track is read, checked (missing, unreadable, empty or too short, NaN/Inf, more than two channels,
non-representable amplitudes: a clear error naming the file), resampled to the model's rate if needed, separated,
and written through temporary files renamed together at the end: an existing output is refused without ``--force``,
an interrupted run (Ctrl-C, SIGTERM) leaves no partial file. A bad file is reported and the batch goes on; the exit
status is 1 if any file failed (2 for a usage error, 130 when interrupted).

``--framework nnabla`` where NNabla is not importable re-runs the command in ``.venv-nnabla``
(:func:`unmix.environments.rerun_in_nnabla`).

Speed across runs (:mod:`unmix.caches`): JAX's and TensorFlow's compiled graphs and the canonical conversions of
upstream files are kept in a per-user cache folder (``--cache-dir``; ``--no-cache`` for none); a batch loads the
model once and compiles each input shape once. See ``docs/separate.md``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from core_spec.audio import AudioError, check_amplitude
from core_spec.configs import segment_fraction
from core_spec.frameworks import FRAMEWORKS, importable
from unmix.audio_files import AudioFileError, StagedFiles, find_audio_files, read_audio_file, resample, write_audio_file
from unmix.caches import CompileCache, cache_root, enable_compile_cache
from unmix.environments import rerun_in_nnabla
from unmix.heap import trim_after_jax_compilations
from unmix.quick_exit import run_console
from unmix.separate_models import LoadedModel, ModelError, load_model, shown
from unmix.stems import (
    CLIP_MODES,
    DEFAULT_FILENAME,
    OTHER_METHODS,
    output_path,
    prevent_clip,
    select_stems,
    stem_names,
)
from unmix.umx_segments import AUTO, SegmentChoice, parse_segment, segment_plan

__all__ = ["console_main", "UMX_DEFAULTS", "DEMUCS_DEFAULTS", "HTDEMUCS_DEFAULTS", "build_parser", "main", "port_main"]

# upstream's command-line defaults (openunmix 1.3.0 cli.py; demucs 2.0.3 separate.py; demucs 4.1.0 separate.py)
UMX_DEFAULTS: dict[str, Any] = {"niter": 1, "wiener_win_len": 300, "softmask": False, "residual": None}
DEMUCS_DEFAULTS: dict[str, Any] = {"shifts": 0, "overlap": 0.25, "split": True, "segment": None, "seed": 0}
HTDEMUCS_DEFAULTS: dict[str, Any] = {"shifts": 1, "overlap": 0.25, "split": True, "segment": None, "seed": 0}
# (depth, clip mode)
OUTPUT_DEFAULTS = {"umx": ("float32", "none"), "demucs": ("int16", "rescale"), "htdemucs": ("int16", "rescale")}
CLAMP_BOUND = {"umx": 1.0, "demucs": 1.0, "htdemucs": 0.99}  # demucs 4.1.0's clamp mode: [-0.99, 0.99]
# demucs 4.1.0 separate.py, word for word
TOO_LONG = "Cannot use a Transformer model with a longer segment than it was trained for. Maximum segment is: {}"


def _stem_list(text: str) -> list[str]:
    return [s for s in (t.strip() for t in text.split(",")) if s]


def _win_len(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def build_parser(prog: str = "unmix-separate", framework: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``framework`` fixes ``--framework`` (``python -m umx_<fw> separate``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Separate audio files into stems with Open-Unmix, Demucs v2 or HTDemucs (demucs v4: htdemucs, "
        "htdemucs_6s, the htdemucs_ft bag) in PyTorch, TensorFlow, JAX or NNabla. Defaults are upstream's: "
        "openunmix 1.3.0's umx for Open-Unmix, demucs 2.0.3's demucs.separate for Demucs v2, demucs 4.1.0's demucs "
        "for HTDemucs.",
        epilog="See docs/separate.md.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders (searched recursively)")
    parser.add_argument(
        "-m",
        "--model",
        required=True,
        action="append",
        help="canonical .safetensors (+ .json; an HTDemucs or a canonical bag too), a native file of the port, an "
        "upstream .pth/.th file, openunmix model folder, demucs 4 package, hub .safetensors, bag .yaml or bag folder "
        "(converted, and the conversion cached), or what unmix-train wrote: a run folder or a one-target "
        "<target>.safetensors. Repeat it to join the Open-Unmix targets of several runs into one separator "
        "(--model run_vocals --model run_drums)",
    )
    if framework is None:
        parser.add_argument("--framework", required=True, choices=tuple(FRAMEWORKS))
    parser.add_argument("-o", "--out", default="separated", help="output folder (default: separated, as demucs)")
    parser.add_argument(
        "--filename",
        default=DEFAULT_FILENAME,
        help="output path under OUT/<model>/ with {track}, {trackext}, {stem}, {ext} (default: %(default)s)",
    )
    parser.add_argument("--ext", choices=("wav", "flac", "mp3"), default="wav", help="output format (default wav)")
    depth = parser.add_mutually_exclusive_group()
    for flag in ("float32", "int16", "int24"):
        depth.add_argument(f"--{flag}", dest="depth", action="store_const", const=flag, help=f"{flag} samples")
    parser.add_argument("--mp3-bitrate", type=int, default=320, help="kbit/s (default 320, as demucs)")
    parser.add_argument(
        "--clip-mode",
        choices=CLIP_MODES,
        help="rescale: each stem / max(1.01 peak, 1); clamp: to [-1, 1] (HTDemucs: [-0.99, 0.99] as demucs 4.1.0); "
        "none. Default: Open-Unmix none and --float32 (as umx); Demucs v2 and HTDemucs rescale and --int16 (as "
        "demucs)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stems", type=_stem_list, help="write only these stems (comma-separated)")
    which.add_argument(
        "--two-stems", metavar="STEM", help="write STEM and, by --other-method, no_STEM (the sum of the others)"
    )
    parser.add_argument(
        "--other-method",
        choices=OTHER_METHODS,
        help="with --two-stems, as demucs 4.1.0: add (default): no_STEM = the sum of the other stems; minus: "
        "minus_STEM = the mixture - STEM; none: STEM alone",
    )
    parser.add_argument("--start", type=float, default=0.0, help="start of the excerpt in seconds (as umx)")
    parser.add_argument("--duration", type=float, help="length of the excerpt in seconds (default: to the end)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing stems")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no summary lines")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir",
        help="where compiled graphs (JAX, TensorFlow XLA) and conversions of upstream models are kept (default: "
        "$UNMIX_PORTS_CACHE_DIR, else $XDG_CACHE_HOME/unmix-ports or ~/.cache/unmix-ports; the platform's "
        "cache folder on macOS and Windows)",
    )
    cache.add_argument("--no-cache", action="store_true", help="read and write no cache (compile and convert anew)")
    umx = parser.add_argument_group("Open-Unmix (defaults of openunmix 1.3.0's umx)")
    umx.add_argument("--niter", type=int, help="EM iterations of the Wiener filter (default 1)")
    umx.add_argument("--wiener-win-len", type=_win_len, help="frames filtered together, or none (default 300)")
    umx.add_argument("--softmask", action="store_const", const=True, help="ratio masks to start the filter")
    umx.add_argument(
        "--residual", nargs="?", const="residual", metavar="NAME", help="add mixture - sum(targets) as stem NAME"
    )
    umx.add_argument(
        "--segment-seconds",
        type=parse_segment,
        help=f"separate in chunks of this many seconds, cross-faded (bounded memory); 'none': the whole track; "
        f"'{AUTO}' (default): the whole track unless it would not fit in memory (see docs/separate.md)",
    )
    umx.add_argument("--segment-overlap", type=float, help="seconds shared by chunks (default 2, at most 1/4 chunk)")
    dmx = parser.add_argument_group(
        "Demucs v2 and HTDemucs (defaults: v2 models as demucs 2.0.3's demucs.separate, HTDemucs (v4) models as "
        "demucs 4.1.0's demucs)"
    )
    dmx.add_argument("--shifts", type=int, help="random shifts to average (default: v2 0, HTDemucs 1)")
    dmx.add_argument(
        "--seed",
        type=int,
        help="seed of the shifts (ours, default 0: a run is reproducible; upstream's shifts, v2 and v4, are "
        "unseeded draws of Python's random)",
    )
    dmx.add_argument("--overlap", type=float, help="overlap of the split segments (default 0.25)")
    dmx.add_argument(
        "--segment",
        type=float,
        help="split segment in seconds (default: the model's: v2 40 s released; HTDemucs its 7.8-s training "
        "segment, which is also the most it accepts, for a bag the smallest of its models')",
    )
    dmx.add_argument(
        "--no-split",
        dest="split",
        action="store_const",
        const=False,
        help="the whole track at once (HTDemucs: only tracks no longer than its segment, as upstream)",
    )
    return parser


@dataclass
class Options:
    """The parsed options resolved against the model: upstream's defaults where nothing was given."""

    depth: str
    clip_mode: str
    names: list[str]  # the stems to write
    renamed: dict[str, str]  # source name -> stem name (the residual's --residual NAME)
    demucs: dict[str, Any]  # Demucs v2 / HTDemucs: the keyword arguments of the port's separate_track
    segment: SegmentChoice
    other_method: str = "add"  # --two-stems: add, minus or none


UMX_FLAGS = {"niter": "--niter", "wiener_win_len": "--wiener-win-len", "softmask": "--softmask",
             "residual": "--residual", "segment_seconds": "--segment-seconds",
             "segment_overlap": "--segment-overlap"}  # fmt: skip
DEMUCS_FLAGS = {"shifts": "--shifts", "seed": "--seed", "overlap": "--overlap", "segment": "--segment",
                "split": "--no-split"}  # fmt: skip


def _umx_options(args: argparse.Namespace) -> dict[str, Any]:
    """The separator settings ``from_canonical`` takes, upstream's defaults where nothing was given."""
    given = {k: getattr(args, k) for k in UMX_DEFAULTS if getattr(args, k) is not None}
    merged = {**UMX_DEFAULTS, **given}
    return {
        "niter": merged["niter"],
        "wiener_win_len": merged["wiener_win_len"],
        "softmask": bool(merged["softmask"]),
        "residual": merged["residual"] is not None,
    }


def resolve_options(args: argparse.Namespace, model: LoadedModel) -> Options:
    """Check the options against the model and fill in upstream's defaults.

    Raises:
        ValueError: an option of the other model family, an unknown stem, a format/depth that cannot be written.
    """
    foreign = DEMUCS_FLAGS if model.kind == "umx" else UMX_FLAGS
    given = [flag for key, flag in foreign.items() if getattr(args, key) is not None]
    if given:
        family = "Demucs" if model.kind == "umx" else "Open-Unmix"
        raise ValueError(f"{', '.join(given)}: {family} option(s), but {shown(args.model)} is a {model.kind} model")
    if args.other_method is not None and args.two_stems is None:
        raise ValueError(f"--other-method {args.other_method}: applies to --two-stems only")
    other_method = args.other_method or "add"
    depth, clip_mode = OUTPUT_DEFAULTS[model.kind]
    if args.ext == "mp3":
        if args.depth is not None:
            raise ValueError(f"--{args.depth}: MP3 has no sample format to choose (lame encodes 16-bit PCM)")
        depth = "int16"
    elif args.depth is not None:
        depth = args.depth
    elif args.ext == "flac" and depth == "float32":
        depth = "int24"  # FLAC holds integers: the closest to a float output
    if args.ext == "flac" and depth == "float32":
        raise ValueError("--float32: FLAC holds integer samples only; use --int16 or --int24 (or --ext wav)")
    renamed = {"residual": args.residual} if model.kind == "umx" and args.residual else {}
    sources = [renamed.get(s, s) for s in model.sources]
    names = stem_names(sources, args.stems, args.two_stems, other_method)
    demucs: dict[str, Any] = {}
    if model.kind == "htdemucs":
        demucs = _htdemucs_options(args, model)
    if model.kind == "demucs":
        d = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in DEMUCS_DEFAULTS.items()}
        if not 0 <= d["overlap"] < 1:
            raise ValueError(f"--overlap must lie in [0, 1), got {d['overlap']}")
        segment = None if d["segment"] is None else round(d["segment"] * model.rate)
        demucs = {"shifts": d["shifts"], "split": d["split"], "overlap": d["overlap"], "segment_length": segment,
                  "rng": d["seed"]}  # fmt: skip
    segment_choice = SegmentChoice(args.segment_seconds if args.segment_seconds is not None else AUTO,
                                   args.segment_overlap)  # fmt: skip
    return Options(depth, args.clip_mode or clip_mode, names, renamed, demucs, segment_choice, other_method)


def _htdemucs_options(args: argparse.Namespace, model: LoadedModel) -> dict[str, Any]:
    """The keyword arguments of the port's ``htdemucs_apply.separate_track``, demucs 4.1.0's defaults where
    nothing was given (:data:`HTDEMUCS_DEFAULTS`).

    Raises:
        ValueError: ``--segment`` longer than the model's training segment (upstream's message), not positive, or
            with ``--no-split`` (exclusive in demucs 4.1.0's command); ``--overlap`` outside ``[0, 1)``; negative
            ``--shifts``.
    """
    d = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in HTDEMUCS_DEFAULTS.items()}
    if not 0 <= d["overlap"] < 1:
        raise ValueError(f"--overlap must lie in [0, 1), got {d['overlap']}")
    if d["shifts"] < 0:
        raise ValueError(f"--shifts must be 0 or more, got {d['shifts']}")
    segment = d["segment"]
    if segment is not None:
        if not d["split"]:
            raise ValueError("--segment and --no-split exclude each other (as in demucs 4.1.0's command)")
        if not segment > 0:
            raise ValueError(f"--segment must be positive, got {segment:g}")
        assert model.max_segment is not None
        if segment_fraction(segment) > model.max_segment:
            raise ValueError(TOO_LONG.format(float(model.max_segment)))
    return {"shifts": d["shifts"], "split": d["split"], "overlap": d["overlap"], "segment": segment,
            "rng": d["seed"]}  # fmt: skip


# --- one track -------------------------------------------------------------------------------------------------


def check_track(audio: np.ndarray, rate: int, path: Path, model: LoadedModel, start: float) -> None:
    """The checks a read track must pass before it is separated (each error names the file and the problem)."""
    channels, length = audio.shape
    if channels > 2:
        raise AudioError(f"{path}: {channels} channels; the models take mono or stereo (down-mix it first)")
    if length == 0:
        where = f" after --start {start:g} s" if start > 0 else ""
        raise AudioError(f"{path}: no audio samples{where}")
    finite = np.isfinite(audio)
    if not finite.all():
        channel, index = (int(i) for i in np.argwhere(~finite)[0])
        raise AudioError(
            f"{path}: {int((~finite).sum())} NaN or Inf samples; the first in channel {channel} at {index / rate:.3f} s"
        )
    check_amplitude(audio, f"{path}: the audio")
    needed = int(np.ceil(model.min_samples * rate / model.rate))
    if length < needed:
        raise AudioError(
            f"{path}: too short: {length} samples ({1000 * length / rate:.1f} ms at {rate} Hz); {model.kind} "
            f"({model.name}) needs at least {model.min_samples} samples at {model.rate} Hz"
        )


def _check_writable(folder: Path, staged: StagedFiles) -> None:
    try:
        staged.folder(folder)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OSError(f"output folder {folder} is not writable ({e.strerror or e})") from None


class Separation:
    """The command's state over a batch: the model, the options, the outputs written so far."""

    def __init__(self, args: argparse.Namespace, model: LoadedModel, options: Options):
        self.args, self.model, self.options = args, model, options
        self.written: dict[Path, Path] = {}  # output -> the input it came from, in this run

    def destinations(self, track: Path) -> dict[str, Path]:
        args = self.args
        out = {stem: output_path(Path(args.out), self.model.name, args.filename, track, stem, args.ext)
               for stem in self.options.names}  # fmt: skip
        if len(set(out.values())) < len(out):
            raise ValueError(f"--filename {args.filename!r} gives the same file for different stems (add {{stem}})")
        for path in out.values():
            if path in self.written:
                raise FileExistsError(f"{path} was already written in this run from {self.written[path]}")
            if path.exists() and not args.force:
                raise FileExistsError(f"{path} exists; pass --force to overwrite it")
        return out

    def separate(self, audio: np.ndarray, bar: Any) -> tuple[np.ndarray, str]:
        """``(estimates (nb_sources, 2, nb_timesteps), a note for the summary)``."""
        model, opts = self.model, self.options
        plan = segment_plan(opts.segment, model, audio.shape[-1]) if model.kind == "umx" else None
        if plan is None:
            try:
                estimates = model.separate(audio, opts.demucs)
            except ValueError as e:
                if model.kind != "htdemucs" or opts.demucs["split"]:
                    raise
                raise ValueError(_no_split_too_long(model, audio.shape[-1], opts.demucs["shifts"], e)) from None
            bar.update(bar.total - bar.n)
            return estimates, ""
        from unmix.chunks import separate_in_chunks

        segment, overlap = plan
        estimates = separate_in_chunks(model.separate, audio, segment, overlap, lambda n: bar.update(n / model.rate))
        return estimates, f", in {segment / model.rate:g}-s chunks ({overlap / model.rate:g} s cross-fades)"

    def track(self, path: Path, progress: Any) -> str:
        """Separate one file and write its stems; returns the summary line."""
        args, model, opts = self.args, self.model, self.options
        began = time.perf_counter()
        audio, rate = read_audio_file(path, args.start, args.duration)
        check_track(audio, rate, path, model, args.start)
        note = ""
        if rate != model.rate:
            audio = resample(audio, rate, model.rate)
            note = f", resampled from {rate} Hz"
        if audio.shape[0] == 1:
            audio = np.repeat(audio, 2, axis=0)  # mono upmixed, as upstream
            note += ", mono upmixed"
        outputs = self.destinations(path)
        duration = audio.shape[-1] / model.rate
        with StagedFiles() as staged:
            for folder in dict.fromkeys(p.parent for p in outputs.values()):
                _check_writable(folder, staged)
            with progress(total=round(duration, 2), desc=path.name, unit="s", leave=False) as bar:
                estimates, chunked = self.separate(audio, bar)
            note += chunked
            encoding = (args.ext, opts.depth, args.mp3_bitrate)
            sources = [opts.renamed.get(s, s) for s in model.sources]
            stems = select_stems(estimates, sources, args.stems, args.two_stems, opts.other_method, audio)
            for stem, dest in outputs.items():
                data = prevent_clip(stems[stem], opts.clip_mode, CLAMP_BOUND[model.kind])
                staged.write(dest, lambda tmp, d=data: write_audio_file(tmp, d, model.rate, *encoding))
            written = staged.commit()
        for dest in written:
            self.written[dest] = path
        wall = time.perf_counter() - began
        folder = os.path.commonpath([str(p.parent) for p in written])
        return (
            f"{path}: {duration:.1f} s of audio{note} in {wall:.1f} s (real-time factor {wall / duration:.2f}) "
            f"-> {folder}"
        )


def _no_split_too_long(model: LoadedModel, length: int, shifts: int, error: Exception) -> str:
    """The message for ``--no-split`` on an HTDemucs track longer than its segment (the port refused the window)."""
    assert model.max_segment is not None
    limit = int(model.max_segment * model.rate)
    shifted = " plus up to 0.5 s of random shift" if shifts else ""
    return (
        f"--no-split: the track ({length} samples{shifted}) is longer than the model's training segment ({limit} "
        f"samples, {float(model.max_segment):g} s), the most an HTDemucs runs at once (demucs 4.1.0 fails too: "
        f"'Given length ... is longer than training length ...'); leave out --no-split ({error})"
    )


# --- the command -------------------------------------------------------------------------------------------------


def _progress(quiet: bool) -> Any:
    from tqdm import tqdm

    def make(disable: bool = False, **kwargs: Any) -> Any:
        return tqdm(disable=quiet or disable, file=sys.stderr, dynamic_ncols=True, **kwargs)

    return make


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: staged files are removed


def run(args: argparse.Namespace, prog: str = "unmix-separate") -> int:
    """Separate every input of ``args`` (parsed by :func:`build_parser`); the exit status."""

    def error(message: str) -> None:
        print(f"{prog}: error: {message}", file=sys.stderr)

    files = find_audio_files(args.inputs)
    if not files:
        error(f"no audio files in {', '.join(args.inputs)}")
        return 1
    umx_options = _umx_options(args)

    def warn(message: str) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    root = cache_root(args.cache_dir, args.no_cache)
    compiled = enable_compile_cache(args.framework, root, warn)  # before the port compiles (TF reads it once)
    if args.framework == "jax":
        trim_after_jax_compilations()  # the compiler's freed heap back to the OS (unmix.heap)
    try:
        try:
            with compiled.watch():
                model = load_model(args.model, args.framework, args.device, args.dtype, umx_options, cache=root,
                                   **compiled.exported_graphs(warn))  # fmt: skip
            options = resolve_options(args, model)
        except (ModelError, ValueError) as e:
            error(str(e))
            return 1
        return _separate_all(args, prog, files, model, options, compiled)
    finally:
        compiled.close()


def _separate_all(
    args: argparse.Namespace, prog: str, files: list[Path], model: LoadedModel, options: Options, compiled: CompileCache
) -> int:
    """Separate ``files`` one after the other with one model (loaded and compiled once); the exit status."""

    def error(message: str) -> None:
        print(f"{prog}: error: {message}", file=sys.stderr)

    job = Separation(args, model, options)
    progress = _progress(args.quiet)
    failed: list[Path] = []
    files_bar = progress(total=len(files), desc="files", unit="file", disable=args.quiet or len(files) < 2)
    with files_bar:
        for path in files:
            try:
                with compiled.watch():
                    line = job.track(path, progress)
            except (AudioError, AudioFileError, ModelError, ValueError, OSError) as e:
                failed.append(path)
                files_bar.clear()
                error(str(e) if str(path) in str(e) else f"{path}: {e}")
            except Exception as e:  # the port failed on this track (out of memory, ...): report it, go on
                failed.append(path)
                files_bar.clear()
                hint = ""
                if compiled.folder is not None and str(compiled.folder) in str(e):
                    hint = f" (in the compilation cache {compiled.folder}: remove it, or pass --no-cache)"
                error(f"{path}: separation failed ({type(e).__name__}: {e}){hint}")
            else:
                if not args.quiet:
                    files_bar.write(line, file=sys.stdout)
            files_bar.update(1)
    if failed:
        error(f"{len(failed)} of {len(files)} file(s) failed: {', '.join(str(p) for p in failed)}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "unmix-separate", framework: str | None = None) -> int:
    """``unmix-separate``; with ``framework`` given, ``python -m umx_<framework> separate`` (the same code)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog, framework).parse_args(argv)
    if framework is not None:
        args.framework = framework
    if args.framework == "nnabla" and not importable("nnabla"):  # unmix-separate in .venv: run in .venv-nnabla
        code = rerun_in_nnabla("unmix.separate_cli", argv)
        if code < 0:  # killed by a signal: say so (the process could not)
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            print(f"{prog}: error: the NNabla process (.venv-nnabla) died of signal {name}", file=sys.stderr)
            return 1
        return code
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm) if _main_thread() else None
    try:
        return run(args, prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no partial file was left", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def port_main(framework: str, argv: Sequence[str] | None = None) -> int:
    """``python -m umx_<framework> separate ...``: :func:`main` with ``--framework`` fixed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"python -m {FRAMEWORKS[framework].package}"
    if not argv or argv[0] != "separate":
        print(f"usage: {prog} separate INPUT... --model MODEL [options]  (see {prog} separate --help)", file=sys.stderr)
        return 2
    return main(argv[1:], prog=f"{prog} separate", framework=framework)


def console_main() -> NoReturn:
    """The ``unmix-separate`` console script and ``python -m unmix.separate_cli``: :func:`main`, then the process ends
    without the interpreter's teardown (:mod:`unmix.quick_exit`)."""
    run_console(main)


if __name__ == "__main__":
    console_main()
