"""``unmix-separate`` in every framework against upstream's own commands, on the same files, in one run.

Workloads (``benchmarks.workloads``): music tiled from the stempeg clip to 30 s, 3 min and 10 min (16-bit WAV);

- Open-Unmix: umxhq shapes (4 targets, seeded weights), upstream's CLI settings (``--niter 1``,
  ``--wiener-win-len 300``), 32-bit float WAV stems. Upstream: openunmix 1.3.0's ``umx`` on an openunmix model
  folder of the same weights. Ports: ``unmix-separate --segment-seconds none`` (the whole track, as upstream) and,
  for the longest track, ``--segment-seconds 30`` (chunks);
- Demucs v2: channels 64 (the released size) and 48 (``--demucs-channels``), seeded weights, ``--shifts 0
  --overlap 0.25``, split into 40-s segments, 16-bit WAV. Upstream: demucs 2.0.3's ``python -m demucs.separate`` on
  a ``demucs.utils.save_model`` package of the same weights.

Cold and warm runs (``--warm N``): every command runs once with an empty cache folder of its own (``--cache-dir``:
the cold first run, compiling everything) and then ``N`` more times with that folder populated (the warm runs: the
compiled graphs read back); upstream's commands, which keep no cache, run as often. ``--upstream-model`` hands
Demucs the upstream package instead of the canonical file (the conversion is then cached by the first run).
Ratios are against upstream's run of the same index.

Upstream's commands run through :mod:`benchmarks.upstream_cli` (local models, soundfile in torchaudio's place: its
separation code unchanged). Every command runs in its own process, one at a time, with ``OMP_WAIT_POLICY=PASSIVE``
and the machine's threads (the ports' and upstream's defaults). Measured from this process: wall time from start to
exit (interpreter start, model load, reading, separation, writing: what a user waits for) and peak resident memory
of the command's process tree (psutil, sampled every 20 ms; the NNabla command's tree includes the
``.venv-nnabla`` interpreter it starts). A command whose tree passes ``--limit-mb`` is stopped and recorded as such
(the machine is shared). Ratios are against upstream's command at the same length.

Run: ``.venv/bin/python -m benchmarks separate [--lengths 30 180 600] [--models umx demucs]
[--impls upstream torch tf jax nnabla] [--chunked-only] [--warm N] [--demucs-channels 64 48] [--upstream-model]
[--name NAME]``; writes
``benchmarks/results/<NAME>.json`` (default ``separate``); ``--table FILE...`` prints result files as the Markdown
table of ``docs/separate.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, TIMING_ENV, child_env, write_result

IMPLS = ("upstream", "torch", "tf", "jax", "nnabla")
LENGTHS = (30, 180, 600)
CHUNK_SECONDS = 30
UMX_TARGETS = ("vocals", "drums", "bass", "other")


# --- inputs ---------------------------------------------------------------------------------------------------


def write_tracks(work: Path, lengths: list[int]) -> dict[int, Path]:
    import soundfile as sf

    from benchmarks.workloads import music

    tracks = {}
    for seconds in lengths:
        path = work / f"music_{seconds}s.wav"
        if not path.exists():
            sf.write(str(path), music(seconds).T, 44100, subtype="PCM_16")
        tracks[seconds] = path
    return tracks


def write_umx_models(work: Path) -> tuple[Path, Path]:
    """The canonical file the ports read and the openunmix model folder ``umx`` reads: the same weights."""
    from benchmarks.workloads import umx_config, umx_weights
    from core_spec.canonical import join_targets, save_canonical
    from parity_tests.separate.inputs import write_umx_cli_folder

    cfg = umx_config(1)
    weights = umx_weights(cfg)
    canonical = work / "umxhq_bench.safetensors"
    if not canonical.exists():
        save_canonical(canonical, join_targets(weights), cfg)
    folder = work / "umxhq_bench"
    if not (folder / "separator.json").exists():
        write_umx_cli_folder(folder, cfg, weights)
    return canonical, folder


def write_demucs_models(work: Path, channels: int = 64) -> tuple[Path, Path]:
    """The canonical file and ``models/demucs_bench.th`` (``demucs.utils.save_model``): the same weights
    (channels 64: under ``work``; other widths: under ``work/demucs<channels>``)."""
    from dataclasses import replace

    from benchmarks.workloads import demucs_config, demucs_weights
    from core_spec.canonical import save_canonical

    cfg = demucs_config()
    if channels != cfg.channels:
        cfg = replace(cfg, channels=channels)
        work = work / f"demucs{channels}"
        work.mkdir(exist_ok=True)
    canonical = work / "demucs_bench.safetensors"
    if not canonical.exists():
        save_canonical(canonical, demucs_weights(cfg), cfg)
    package = work / "models" / "demucs_bench.th"
    if not package.exists():
        from parity_tests.convert.checkpoints import _training_args, demucs_model

        package.parent.mkdir(exist_ok=True)
        from demucs.utils import save_model

        save_model(demucs_model(cfg, seed=0), None, _training_args(cfg), package)
    return canonical, package.parent


# --- measurement ------------------------------------------------------------------------------------------------


def measure(command: list[str], limit_mb: float, timeout_s: float) -> dict[str, Any]:
    """Run ``command``; wall time and the peak resident memory of its process tree (MiB)."""
    import psutil

    env = child_env(TIMING_ENV)
    began = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    root = psutil.Process(process.pid)
    peak, stopped = 0.0, ""
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20
        except psutil.Error:
            rss = 0.0
        peak = max(peak, rss)
        elapsed = time.perf_counter() - began
        if peak > limit_mb or elapsed > timeout_s:
            stopped = f"stopped: peak > {limit_mb:.0f} MiB" if peak > limit_mb else f"stopped after {timeout_s:.0f} s"
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    _, err = process.communicate()
    wall = time.perf_counter() - began
    row = {"wall_s": round(wall, 2), "peak_rss_mb": round(peak, 1), "returncode": process.returncode}
    if stopped:
        row["stopped"] = stopped
    elif process.returncode != 0:
        row["error"] = err.decode(errors="replace")[-1500:]
    return row


def ours(framework: str, track: Path, model: Path, out: Path, extra: list[str]) -> list[str]:
    exe = ROOT / ".venv" / "bin" / "unmix-separate"
    return [str(exe), str(track), "--model", str(model), "--framework", framework, "-o", str(out), "-q", "--force",
            *extra]  # fmt: skip


def upstream(kind: str, track: Path, model: Path, out: Path) -> list[str]:
    base = [sys.executable, "-m", "benchmarks.upstream_cli"]
    if kind == "umx":
        return [*base, "umx", str(track), "--model", str(model), "--targets", *UMX_TARGETS, "--outdir", str(out),
                "--niter", "1", "--wiener-win-len", "300", "--no-cuda"]  # fmt: skip
    return [*base, "demucs", str(track), "-n", "demucs_bench", "--models", str(model), "-o", str(out), "-d", "cpu",
            "--shifts", "0", "--overlap", "0.25"]  # fmt: skip


def markdown_table(paths: list[Path]) -> str:
    """The rows of result files as a Markdown table (time and memory, each with its ratio to upstream)."""
    lines = ["| model | length | implementation | mode | run | wall s | x upstream | peak MiB | x upstream |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for path in paths:
        for r in json.loads(Path(path).read_text())["rows"]:
            status = r.get("stopped", "") or ("" if r["returncode"] == 0 else f"failed (exit {r['returncode']})")
            wall = f"{r['wall_s']:.1f}" if not status else f"{status} at {r['wall_s']:.0f} s"
            peak = f"{r['peak_rss_mb']:.0f}" if not r.get("stopped") else f"> {r['peak_rss_mb']:.0f}"
            ratio_t = f"{r['time_ratio']:.2f}" if "time_ratio" in r else ""
            ratio_m = f"{r['memory_ratio']:.2f}" if "memory_ratio" in r else ""
            length = f"{r['length_s'] // 60} min" if r["length_s"] >= 60 else f"{r['length_s']} s"
            lines.append(
                f"| {r['model']} | {length} | {r['impl']} | {r['mode']} | {r.get('run', '')} | {wall} | {ratio_t} | "
                f"{peak} | {ratio_m} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks separate", description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="track lengths in seconds")
    parser.add_argument("--models", nargs="+", default=["umx", "demucs"], choices=("umx", "demucs"))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--work", help="folder for the inputs and outputs (default: a temporary folder)")
    parser.add_argument("--limit-mb", type=float, default=14000, help="stop a command whose tree passes this")
    parser.add_argument("--timeout", type=float, default=3600, help="stop a command after this many seconds")
    parser.add_argument("--name", default="separate", help="results file benchmarks/results/<name>.json")
    parser.add_argument("--chunked-only", action="store_true", help="Open-Unmix: only the chunked runs (no upstream)")
    parser.add_argument("--warm", type=int, default=0, help="warm runs after each cold first run (default 0)")
    parser.add_argument("--demucs-channels", type=int, nargs="+", default=[64], help="Demucs widths (default 64)")
    parser.add_argument(
        "--upstream-model", action="store_true", help="Demucs: the ports read the upstream package (cached conversion)"
    )
    parser.add_argument(
        "--table", nargs="+", metavar="JSON", help="print result files as a Markdown table, run nothing"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table([Path(p) for p in args.table]))
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-separate-"))
    work.mkdir(parents=True, exist_ok=True)
    tracks = write_tracks(work, args.lengths)
    rows: list[dict[str, Any]] = []
    load = [os.getloadavg()]
    cases = [("umx", 0)] if "umx" in args.models else []
    cases += [("demucs", c) for c in args.demucs_channels] if "demucs" in args.models else []
    for kind, channels in cases:
        if kind == "umx":
            canonical, upstream_model = write_umx_models(work)
        else:
            canonical, upstream_model = write_demucs_models(work, channels)
        model_label = kind if kind == "umx" else f"demucs{channels}"
        for seconds, track in tracks.items():
            runs: list[tuple[str, list[str], str]] = []
            for impl in args.impls:
                out = work / "out" / impl
                if impl == "upstream":
                    if not args.chunked_only:
                        mode = "whole" if kind == "umx" else "split (40-s segments)"
                        runs.append(("upstream", upstream(kind, track, upstream_model, out), mode))
                elif kind == "umx":
                    if not args.chunked_only:
                        runs.append((impl, ours(impl, track, canonical, out, ["--segment-seconds", "none"]), "whole"))
                    if seconds == max(args.lengths):
                        chunked = ["--segment-seconds", str(CHUNK_SECONDS)]
                        runs.append((impl, ours(impl, track, canonical, out, chunked), f"{CHUNK_SECONDS}-s chunks"))
                else:
                    model = upstream_model / "demucs_bench.th" if args.upstream_model else canonical
                    runs.append((impl, ours(impl, track, model, out, []), "split (40-s segments)"))
            for index in range(1 + args.warm):
                run_name = "cold" if index == 0 else f"warm{index}"
                base: dict[str, Any] | None = None
                for impl, command, mode in runs:
                    if impl != "upstream":
                        cache = work / "cache" / f"{model_label}-{seconds}-{impl}-{mode.split()[0]}"
                        if index == 0 and cache.exists():
                            shutil.rmtree(cache)  # the cold run starts from an empty cache
                        command = [*command, "--cache-dir", str(cache)]
                    row = {"model": model_label, "length_s": seconds, "impl": impl, "mode": mode, "run": run_name,
                           "load_before": os.getloadavg()}  # fmt: skip
                    row.update(measure(command, args.limit_mb, args.timeout))
                    if impl == "upstream":
                        base = row
                    ok = (base is not None and "stopped" not in base and base["returncode"] == 0
                          and row["returncode"] == 0)  # fmt: skip
                    if ok and impl != "upstream":
                        row["time_ratio"] = round(row["wall_s"] / base["wall_s"], 2)
                        row["memory_ratio"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 2)
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
                    if "error" in row:
                        print(row["error"], file=sys.stderr)
                    load.append(os.getloadavg())
    meta = {
        "umx": "umxhq shapes, 4 targets, seeded; niter 1, wiener_win_len 300; float32 WAV out",
        "demucs": f"channels {args.demucs_channels}, seeded; shifts 0, overlap 0.25, split; int16 WAV out"
        + (" (ports read the upstream package)" if args.upstream_model else ""),
        "runs": "cold: an empty cache; warmN: the cache populated by the runs before",
        "tracks": "stempeg clip's stems summed, tiled; 16-bit WAV in",
        "load_average_during_run": load,
        "limit_mb": args.limit_mb,
    }
    print(f"wrote {write_result(args.name, rows, meta)}")
    return 0
