"""``python -m benchmarks``: every port and upstream in one run on the same inputs, each (point, implementation)
in its own fresh process; writes ``latest.json``, ``latest.md`` and ``latest.png`` (:mod:`benchmarks.report`).

The points are :mod:`benchmarks.plan`'s; the inputs are written once (:mod:`benchmarks.inputs`); each point runs
upstream first (its output is the reference of the SNR column), then the ports, in
:data:`benchmarks.impls.DEFAULT_IMPLS` order, so that a change in the machine's load hits all of a point's
implementations alike. NNabla's processes run in ``.venv-nnabla`` (:func:`unmix.environments.nnabla_python`).
``--quick`` runs the quick plan (seconds-long inputs, small models) with one process per implementation for all
its points (peaks then not from a fresh process: the JSON says so); it keeps the command working and measures
nothing worth quoting. Exit status 1 when a point failed (its row carries the error; the files are written); a
workload an implementation does not have yet is a row marked ``unavailable``, not a failure.

HTDemucs points (``--points htdemucs``; with ``--quick`` only when asked for) run upstream as demucs 4.1.0 in its
own worker (:data:`benchmarks.impls.UPSTREAM4`, the oracle folder first on ``PYTHONPATH``), and only the
implementations that have HTDemucs (:data:`benchmarks.plan.HTDEMUCS_IMPLS`). The whole HTDemucs measurement::

    .venv/bin/python -m benchmarks --points htdemucs --out benchmarks/results/htdemucs
    .venv/bin/python -m benchmarks separate --models htdemucs --lengths 30 --impls upstream torch jax \
        --name separate_htdemucs

Usage: ``python -m benchmarks [--quick] [--impls ...] [--points NAME|main|sweep|htdemucs ...] [--out DIR]
[--list]``.

The measurements that do not fit a point (whole processes, other code, other questions) are subcommands,
``python -m benchmarks COMMAND [options]`` (:data:`COMMANDS`; ``COMMAND --help`` for each).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import inputs, report
from benchmarks.common import OMP_WAIT_POLICIES, RESULTS_DIR, ROOT, child_env, machine_info, omp_wait, set_omp_wait
from benchmarks.impls import DEFAULT_IMPLS, IMPLS, THREADS, common_env, impl_spec, worker_key
from benchmarks.plan import Plan, Point, plan

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "separate": ("benchmarks.separate", "whole unmix-separate commands against upstream's umx / demucs.separate"),
    "resample": ("benchmarks.resample", "the resamplers unmix-separate could use: accuracy, speed, memory"),
    "chunk_snr": ("benchmarks.chunk_snr", "Open-Unmix separated in chunks against the whole track (SNR)"),
    "floors": ("benchmarks.floors", "what no port goes below: framework memory at import, the BLSTM step"),
    "versus_commit": ("benchmarks.versus_commit", "a port's Demucs apply_model at an earlier commit against now"),
    "read": ("benchmarks.read", "the torch-free reader against torch.load: time and peak memory, Demucs-48, umxhq"),
}
"""Subcommand -> (module with ``main(argv)``, what it measures)."""


def _python(env: str) -> Path:
    if env == "main":
        return Path(sys.executable)
    from unmix.environments import nnabla_python

    return nnabla_python()


def _select(p: Plan, names: Sequence[str] | None) -> list[Point]:
    if not names:
        return list(p.points)
    wanted: set[str] = set()
    for name in names:
        if name == "main":
            wanted.update(p.main)
        elif name == "sweep":
            wanted.update(n for sweep in p.sweeps.values() for n in sweep)
        elif name == "htdemucs":
            wanted.update(pt.name for pt in p.points if pt.htdemucs)
        else:
            p.point(name)  # KeyError naming the known points
            wanted.add(name)
    return [pt for pt in p.points if pt.name in wanted]


def _jobs(points: list[Point], impls: list[str], grouped: bool, long: bool) -> list[tuple[str, list[Point]]]:
    """``[(worker key, points)]`` in run order: per point upstream first, then the ports (``grouped``: per worker
    key, upstream's two variants first); an implementation runs only the points it has (:meth:`Point.runs`)."""

    def runs(impl: str, point: Point) -> bool:
        return point.runs(impl) and (long or impl not in point.long_for)

    if grouped:
        keys = list(dict.fromkeys(worker_key(impl, pt.htdemucs) for impl in impls for pt in points))
        jobs = [(k, [pt for pt in points for i in impls if worker_key(i, pt.htdemucs) == k and runs(i, pt)])
                for k in keys]  # fmt: skip
        return [(k, pts) for k, pts in jobs if pts]
    return [(worker_key(impl, pt.htdemucs), [pt]) for pt in points for impl in impls if runs(impl, pt)]


def _run_job(
    impl: str, points: list[Point], p: Plan, folder: Path, threads: int, timeout_s: float, index: int
) -> dict[str, Any]:
    """One worker process (``impl``: a worker key); its result (rows with an ``error`` where the process itself
    failed)."""
    spec = impl_spec(impl)
    job_path, result_path, log_path = (folder / f"job-{index}.{ext}" for ext in ("json", "result.json", "log"))
    job = {
        "impl": impl,
        "points": [pt.to_dict() for pt in points],
        "sizes": p.to_dict()["sizes"],
        "folder": str(folder),
        "threads": threads,
        "max_timed_s": p.max_timed_s,
        "result": str(result_path),
    }
    job_path.write_text(json.dumps(job))
    env = child_env({**common_env(threads), **spec.env_vars})
    if spec.oracle4:  # demucs 4.1.0 before demucs 2.0.3 (both are the module demucs)
        from unmix.parity.oracle4 import oracle4_dir

        env["PYTHONPATH"] = os.pathsep.join([str(oracle4_dir()), env["PYTHONPATH"]])
    failure = None
    try:
        python = _python(spec.env)
        with open(log_path, "w") as log:
            proc = subprocess.run(
                [str(python), "-m", "benchmarks.worker", str(job_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                timeout=timeout_s,
            )
        if proc.returncode != 0:
            failure = f"worker exited with status {proc.returncode}: {log_path.read_text()[-2000:]}"
    except subprocess.TimeoutExpired:
        failure = f"worker timed out after {timeout_s:.0f} s"
    except FileNotFoundError as e:
        failure = str(e)
    result = json.loads(result_path.read_text()) if result_path.exists() else {"impl": impl, "rows": []}
    done = {row["point"] for row in result["rows"]}
    for pt in points:
        if pt.name not in done:
            result["rows"].append({"point": pt.name, "impl": spec.key, "error": failure or "no result"})
    return result


def _print_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"  {row['point']:<22} {row['impl']:<9} FAILED: {row['error'].splitlines()[0][:160]}", flush=True)
        return
    if "unavailable" in row:
        print(f"  {row['point']:<22} {row['impl']:<9} not available: {row['unavailable'][:160]}", flush=True)
        return
    compile_note = f", compile {row['compile_s']:.1f} s" if "compile_s" in row else ""
    print(
        f"  {row['point']:<22} {row['impl']:<9} {row['wall_s_min']:8.3f} s (min of {row['repeats']}), "
        f"first {row['first_call_s']:.2f} s{compile_note}, peak {row['peak_rss_mb']:.0f} MiB",
        flush=True,
    )


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except OSError:
        return {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
    commands = "\n".join(f"  {name:<14} {what}" for name, (_, what) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        epilog=f"subcommands (python -m benchmarks COMMAND --help):\n{commands}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long inputs, small models: checks the command")
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=list(IMPLS),
        default=list(DEFAULT_IMPLS),
        help="implementations (upstream is always run first when listed)",
    )
    parser.add_argument(
        "--points", nargs="+", metavar="NAME", help="points to run: names, 'main', 'sweep' or 'htdemucs'"
    )
    parser.add_argument(
        "--long", action="store_true", help="also the long points (Demucs 300 s; NNabla: Demucs 60 s, UMX 300 s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default benchmarks/results, --quick: benchmarks/results/quick)",
    )
    parser.add_argument("--omp-wait", choices=sorted(OMP_WAIT_POLICIES), default="default",
                        help="OpenMP wait policy of every worker (default: none set, as users run them)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=THREADS, help=f"threads of every implementation ({THREADS})")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per worker process (full 3600, quick 600)")
    parser.add_argument("--grouped", action="store_true", help="one process per implementation (default with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="at most this many timed calls a point (plan's)")
    parser.add_argument("--max-timed-s", type=float, default=None, help="a point's timed calls stop after this")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes at a time (default 1; --quick: 2; more than 1 distorts the timings)",
    )
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)
    set_omp_wait(args.omp_wait)

    p = plan(args.quick, args.points)
    if args.max_timed_s is not None:
        p = dataclasses.replace(p, max_timed_s=args.max_timed_s)
    try:
        points = _select(p, args.points)
    except KeyError as e:
        parser.error(str(e.args[0]))
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error(f"--repeats must be at least 1, got {args.repeats}")
        points = [dataclasses.replace(pt, repeats=args.repeats) for pt in points]
    impls = sorted(dict.fromkeys(args.impls), key=lambda k: k != "upstream")  # upstream first: the reference
    grouped = args.grouped or args.quick
    args.jobs = args.jobs or (2 if args.quick else 1)
    jobs = _jobs(points, impls, grouped, args.long)
    if args.list:
        for pt in points:
            runs = [i for i in impls if pt.runs(i) and (args.long or i not in pt.long_for)]
            print(
                f"{pt.name:<22} {pt.kind:<9} {pt.audio_seconds:>6g} s audio, repeats <= {pt.repeats}: {' '.join(runs)}"
            )
        return 0
    out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout or (600.0 if args.quick else 3600.0)

    started = time.time()
    machine_start = machine_info()
    print(
        f"benchmark ({p.name} plan): {len(points)} points, {', '.join(impls)}; {len(jobs)} worker processes", flush=True
    )
    with tempfile.TemporaryDirectory(prefix="unmix-bench-") as tmp:
        folder = Path(tmp)
        inputs.prepare(folder, [pt for pt in points if any(pt in pts for _, pts in jobs)], p.sizes)
        print(f"  inputs written in {time.time() - started:.1f} s", flush=True)
        todo = [(i, impl, pts) for i, (impl, pts) in enumerate(jobs) if pts]

        def run(job: tuple[int, str, list[Point]]) -> dict[str, Any]:
            index, impl, job_points = job
            start = time.time()
            result = _run_job(impl, job_points, p, folder, args.threads, timeout, index)
            result["job_s"] = time.time() - start  # the process with its start and imports
            for row in result["rows"]:
                _print_row(row)
            return result

        if args.jobs == 1:
            results = [run(job) for job in todo]
        else:  # upstream first (its outputs are the references), then the ports side by side
            first = [job for job in todo if impl_spec(job[1]).key == "upstream"]
            results = [run(job) for job in first]
            with ThreadPoolExecutor(args.jobs) as pool:
                results += list(pool.map(run, [job for job in todo if job not in first]))
    meta = {
        "quick": args.quick,
        "process_per_point": not grouped,
        "jobs": args.jobs,
        "threads": args.threads,
        "omp_wait": omp_wait(),
        "impls": impls,
        "long": args.long,
        "points": [pt.name for pt in points],
        "repeats": {pt.name: pt.repeats for pt in points},
        "max_timed_s": p.max_timed_s,
        "git": _git(),
        "machine_start": machine_start,
        "machine_end": machine_info(),
        "total_s": time.time() - started,
        "argv": argv,
    }
    data = report.build(p, points, results, meta)
    for path in report.write(data, out):
        print(f"wrote {path}")
    print(report.summary(data))
    errors = [row for row in data["rows"] if "error" in row]
    if errors:
        failed = ", ".join(f"{r['point']}/{r['impl']}" for r in errors)
        print(f"{len(errors)} point(s) failed: {failed}", file=sys.stderr)
    return 1 if errors else 0
