"""Speed and memory of the JAX port against the upstream code, in one run on the same input.

Cases (float32, CPU; upstream with ``torch.set_num_threads(2)``, XLA with 2 intra-op threads):

- ``umx_separator_niter0`` / ``umx_separator_niter1``: the Open-Unmix separator, umxhq shapes (4 targets, seeded
  weights), 30 s of stereo music (the stempeg example's stems summed, tiled), upstream
  ``openunmix.model.Separator`` vs ``umx_jax.Separator`` (the whole separation is one compiled function);
- ``demucs_apply``: Demucs v2 at the pretrained size (channels 64, 265.7 M parameters, seeded weights), 10 s of
  the same music, ``apply_model(split=True, shifts=0)``: ``demucs.utils.apply_model`` vs ``umx_jax.apply_model``.

Every (case, implementation) runs in a fresh interpreter. For JAX the first call (trace + XLA compilation + one
run) is timed on its own and reported as ``first_call_s``; ``compile_s`` is ``first_call_s`` minus the median of
the later calls. The timed calls (``wall_s_*``) are the later ones, after compilation: the port's steady state.
Peak memory: upstream's first call; JAX's first call after compilation (``peak_delta_mb``; the compiler's own peak
is in ``first_call_peak_delta_mb``). Outputs are compared with upstream's (SNR, dB).
Results: ``benchmarks/results/jax.json`` (rows in :mod:`benchmarks.common`'s format).

Usage: ``python -m benchmarks.bench_jax [--cases ...] [--repeats N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import measure_peak_rss, print_table, run_isolated, time_call, write_result
from benchmarks.workloads import (
    demucs_config,
    demucs_weights,
    music,
    normalised,
    setup_upstream,
    umx_config,
    umx_weights,
)

CASES = ("umx_separator_niter0", "umx_separator_niter1", "demucs_apply")
IMPLS = ("upstream", "umx_jax")
THREADS = 2
XLA_FLAGS = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}"


def _setup_jax(case: str, seconds: float) -> Any:
    import jax

    from umx_jax import apply_model, from_canonical

    if case.startswith("umx_separator"):
        cfg = umx_config(int(case[-1]))
        separator = from_canonical(cfg, umx_weights(cfg))
        audio = jax.device_put(music(seconds)[None])

        def call():
            return np.asarray(separator(audio))

        return call
    cfg = demucs_config()
    model = from_canonical(cfg, demucs_weights(cfg))
    wav = jax.device_put(normalised(music(seconds)))

    def call():
        return np.asarray(apply_model(model, wav, shifts=0, split=True))

    return call


def worker(case: str, impl: str, seconds: float, repeats: int, save: str) -> dict[str, Any]:
    """One (case, implementation) in this process: first call, peak memory, then timed calls."""
    import gc

    if impl == "umx_jax":
        os.environ["XLA_FLAGS"] = XLA_FLAGS
        call = _setup_jax(case, seconds)
        start = time.perf_counter()
        out, first_memory = measure_peak_rss(call)  # trace + compile + run
        first_call = time.perf_counter() - start
        gc.collect()
        _, memory = measure_peak_rss(call)
        extra = {
            "first_call_s": first_call,
            "first_call_peak_delta_mb": first_memory["peak_delta_mb"],
        }
    else:
        call = setup_upstream(case, seconds, THREADS)
        gc.collect()
        out, memory = measure_peak_rss(call)
        extra = {}
    np.save(save, out)
    del out
    gc.collect()
    timing = time_call(call, repeats=repeats, warmup=0)
    if impl == "umx_jax":
        extra["compile_s"] = extra["first_call_s"] - timing["wall_s_median"]
    return {"case": case, "impl": impl, "seconds_of_audio": seconds, **timing, **memory, **extra}


def _snr(actual: np.ndarray, expected: np.ndarray) -> float:
    noise = float(np.sum((actual.astype(np.float64) - expected) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(expected.astype(np.float64) ** 2)) / noise)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first one")
    parser.add_argument("--seconds", type=float, default=None, help="override the audio length of every case")
    parser.add_argument("--name", default="jax", help="result file benchmarks/results/<name>.json")
    args = parser.parse_args(argv)

    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            seconds = args.seconds or (10.0 if case == "demucs_apply" else 30.0)
            repeats = max(1, args.repeats - 1) if case == "demucs_apply" else args.repeats
            outputs = {}
            for impl in IMPLS:
                save = os.path.join(tmp, f"{case}-{impl}.npy")
                row = run_isolated(
                    "benchmarks.bench_jax:worker", case=case, impl=impl, seconds=seconds, repeats=repeats, save=save
                )
                outputs[impl] = np.load(save)
                rows.append(row)
                compile_note = f", compile {row['compile_s']:.1f} s" if "compile_s" in row else ""
                print(f"  {case:<22} {impl:<10} {row['wall_s_min']:.3f} s (min of {repeats}){compile_note}", flush=True)
            ours, upstream = rows[-1], rows[-2]
            ours["ratio_vs_upstream"] = ours["wall_s_min"] / upstream["wall_s_min"]
            ours["ratio_median_vs_upstream"] = ours["wall_s_median"] / upstream["wall_s_median"]
            ours["speedup_vs_upstream"] = upstream["wall_s_min"] / ours["wall_s_min"]
            ours["peak_delta_ratio_vs_upstream"] = ours["peak_delta_mb"] / max(upstream["peak_delta_mb"], 1e-9)
            ours["snr_db_vs_upstream"] = _snr(outputs["umx_jax"], outputs["upstream"])
    print()
    print_table(rows)
    for r in rows:
        if "snr_db_vs_upstream" in r:
            print(
                f"{r['case']}: speed-up {r['speedup_vs_upstream']:.2f}x, compile {r['compile_s']:.1f} s (separate), "
                f"output SNR vs upstream {r['snr_db_vs_upstream']:.1f} dB"
            )
    import jax

    path = write_result(
        args.name,
        rows,
        meta={
            "threads": THREADS,
            "xla_flags": XLA_FLAGS,
            "dtype": "float32",
            "device": "cpu",
            "jax": jax.__version__,
            "total_s": time.time() - started,
            "timing": "wall_s_*: calls after compilation; compile_s = first_call_s - wall_s_median",
            "targets": "umx_separator speed-up >= 2x vs upstream after compilation",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
