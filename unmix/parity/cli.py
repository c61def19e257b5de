"""``unmix-parity``: verify a checkpoint on audio, stage by stage, in the four ports and upstream, CPU or GPU.

Examples::

    unmix-parity umxhq.safetensors                             # the stempeg example clip, every port, float32
    unmix-parity path/to/open-unmix-model/ --audio song.flac --seconds 10 --report out/parity
    unmix-parity demucs-e07c671f.th --frameworks torch,jax --device gpu --dtype float32,float64
    unmix-parity 955717e8-8726e21a.th --seconds 10 --dtype float32,float64    # HTDemucs (demucs 4.1.0 beside)

MODEL is anything ``unmix-convert`` reads (an upstream ``.pth``/``.th`` file or openunmix model folder, a demucs 4
package, bag ``.yaml`` or folder, a canonical ``.safetensors`` + ``.json``, a port's native file). The float64 NumPy
reference runs first; then upstream itself (openunmix / demucs 2.0.3 with PyTorch, where importable; demucs 4.1.0
in its own process for HTDemucs) and every selected port, each stage on the reference's input of that stage
(``unmix.parity.stages``). Every comparison is judged by ``core_spec/tolerances.py``; the float32
``wiener`` and ``separator`` stages against upstream's own float32 error on the same input.

Exit status: 0 when every stage of every selected implementation is within tolerance, 1 when one is not or an
implementation could not run (both named on stderr), or the model or audio cannot be read; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from core_spec import frameworks
from unmix.convert import describe
from unmix.parity.model import ModelError, load_model
from unmix.parity.report import FILES, Report, format_table, write_report
from unmix.parity.runner import Result, available_here, run, scale_weight
from unmix.parity.stages import Config, judge_all, stage_order, with_upstream_stats
from unmix.quick_exit import run_console

__all__ = ["console_main", "build_parser", "main"]

DTYPES = ("float32", "float64")


def _list(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unmix-parity",
        description=(
            "Run a checkpoint in the float64 NumPy reference, upstream (openunmix/demucs) and the ports, stage by "
            "stage on the same audio, and compare every stage with the reference by the project's tolerance table."
        ),
        epilog="See docs/parity.md for the stages, the tolerances and the latest figures.",
    )
    parser.add_argument("model", help="canonical, native or upstream weights (file or openunmix model folder)")
    parser.add_argument("--audio", type=Path, help="audio file (default: the stempeg example, sum of its 4 stems)")
    parser.add_argument("--start", type=float, default=0.0, help="start of the excerpt in seconds (default 0)")
    parser.add_argument("--seconds", type=float, help="length of the excerpt in seconds (default: all)")
    parser.add_argument(
        "--frameworks",
        type=_list,
        default=list(frameworks.FRAMEWORKS),
        metavar="FW[,FW]",
        help=f"ports to verify (default: {','.join(frameworks.FRAMEWORKS)}; nnabla runs in .venv-nnabla)",
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu: the first CUDA device, TF32 off")
    parser.add_argument(
        "--dtype", type=_list, default=["float32"], metavar="DT[,DT]", help="float32 (default) and/or float64"
    )
    parser.add_argument("--no-upstream", action="store_true", help="do not run upstream openunmix/demucs")
    parser.add_argument(
        "--shifts",
        type=int,
        default=0,
        metavar="N",
        help="HTDemucs: random shifts of apply_model, drawn by numpy's default_rng(0), upstream replaying the same "
        "offsets (default 0: deterministic)",
    )
    parser.add_argument("--report", type=Path, metavar="DIR", help=f"write {', '.join(FILES)} into DIR")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite report files in DIR")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    # test hook: scale one weight tensor of one implementation (the parity suite checks that this is caught)
    parser.add_argument("--perturb-weight", metavar="FW:NAME:FACTOR", help=argparse.SUPPRESS)
    return parser


def _read_audio(args: argparse.Namespace, config: Config) -> tuple[np.ndarray, dict[str, Any]]:
    """``(1, 2, L)`` float64 at the model's rate, and a description of it."""
    from core_spec.audio import prepare_audio
    from core_spec.configs import BagConfig, HTDemucsConfig, UMXSeparatorConfig

    rate = config.separator.sample_rate if isinstance(config, UMXSeparatorConfig) else config.samplerate
    channels = 2
    if isinstance(config, (HTDemucsConfig, BagConfig)):
        channels = (config.models[0] if isinstance(config, BagConfig) else config).audio_channels
    if args.audio is None:
        from unmix.parity.clip import read_example_stems

        stems, file_rate = read_example_stems()
        audio = np.sum(list(stems.values()), axis=0)  # the linear mixture (the stem file's mixture is mastered)
        source = "stempeg example (sum of its 4 stems)"
        start = round(args.start * file_rate)
        stop = None if args.seconds is None else start + round(args.seconds * file_rate)
        audio = audio[:, start:stop]
    else:
        from unmix.audio_files import read_audio_file

        audio, file_rate = read_audio_file(args.audio, args.start, args.seconds)
        source = str(args.audio)
    batch = prepare_audio(audio, file_rate, rate, nb_channels=channels, resample=True, dtype=np.float64)
    info = {"source": source, "rate": int(rate), "file_rate": int(file_rate), "channels": int(audio.shape[0])}
    info["seconds"] = batch.shape[-1] / rate
    info["start"] = args.start
    return batch[:1], info


def _versions(results: Sequence[Result]) -> dict[str, str]:
    """Package versions of every implementation that ran (NNabla's numpy is its own environment's)."""
    out: dict[str, str] = {}
    for r in results:
        own_env = r.implementation == "nnabla"
        for package, version in r.versions.items():
            out[f"{package} (.venv-nnabla)" if own_env and package == "numpy" else package] = version
    return out


def _perturbation(text: str | None, parser: argparse.ArgumentParser) -> tuple[str, str, float] | None:
    if not text:
        return None
    try:
        fw, name, factor = text.split(":")
        return fw, name, float(factor)
    except ValueError:
        parser.error(f"--perturb-weight: expected FW:NAME:FACTOR, got {text!r}")


def _capture_all(
    args: argparse.Namespace,
    model: Any,
    weights_of: dict[str, Any],
    audio: np.ndarray,
    say: Any,
) -> list[Result]:
    """The reference (first), then upstream (where importable) and every selected port, in every dtype."""
    start = time.perf_counter()
    (reference,) = run("reference", model.config, model.weights, audio, ["float64"], "cpu", shifts=args.shifts)
    reference.seconds = time.perf_counter() - start
    if reference.captures is None:
        return [reference]
    say(f"reference float64: {reference.seconds:.1f} s")
    names = list(args.frameworks)
    ht = _is_htdemucs(model.config)
    if not args.no_upstream and available_here("upstream", model.config):
        names.insert(0, "upstream")
    elif not args.no_upstream and ht:
        say(
            "upstream  demucs 4.1.0 not installed (.oracle-demucs4, make setup) or torch missing: the float32 "
            "htdemucs stages are judged by their absolute floor only"
        )
    elif not args.no_upstream:
        say(
            "upstream  not importable here (torch, openunmix, demucs, julius): the float32 wiener and separator "
            "stages are judged by their absolute floor only"
        )
    inputs = None if ht else reference.captures  # the HTDemucs stages take no stage inputs from the reference
    results = [reference]
    for name in names:
        for result in run(
            name, model.config, weights_of[name], audio, args.dtype, args.device, inputs, shifts=args.shifts
        ):
            results.append(result)
            why = result.error or result.note or ""
            status = f"{result.seconds:.1f} s" if result.captures is not None else f"not run: {why.splitlines()[0]}"
            say(f"{name} {result.dtype}: {status}")
    return results


def _is_htdemucs(config: Config) -> bool:
    from core_spec.configs import BagConfig, HTDemucsConfig

    return isinstance(config, (HTDemucsConfig, BagConfig))


def _judge(
    args: argparse.Namespace,
    model: Any,
    results: list[Result],
    audio: np.ndarray,
    audio_info: dict[str, Any],
    argv: Any,
    say: Any = print,
) -> Report:
    """Every capture against the reference's; the float32 ratio rows against upstream's capture in that dtype.
    HTDemucs: upstream float64 against the reference given upstream's input statistics
    (:func:`unmix.parity.stages.with_upstream_stats`)."""
    reference = results[0]
    upstream_by_dtype = {r.dtype: r.captures for r in results if r.implementation == "upstream" and r.captures}
    rows = []
    for result in results[1:]:
        if result.captures is None:
            continue
        upstream = upstream_by_dtype.get(result.dtype) if result.implementation != "upstream" else None
        config, device = model.config, args.device
        expected = reference.captures
        if result.implementation == "upstream" and result.dtype == "float64" and _is_htdemucs(config):
            start = time.perf_counter()
            expected = with_upstream_stats(config, model.weights, audio, result.captures, args.shifts)
            say(f"reference float64 given upstream's input statistics: {time.perf_counter() - start:.1f} s")
        rows += judge_all(result.implementation, result.dtype, device, config, result.captures, expected, upstream)
    runs = [dataclasses.asdict(dataclasses.replace(r, captures=None)) for r in results]
    for r in runs:
        del r["captures"]
    return Report(
        model={"path": model.path, "name": model.name, "origin": model.origin, "description": describe(model.config)},
        audio=audio_info,
        device=args.device,
        dtypes=list(args.dtype),
        implementations=list(dict.fromkeys(r.implementation for r in results[1:])),
        stages=list(stage_order(model.config)),
        rows=rows,
        runs=runs,
        versions=_versions(results),
        command=" ".join(["unmix-parity", *(sys.argv[1:] if argv is None else argv)]),
        config=model.config,
    )


def _print_failures(report: Report) -> None:
    for row in report.failed_rows:
        bound = f", bound {row.snr_bound_db:.1f} dB" if row.snr_bound_db is not None else ""
        print(
            f"unmix-parity: FAIL {row.implementation} {row.dtype} stage {row.stage} ({row.key}): snr {row.snr_db:.1f} "
            f"dB, rel {row.rel:.2e}, max abs {row.max_abs:.2e}; tolerance {row.tolerance_row}: {row.tolerance}{bound}",
            file=sys.stderr,
        )
    for r in report.failed_runs:
        print(
            f"unmix-parity: FAIL {r['implementation']} {r['dtype']} could not run: {r['error'].splitlines()[0]}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [f for f in args.frameworks if f not in frameworks.FRAMEWORKS]
    if unknown or not args.frameworks:
        parser.error(
            f"--frameworks: unknown {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(frameworks.FRAMEWORKS)}"
        )
    bad = [d for d in args.dtype if d not in DTYPES]
    if bad or not args.dtype:
        parser.error(f"--dtype: {', '.join(bad) or '(none given)'}; choose float32 and/or float64")
    if args.shifts < 0:
        parser.error("--shifts must be >= 0")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be > 0")
    perturb = _perturbation(args.perturb_weight, parser)
    if args.report is not None and not args.force:
        existing = [str(args.report / f) for f in FILES if (args.report / f).exists()]
        if existing:
            print(f"unmix-parity: error: {', '.join(existing)} exist(s); pass --force to overwrite", file=sys.stderr)
            return 1

    def say(text: str) -> None:
        if not args.quiet:
            print(text, flush=True)

    try:
        model = load_model(args.model)
        audio, audio_info = _read_audio(args, model.config)
    except (ModelError, ValueError, OSError) as e:
        print(f"unmix-parity: error: {e}", file=sys.stderr)
        return 1
    if args.shifts and not _is_htdemucs(model.config):
        parser.error("--shifts: only HTDemucs models (demucs 4) take random shifts here")
    say(f"model     {model.path} ({model.origin}): {describe(model.config)}")
    say(f"audio     {audio_info['source']}: {audio_info['seconds']:.2f} s at {audio_info['rate']} Hz")

    weights_of = {}
    for name in ["upstream", *args.frameworks]:
        weights_of[name] = model.weights
    if perturb is not None:
        fw, tensor, factor = perturb
        if fw not in weights_of:
            parser.error(f"--perturb-weight: {fw} is not run")
        try:
            weights_of[fw] = scale_weight(model.weights, tensor, factor)
        except KeyError as e:
            parser.error(f"--perturb-weight: {e.args[0]}")

    results = _capture_all(args, model, weights_of, audio, say)
    if results[0].captures is None:
        print(f"unmix-parity: error: the reference failed: {results[0].error}", file=sys.stderr)
        return 1
    report = _judge(args, model, results, audio, audio_info, argv, say)
    if not args.quiet:
        print()
        print(format_table(report.rows, report.stages))
    _print_failures(report)
    if args.report is not None:
        captures = {(r.implementation, r.dtype): r.captures for r in results if r.captures is not None}
        try:
            written = write_report(report, args.report, captures, force=args.force)
        except OSError as e:
            print(f"unmix-parity: error: cannot write the report: {e}", file=sys.stderr)
            return 1
        say("wrote     " + ", ".join(str(p) for p in written))
    say(
        f"verdict   {'pass' if report.ok else 'FAIL'}: {len(report.rows)} comparisons, "
        f"{len(report.failed_rows)} out of tolerance, {len(report.failed_runs)} runs not made"
    )
    return 0 if report.ok else 1


def console_main() -> NoReturn:
    """The ``unmix-parity`` console script and ``python -m unmix.parity``: :func:`main`, then the process ends
    without the interpreter's teardown (:mod:`unmix.quick_exit`)."""
    run_console(main)


if __name__ == "__main__":
    console_main()
