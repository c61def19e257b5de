"""Speed and memory of the TensorFlow port against the upstream code, in one run on the same input.

Cases (float32, CPU; upstream with ``torch.set_num_threads(2)``, TensorFlow with 2 intra-op and 2 inter-op
threads):

- ``umx_separator_niter0`` / ``umx_separator_niter1``: the Open-Unmix separator, umxhq shapes (4 targets, seeded
  weights), 30 s of stereo music (the stempeg example's stems summed, tiled), upstream
  ``openunmix.model.Separator`` vs ``umx_tf.Separator.separate`` (one ``tf.function``);
- ``demucs_apply``: Demucs v2 at the pretrained size (channels 64, 265.7 M parameters, seeded weights), 10 s of
  the same music, ``apply_model(split=True, shifts=0)``: ``demucs.utils.apply_model`` vs ``umx_tf.apply_model``.

Implementations: ``upstream``; ``umx_tf_xla`` (the graph XLA-compiled, ``jit_compile=True``); ``umx_tf_graph``
(the same ``tf.function`` without XLA; the LSTM recurrences are XLA-compiled in both). Every (case,
implementation) runs in a fresh interpreter. For TensorFlow the first call (tracing + compilation + one run) is
timed on its own (``first_call_s``); ``compile_s`` is ``first_call_s`` minus the median of the later calls; the
timed calls (``wall_s_*``) are the later ones. Peak memory: upstream's first call; TensorFlow's second call
(``peak_delta_mb``; the first call's, compiler included, is ``first_call_peak_delta_mb``). Outputs are compared
with upstream's (SNR, dB). Results: ``benchmarks/results/tf.json`` (rows in :mod:`benchmarks.common`'s format).

Usage: ``python -m benchmarks.bench_tf [--cases ...] [--impls ...] [--repeats N] [--seconds S]``.
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
IMPLS = ("upstream", "umx_tf_xla", "umx_tf_graph")
THREADS = 2


def _setup_tf(case: str, seconds: float, jit_compile: bool) -> Any:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    from umx_tf import apply_model, from_canonical

    if case.startswith("umx_separator"):
        cfg = umx_config(int(case[-1]))
        separator = from_canonical(cfg, umx_weights(cfg), jit_compile=jit_compile)
        audio = music(seconds)[None]

        def call():
            return separator.separate(audio).numpy()

        return call
    cfg = demucs_config()
    model = from_canonical(cfg, demucs_weights(cfg))
    wav = tf.constant(normalised(music(seconds)))

    def call():
        return apply_model(model, wav, shifts=0, split=True, jit_compile=jit_compile).numpy()

    return call


def worker(case: str, impl: str, seconds: float, repeats: int, save: str) -> dict[str, Any]:
    """One (case, implementation) in this process: first call, peak memory, then timed calls."""
    import gc

    extra: dict[str, Any] = {}
    if impl.startswith("umx_tf"):
        call = _setup_tf(case, seconds, jit_compile=impl == "umx_tf_xla")
        start = time.perf_counter()
        out, first_memory = measure_peak_rss(call)  # trace + compile + run
        extra["first_call_s"] = time.perf_counter() - start
        extra["first_call_peak_delta_mb"] = first_memory["peak_delta_mb"]
        gc.collect()
        _, memory = measure_peak_rss(call)
    else:
        call = setup_upstream(case, seconds, THREADS)
        gc.collect()
        out, memory = measure_peak_rss(call)
    np.save(save, out)
    del out
    gc.collect()
    timing = time_call(call, repeats=repeats, warmup=0)
    if "first_call_s" in extra:
        extra["compile_s"] = extra["first_call_s"] - timing["wall_s_median"]
    return {"case": case, "impl": impl, "seconds_of_audio": seconds, **timing, **memory, **extra}


def _snr(actual: np.ndarray, expected: np.ndarray) -> float:
    noise = float(np.sum((actual.astype(np.float64) - expected) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(expected.astype(np.float64) ** 2)) / noise)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--impls", nargs="+", choices=IMPLS[1:], default=list(IMPLS[1:]), help="TF variants to run")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first one")
    parser.add_argument("--seconds", type=float, default=None, help="override the audio length of every case")
    parser.add_argument("--name", default="tf", help="result file benchmarks/results/<name>.json")
    args = parser.parse_args(argv)

    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            seconds = args.seconds or (10.0 if case == "demucs_apply" else 30.0)
            repeats = max(1, args.repeats - 1) if case == "demucs_apply" else args.repeats
            outputs: dict[str, np.ndarray] = {}
            case_rows: dict[str, dict[str, Any]] = {}
            for impl in ("upstream", *args.impls):
                save = os.path.join(tmp, f"{case}-{impl}.npy")
                row = run_isolated(
                    "benchmarks.bench_tf:worker", case=case, impl=impl, seconds=seconds, repeats=repeats, save=save
                )
                outputs[impl] = np.load(save)
                rows.append(row)
                case_rows[impl] = row
                compile_note = f", first call {row['first_call_s']:.1f} s" if "first_call_s" in row else ""
                print(f"  {case:<22} {impl:<13} {row['wall_s_min']:.3f} s (min of {repeats}){compile_note}", flush=True)
            upstream = case_rows["upstream"]
            for impl in args.impls:
                ours = case_rows[impl]
                ours["ratio_vs_upstream"] = ours["wall_s_min"] / upstream["wall_s_min"]
                ours["ratio_median_vs_upstream"] = ours["wall_s_median"] / upstream["wall_s_median"]
                ours["ratio_first_call_vs_upstream"] = ours["first_call_s"] / upstream["wall_s_median"]
                ours["peak_delta_ratio_vs_upstream"] = ours["peak_delta_mb"] / max(upstream["peak_delta_mb"], 1e-9)
                ours["snr_db_vs_upstream"] = _snr(outputs[impl], outputs["upstream"])
    print()
    print_table(rows)
    for r in rows:
        if "snr_db_vs_upstream" in r:
            print(
                f"{r['case']} {r['impl']}: ratio {r['ratio_vs_upstream']:.2f} after warm-up, "
                f"{r['ratio_first_call_vs_upstream']:.2f} for the first call (compile {r['compile_s']:.1f} s), "
                f"output SNR vs upstream {r['snr_db_vs_upstream']:.1f} dB"
            )
    import tensorflow as tf

    path = write_result(
        args.name,
        rows,
        meta={
            "threads": THREADS,
            "dtype": "float32",
            "device": "cpu",
            "tensorflow": tf.__version__,
            "total_s": time.time() - started,
            "timing": "wall_s_*: calls after tracing/compilation; compile_s = first_call_s - wall_s_median",
            "targets": "ratio_vs_upstream <= 1.25 after warm-up",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
