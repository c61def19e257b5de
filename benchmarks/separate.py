"""``unmix-separate`` in every framework against upstream's own commands, on the same files, in one run.

Workloads (``benchmarks.workloads``): music tiled from the stempeg clip to 30 s, 3 min and 10 min (16-bit WAV);

- Open-Unmix: umxhq shapes (4 targets, seeded weights), upstream's CLI settings (``--niter 1``,
  ``--wiener-win-len 300``), 32-bit float WAV stems. Upstream: openunmix 1.3.0's ``umx`` on an openunmix model
  folder of the same weights. Ports: ``unmix-separate --segment-seconds none`` (the whole track, as upstream) and,
  for the longest track, ``--segment-seconds 30`` (chunks);
- Demucs v2: channels 64 (the released size) and 48 (``--demucs-channels``), seeded weights, ``--shifts 0
  --overlap 0.25``, split into 40-s segments, 16-bit WAV. Upstream: demucs 2.0.3's ``python -m demucs.separate`` on
  a ``demucs.utils.save_model`` package of the same weights;
- HTDemucs (``--models htdemucs``): the released ``htdemucs`` shapes (42 M parameters, seeded weights), demucs 4's
  defaults (split into 7.8-s segments, overlap 0.25, 16-bit WAV, rescaled against clipping) except ``--shifts 0``
  on both sides (upstream's one shift has an unseeded random offset, which changes the number of chunks; 0 keeps
  both commands on the same work). Upstream: demucs 4.1.0's ``demucs`` command (``python -m
  benchmarks.upstream_cli demucs4``, with ``.oracle-demucs4`` first on ``PYTHONPATH``) on a ``--repo`` folder
  holding the same weights as a package demucs 4.1.0 itself wrote (``serialize_model`` + ``save_with_checksum``).
  Ports: torch, TF, JAX and NNabla (NNabla float32 only).

Cold and warm runs (``--warm N``): every command runs once with an empty cache folder of its own (``--cache-dir``:
the cold first run, compiling everything) and then ``N`` more times with that folder populated (the warm runs: the
compiled graphs read back); upstream's commands, which keep no cache, run as often. ``--upstream-model`` hands
Demucs the upstream package instead of the canonical file (the conversion is then cached by the first run).
Ratios are against upstream's run of the same index.

Upstream's commands run through :mod:`benchmarks.upstream_cli` (local models, soundfile in torchaudio's place: its
separation code unchanged). Every command runs in its own process, one at a time, in the environment users run in
(``--omp-wait passive``: ``OMP_WAIT_POLICY=PASSIVE``, for a shared machine;
:data:`benchmarks.common.OMP_WAIT_POLICIES` says why figures must name it) and with the machine's threads (the
ports' and upstream's defaults). Measured from this process: wall time from start to exit (interpreter start,
model load, reading, separation, writing: what a user waits for) and peak resident memory
of the command's process tree (psutil, sampled every 20 ms; the NNabla command's tree includes the
``.venv-nnabla`` interpreter it starts). A command whose tree passes ``--limit-mb`` is stopped and recorded as such
(the machine is shared). Ratios are against upstream's command at the same length.

Run: ``.venv/bin/python -m benchmarks separate [--lengths 30 180 600] [--models umx demucs htdemucs]
[--impls upstream torch tf jax nnabla] [--chunked-only] [--warm N] [--demucs-channels 64 48] [--upstream-model]
[--name NAME]``; writes
``benchmarks/results/<NAME>.json`` (default ``separate``); ``--table FILE...`` prints result files as the Markdown
table of ``docs/separate.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from benchmarks.common import OMP_WAIT_POLICIES, ROOT, TIMING_ENV, child_env, omp_wait, set_omp_wait, write_result
from benchmarks.plan import HTDEMUCS_IMPLS

IMPLS = ("upstream", "torch", "tf", "jax", "nnabla")
MODELS = ("umx", "demucs", "htdemucs")
HTDEMUCS_NAME = "htdemucs_bench"  # the package's signature in the --repo folder (demucs4 -n)
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


_PACKAGE = r"""
import pathlib, types
from fractions import Fraction
from demucs.htdemucs import HTDemucs
from demucs.states import save_with_checksum, serialize_model

# serialize_model passes the training arguments through omegaconf's OmegaConf.to_container; these are a plain dict,
# so a stand-in returns them as they are (omegaconf is not in the oracle folder)
omegaconf = types.ModuleType("omegaconf")
omegaconf.OmegaConf = type("OmegaConf", (), {"to_container": staticmethod(lambda cfg, resolve=True: dict(cfg))})
sys.modules.setdefault("omegaconf", omegaconf)

kwargs = dict(ARGS["kwargs"], segment=Fraction(*ARGS["kwargs"]["segment"]))
model = HTDemucs(**kwargs)
model.load_state_dict({k: torch.from_numpy(v) for k, v in INPUTS.items()})
folder = pathlib.Path(ARGS["folder"])
before = set(folder.iterdir())
save_with_checksum(serialize_model(model, {"benchmark": True}, half=False), folder / (ARGS["name"] + ".th"))
(written,) = set(folder.iterdir()) - before
RESULT["file"] = written.name
"""


def write_htdemucs_models(work: Path) -> tuple[Path, Path]:
    """The canonical file the ports read and the demucs 4.1.0 ``--repo`` folder (``htdemucs_bench-<sha>.th``,
    written by demucs 4.1.0 itself in the oracle's process): the same seeded weights at the released shapes."""
    from benchmarks.models import weights
    from benchmarks.plan import FULL
    from core_spec.canonical import save_canonical
    from core_spec.configs import HTDemucsConfig, htdemucs_preset
    from unmix.parity.oracle4 import run_oracle4

    cfg = htdemucs_preset("htdemucs")
    assert isinstance(cfg, HTDemucsConfig)
    work = work / "htdemucs"
    repo = work / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    canonical = work / f"{HTDEMUCS_NAME}.safetensors"
    packages = list(repo.glob(f"{HTDEMUCS_NAME}-*.th"))
    if canonical.exists() and packages:
        return canonical, repo
    arrays = weights(FULL.point("htdemucs_7.8s"), cfg)  # the benchmark's own seeded htdemucs
    if not canonical.exists():
        save_canonical(canonical, arrays, cfg)
    for old in packages:
        old.unlink()
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}  # JSON: tuples as lists
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    run_oracle4(_PACKAGE, {"kwargs": kwargs, "folder": str(repo), "name": HTDEMUCS_NAME}, arrays, timeout=900)
    return canonical, repo


# --- measurement ------------------------------------------------------------------------------------------------


def measure(command: list[str], limit_mb: float, timeout_s: float, path_first: str | None = None) -> dict[str, Any]:
    """Run ``command``; wall time and the peak resident memory of its process tree (MiB). ``path_first``: a folder
    put before this checkout on ``PYTHONPATH`` (demucs 4.1.0's oracle folder)."""
    import psutil

    env = child_env(TIMING_ENV)
    if path_first:
        env["PYTHONPATH"] = os.pathsep.join([path_first, env["PYTHONPATH"]])
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
    if kind == "htdemucs":  # demucs 4.1.0's command: --overlap 0.25, split, int16 and rescale are its defaults
        return [*base, "demucs4", str(track), "-n", HTDEMUCS_NAME, "--repo", str(model), "-o", str(out), "-d", "cpu",
                "--shifts", "0"]  # fmt: skip
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
    parser.add_argument(
        "--models", nargs="+", default=["umx", "demucs"], choices=MODELS, help="umx, demucs (v2), htdemucs (v4)"
    )
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--work", help="folder for the inputs and outputs (default: a temporary folder)")
    parser.add_argument("--limit-mb", type=float, default=14000, help="stop a command whose tree passes this")
    parser.add_argument("--timeout", type=float, default=3600, help="stop a command after this many seconds")
    parser.add_argument("--name", default="separate", help="results file benchmarks/results/<name>.json")
    parser.add_argument("--chunked-only", action="store_true", help="Open-Unmix: only the chunked runs (no upstream)")
    parser.add_argument("--omp-wait", choices=sorted(OMP_WAIT_POLICIES), default="default",
                        help="OpenMP wait policy of every command (default: none set, as users run them)")  # fmt: skip
    parser.add_argument("--warm", type=int, default=0, help="warm runs after each cold first run (default 0)")
    parser.add_argument("--demucs-channels", type=int, nargs="+", default=[64], help="Demucs widths (default 64)")
    parser.add_argument(
        "--upstream-model",
        action="store_true",
        help="Demucs / HTDemucs: the ports read the upstream package (cached conversion)",
    )
    parser.add_argument(
        "--table", nargs="+", metavar="JSON", help="print result files as a Markdown table, run nothing"
    )
    args = parser.parse_args(argv)
    set_omp_wait(args.omp_wait)
    if args.table:
        print(markdown_table([Path(p) for p in args.table]))
        return 0
    from unmix.parity.oracle4 import oracle4_dir

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-separate-"))
    work.mkdir(parents=True, exist_ok=True)
    tracks = write_tracks(work, args.lengths)
    rows: list[dict[str, Any]] = []
    load = [os.getloadavg()]
    cases = [("umx", 0)] if "umx" in args.models else []
    cases += [("demucs", c) for c in args.demucs_channels] if "demucs" in args.models else []
    cases += [("htdemucs", 0)] if "htdemucs" in args.models else []
    for kind, channels in cases:
        if kind == "umx":
            canonical, upstream_model = write_umx_models(work)
        elif kind == "htdemucs":
            canonical, upstream_model = write_htdemucs_models(work)
        else:
            canonical, upstream_model = write_demucs_models(work, channels)
        model_label = f"demucs{channels}" if kind == "demucs" else kind
        impls = [i for i in args.impls if kind != "htdemucs" or i in HTDEMUCS_IMPLS]
        for seconds, track in tracks.items():
            runs: list[tuple[str, list[str], str]] = []
            for impl in impls:
                out = work / "out" / impl
                if impl == "upstream":
                    if not args.chunked_only:
                        mode = {"umx": "whole", "demucs": "split (40-s segments)"}.get(kind, "split (7.8-s segments)")
                        runs.append(("upstream", upstream(kind, track, upstream_model, out), mode))
                elif kind == "umx":
                    if not args.chunked_only:
                        runs.append((impl, ours(impl, track, canonical, out, ["--segment-seconds", "none"]), "whole"))
                    if seconds == max(args.lengths):
                        chunked = ["--segment-seconds", str(CHUNK_SECONDS)]
                        runs.append((impl, ours(impl, track, canonical, out, chunked), f"{CHUNK_SECONDS}-s chunks"))
                elif kind == "htdemucs":
                    model = next(upstream_model.glob(f"{HTDEMUCS_NAME}-*.th")) if args.upstream_model else canonical
                    runs.append((impl, ours(impl, track, model, out, ["--shifts", "0"]), "split (7.8-s segments)"))
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
                    path_first = str(oracle4_dir()) if impl == "upstream" and kind == "htdemucs" else None
                    row.update(measure(command, args.limit_mb, args.timeout, path_first))
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
        "htdemucs": "released htdemucs shapes, seeded; demucs 4.1.0's command and defaults but --shifts 0 on both "
        "sides (split, overlap 0.25, int16 rescaled WAV out)"
        + (" (ports read the upstream package)" if args.upstream_model else ""),
        "runs": "cold: an empty cache; warmN: the cache populated by the runs before",
        "tracks": "stempeg clip's stems summed, tiled; 16-bit WAV in",
        "load_average_during_run": load,
        "limit_mb": args.limit_mb,
        "omp_wait": omp_wait(),
    }
    print(f"wrote {write_result(args.name, rows, meta)}")
    return 0
