"""Reading upstream weight files without torch against ``torch.load`` of the same files (issue 27, the reader).

Files (written once into ``--work`` by the upstream code itself, seeded weights, zip format as ``torch.save``
writes it):

- ``demucs48.th``: demucs 2.0.3's ``demucs.utils.save_model`` of ``Demucs(channels=48)`` (the ``demucs`` preset at
  48 channels, the size of the released ``demucs48_hq``): one package of 598 MB, float32;
- ``umxhq/``: an openunmix model folder at umxhq shapes (``vocals``, ``drums``, ``bass``, ``other``: one
  ``<target>.pth`` state dict each, 4 x 35.6 MB, and the JSON files ``umx`` reads).

Implementations, each in its own fresh process, the file(s) read once per process:

- ``torch.load``: ``torch.load(path, map_location="cpu", weights_only=False)`` of every file (the package names
  ``demucs.model.Demucs``, so ``weights_only`` would refuse it);
- ``reader``: :func:`weights_convert.read_checkpoint` of the same files (no torch in the process: checked);
- ``reader+convert``: :func:`weights_convert.sources.read_upstream` of the package or the folder, what
  ``unmix-convert`` and ``unmix-separate`` call: the reader, the file's SHA-256 (provenance), the inventory
  check, the float32 canonical arrays and their NaN/Inf scan.

Measured in the child: the call's time (``time.perf_counter``, imports excluded) and the peak resident memory it
adds (:func:`benchmarks.common.measure_peak_rss`: the kernel's high-water mark, reset before the call; every
result kept alive until the end of the call); from here: the process's wall time (interpreter start and imports
included). The files are read once before the runs, so every implementation reads them from the page cache.
Ratios: time against ``torch.load`` of the same run, peak memory against the files' size (the acceptance of issue
27: the torch-free read <= 2x ``torch.load``'s time and <= 1.2x the file size).

Run: ``.venv/bin/python -m benchmarks read [--runs 2] [--work DIR] [--name read]``; writes
``benchmarks/results/<name>.json`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MEMORY_ENV, ROOT, TIMING_ENV, child_env, write_result

__all__ = ["IMPLS", "main", "markdown_table", "write_files"]

IMPLS = ("torch.load", "reader", "reader+convert")
UMX_TARGETS = ("vocals", "drums", "bass", "other")
DEMUCS_CHANNELS = 48


# --- the files --------------------------------------------------------------------------------------------------


def write_files(work: Path) -> dict[str, Path]:
    """``{"demucs48": package, "umxhq": folder}`` in ``work``, written by demucs 2.0.3 / ``torch.save`` if absent."""
    work.mkdir(parents=True, exist_ok=True)
    package = work / "demucs48.th"
    if not package.exists():
        from demucs.utils import save_model

        from benchmarks.workloads import demucs_config
        from parity_tests.convert.checkpoints import _training_args, demucs_model

        cfg = dataclasses.replace(demucs_config(), channels=DEMUCS_CHANNELS)
        save_model(demucs_model(cfg, seed=0), None, _training_args(cfg), package)
    folder = work / "umxhq"
    if not (folder / "separator.json").exists():
        from benchmarks.workloads import umx_config, umx_weights
        from parity_tests.separate.inputs import write_umx_cli_folder

        cfg = umx_config(1)
        write_umx_cli_folder(folder, cfg, umx_weights(cfg))
    return {"demucs48": package, "umxhq": folder}


def checkpoint_files(source: Path) -> list[Path]:
    """The ``torch.save`` files of a source: the package itself, or a folder's ``<target>.pth``."""
    return [source / f"{t}.pth" for t in UMX_TARGETS] if source.is_dir() else [source]


# --- one measured process ---------------------------------------------------------------------------------------


def _child(impl: str, source: Path) -> dict[str, Any]:
    """Runs in the fresh process: import, then one measured call; what it measured."""
    from benchmarks.common import measure_peak_rss

    files = checkpoint_files(source)
    if impl == "torch.load":
        import torch

        def call() -> Any:
            return [torch.load(p, map_location="cpu", weights_only=False) for p in files]

    elif impl == "reader":
        from weights_convert import read_checkpoint

        def call() -> Any:
            return [read_checkpoint(p) for p in files]

    else:
        from weights_convert.sources import read_upstream

        def call() -> Any:
            return read_upstream(source)

    def timed() -> float:
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        del result
        return seconds

    seconds, memory = measure_peak_rss(timed)
    return {"call_s": seconds, **memory, "torch_imported": "torch" in sys.modules}


def _run_child(impl: str, source: Path, timeout_s: float) -> dict[str, Any]:
    env = child_env({**MEMORY_ENV, **TIMING_ENV})
    command = [sys.executable, "-m", "benchmarks.read", "--child", impl, str(source)]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        return {"error": done.stderr[-2000:], "returncode": done.returncode, "process_wall_s": wall}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_wall_s": wall, "returncode": 0}


# --- the table --------------------------------------------------------------------------------------------------


def _ratio(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.2f}" if key in row else ""


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| files | MB | implementation | run | call s | x torch.load | peak added MiB | x file size | "
             "peak RSS MiB | process s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['source']} | {r['file_mb']:.1f} | {r['impl']} | {r['run']} | failed | | | | | |")
            continue
        lines.append(
            f"| {r['source']} | {r['file_mb']:.1f} | {r['impl']} | {r['run']} | {r['call_s']:.3f} | "
            f"{_ratio(r, 'time_ratio')} | {r['peak_delta_mb']:.0f} | {r['memory_ratio']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['process_wall_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks read", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of every (files, implementation)")
    parser.add_argument("--work", help="folder for the files (default: a temporary folder)")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--sources", nargs="+", default=["demucs48", "umxhq"], choices=("demucs48", "umxhq"))
    parser.add_argument("--name", default="read", help="results file benchmarks/results/<name>.json")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a process is stopped")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], Path(args.child[1]))))
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-read-"))
    sources = {k: v for k, v in write_files(work).items() if k in args.sources}
    sizes = {k: sum(p.stat().st_size for p in checkpoint_files(v)) for k, v in sources.items()}
    for source in sources.values():  # into the page cache: every implementation reads warm files
        for path in checkpoint_files(source):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
    rows: list[dict[str, Any]] = []
    failed = False
    for run in range(1, args.runs + 1):
        for key, source in sources.items():
            base: dict[str, Any] | None = None
            for impl in args.impls:
                row: dict[str, Any] = {"source": key, "file_mb": sizes[key] / 1e6, "impl": impl, "run": run}
                row.update(_run_child(impl, source, args.timeout))
                if "error" not in row:
                    row["memory_ratio"] = row["peak_delta_mb"] * 2**20 / sizes[key]
                    if impl == "torch.load":
                        base = row
                    elif base is not None:
                        row["time_ratio"] = row["call_s"] / base["call_s"]
                    if impl != "torch.load" and row["torch_imported"]:
                        row["error"] = "torch was imported by the torch-free read"
                failed |= "error" in row
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
                if "error" in row:
                    print(row["error"], file=sys.stderr)
    meta = {
        "demucs48": f"demucs 2.0.3 save_model of Demucs(channels={DEMUCS_CHANNELS}), seeded, zip format, float32",
        "umxhq": "openunmix model folder, umxhq shapes, 4 targets, torch.save zip format, float32",
        "file_bytes": sizes,
        "memory": "peak added: VmHWM reset before the call, minus the resident memory before it",
        "page_cache": "files read once before the runs (warm)",
    }
    print(f"wrote {write_result(args.name, rows, meta)}")
    print(markdown_table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
