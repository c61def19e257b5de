"""Speed and memory of the PyTorch port against the upstream code, in one run on the same input.

Cases (float32, CPU, ``torch.set_num_threads(2)``):

- ``umx_separator_niter0`` / ``umx_separator_niter1``: the Open-Unmix separator, umxhq shapes (4 targets, seeded
  weights), 30 s of stereo music (the stempeg example's stems summed, tiled), upstream
  ``openunmix.model.Separator`` vs ``umx_torch.Separator``;
- ``wiener_niter0`` / ``wiener_niter1``: the Wiener step alone, on the same network outputs (upstream: the
  Separator's loop over samples and 300-frame chunks calling ``openunmix.filtering.wiener``);
- ``demucs_apply``: Demucs v2 at the pretrained size (channels 64, 265.7 M parameters, seeded weights), 10 s of
  the same music, ``apply_model(split=True, shifts=0)``: ``demucs.utils.apply_model`` vs ``umx_torch.apply_model``.

Timing: one fresh interpreter per case holds both implementations and calls them alternately (a warm-up round,
then ``--repeats`` rounds): wall time (min and median) and process CPU time. Memory: one fresh interpreter per
(case, implementation) measures the resident memory its first call adds on top of the loaded model, and saves
its output; the two outputs are compared (SNR, dB). Results: ``benchmarks/results/torch.json`` (rows in
:mod:`benchmarks.common`'s format).

Usage: ``python -m benchmarks.bench_torch [--cases ...] [--repeats N] [--seconds S]``.
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

from benchmarks.common import MEMORY_ENV, TIMING_ENV, measure_peak_rss, print_table, run_isolated, write_result
from benchmarks.workloads import demucs_config, demucs_weights, music, umx_config, umx_weights

CASES = ("umx_separator_niter0", "umx_separator_niter1", "wiener_niter0", "wiener_niter1", "demucs_apply")
IMPLS = ("upstream", "umx_torch")
THREADS = int(os.environ.get("UNMIX_BENCH_THREADS", "2"))


def _upstream_filter(spectrograms, mix_stft, niter: int, win: int = 300):
    """The Wiener loop of ``openunmix.model.Separator.forward`` (upstream layout in and out)."""
    import torch
    from openunmix.filtering import wiener

    nb_samples, nb_frames = spectrograms.shape[:2]
    nb_sources = spectrograms.shape[-1]
    out = torch.zeros(mix_stft.shape + (nb_sources,), dtype=mix_stft.dtype)
    for sample in range(nb_samples):
        pos = 0
        while pos < nb_frames:
            cur = torch.arange(pos, min(nb_frames, pos + win))
            pos = int(cur[-1]) + 1
            out[sample, cur] = wiener(spectrograms[sample, cur], mix_stft[sample, cur], niter)
    return out


def _setup(case: str, impl: str, seconds: float) -> tuple[Any, Any]:
    """``(call, to_numpy)``: the timed call and how to turn its result into a comparable array."""
    import torch

    from parity_tests import oracle

    if case.startswith("umx_separator"):
        cfg = umx_config(int(case[-1]))
        weights = umx_weights(cfg)
        audio = torch.from_numpy(music(seconds)[None])
        if impl == "upstream":
            model = oracle.umx_separator(cfg, weights, torch.float32)
        else:
            from umx_torch import Separator

            model = Separator.from_config(cfg, weights)

        def call():
            with torch.no_grad():
                return model(audio)

        return call, lambda out: out.numpy()

    if case.startswith("wiener"):
        from umx_torch import Separator
        from umx_torch.transforms import complex_norm, stft

        niter = int(case[-1])
        cfg = umx_config(niter)
        sep = Separator.from_config(cfg, umx_weights(cfg))
        with torch.no_grad():
            mix = stft(torch.from_numpy(music(seconds)[None]), 4096, 1024)  # (B, C, F, T)
            X = complex_norm(mix)
            spec = torch.stack([m(X) for m in sep.target_models.values()], dim=1)  # (B, S, C, F, T)
        del sep
        if impl == "upstream":
            up_spec = spec.permute(0, 4, 3, 2, 1).contiguous()  # (B, T, F, C, S)
            up_mix = torch.view_as_real(mix.permute(0, 3, 2, 1)).contiguous()  # (B, T, F, C, 2)

            def call():
                with torch.no_grad():
                    return _upstream_filter(up_spec, up_mix.clone(), niter)

            return (
                call,
                lambda out: torch.view_as_complex(out.movedim(-1, -2).contiguous()).permute(0, 4, 3, 2, 1).numpy(),
            )
        filt = Separator(dict(), niter=niter).filter

        def call():
            with torch.no_grad():
                return filt(spec, mix)

        return call, lambda out: out.numpy()

    if case == "demucs_apply":
        cfg = demucs_config()
        weights = demucs_weights(cfg)
        wav = music(seconds)
        ref = wav.mean(0)
        wav = torch.from_numpy((wav - ref.mean()) / ref.std(ddof=1))
        if impl == "upstream":
            from demucs.utils import apply_model

            model = oracle.demucs_model(cfg, weights, torch.float32)
        else:
            from umx_torch import Demucs, apply_model, load_weights

            model = Demucs.from_config(cfg)
            load_weights(model, weights)
        del weights

        def call():
            return apply_model(model, wav, shifts=0, split=True)

        return call, lambda out: out.numpy()
    raise ValueError(f"unknown case {case!r}")


def memory_worker(case: str, impl: str, seconds: float, save: str) -> dict[str, Any]:
    """One (case, implementation) in a fresh process: the peak memory of its first call, and its output."""
    import torch

    torch.set_num_threads(THREADS)
    call, to_numpy = _setup(case, impl, seconds)
    out, memory = measure_peak_rss(call)
    np.save(save, to_numpy(out))
    return {"case": case, "impl": impl, **memory}


def timing_worker(case: str, seconds: float, repeats: int) -> dict[str, dict[str, Any]]:
    """Both implementations of a case in one process, called alternately (one warm-up round, then ``repeats``
    rounds, the order swapped every round), so that a machine's changing load hits both alike."""
    import torch

    torch.set_num_threads(THREADS)
    calls = {impl: _setup(case, impl, seconds)[0] for impl in IMPLS}
    wall: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    cpu: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for round_ in range(repeats + 1):
        for impl in IMPLS if round_ % 2 == 0 else IMPLS[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            calls[impl]()
            if round_:  # round 0 is the warm-up
                wall[impl].append(time.perf_counter() - start)
                cpu[impl].append(time.process_time() - start_cpu)
    out = {}
    for impl in IMPLS:
        timing = {
            "wall_s_min": min(wall[impl]),
            "wall_s_median": float(np.median(wall[impl])),
            "wall_s_all": wall[impl],
            "cpu_s_min": min(cpu[impl]),
            "cpu_s_all": cpu[impl],
        }
        out[impl] = timing
    return out


def _snr(actual: np.ndarray, expected: np.ndarray) -> float:
    noise = float(np.sum(np.abs(actual.astype(np.complex128) - expected) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(np.abs(expected) ** 2)) / noise)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first (measured) one")
    parser.add_argument("--seconds", type=float, default=None, help="override the audio length of every case")
    parser.add_argument("--name", default="torch", help="result file benchmarks/results/<name>.json")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads (default 2)")
    args = parser.parse_args(argv)
    os.environ["UNMIX_BENCH_THREADS"] = str(args.threads)  # read by the worker processes

    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            seconds = args.seconds or (10.0 if case == "demucs_apply" else 30.0)
            repeats = max(1, args.repeats - 1) if case == "demucs_apply" else args.repeats
            timings = run_isolated(
                "benchmarks.bench_torch:timing_worker", env=TIMING_ENV, case=case, seconds=seconds, repeats=repeats
            )
            outputs, case_rows = {}, {}
            for impl in IMPLS:
                save = os.path.join(tmp, f"{case}-{impl}.npy")
                memory = run_isolated(
                    "benchmarks.bench_torch:memory_worker",
                    env=MEMORY_ENV,
                    case=case,
                    impl=impl,
                    seconds=seconds,
                    save=save,
                )
                outputs[impl] = np.load(save)
                case_rows[impl] = {**memory, **timings[impl], "seconds_of_audio": seconds, "repeats": repeats}
                print(
                    f"  {case:<22} {impl:<10} {timings[impl]['wall_s_min']:.3f} s wall (min of {repeats}), "
                    f"{timings[impl]['cpu_s_min']:.3f} s cpu, +{memory['peak_delta_mb']:.0f} MiB",
                    flush=True,
                )
            ours, upstream = case_rows["umx_torch"], case_rows["upstream"]
            ours["ratio_vs_upstream"] = ours["wall_s_min"] / upstream["wall_s_min"]
            ours["ratio_median_vs_upstream"] = ours["wall_s_median"] / upstream["wall_s_median"]
            ours["cpu_ratio_vs_upstream"] = ours["cpu_s_min"] / upstream["cpu_s_min"]
            ours["peak_delta_ratio_vs_upstream"] = ours["peak_delta_mb"] / max(upstream["peak_delta_mb"], 1e-9)
            ours["snr_db_vs_upstream"] = _snr(outputs["umx_torch"], outputs["upstream"])
            rows += [upstream, ours]
    print()
    print_table(rows)
    for r in rows:
        if "snr_db_vs_upstream" in r:
            print(f"{r['case']}: output SNR ours vs upstream {r['snr_db_vs_upstream']:.1f} dB")
    import torch

    path = write_result(
        args.name,
        rows,
        meta={
            "threads": args.threads,
            "timing_env": TIMING_ENV,
            "memory_env": MEMORY_ENV,
            "dtype": "float32",
            "device": "cpu",
            "torch": torch.__version__,
            "total_s": time.time() - started,
            "targets": "ratio <= 1.0 for every case; wiener ratio <= 0.5; peak memory <= upstream's",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
