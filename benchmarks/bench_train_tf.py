"""Training-step speed and memory of the TensorFlow port against the upstream code, in one run on the same batch.

One training step = forward, loss, backward and one Adam step (the recipe's lr and coupled weight decay), float32,
CPU, models in training mode, seeded weights and batch; upstream with ``torch.set_num_threads(2)``, TensorFlow with
2 intra-op and 2 inter-op threads. The cases are those of ``bench_train_torch.py``:

- ``umx_train_step``: one Open-Unmix target at umxhq shapes (8.9 M parameters), batch 16 of 6-s stereo excerpts
  (264,600 samples, 255 un-centred STFT frames of 4096 / 1024), MSE on magnitudes, LSTM dropout 0.4 (as upstream).
  Upstream: ``openunmix.model.OpenUnmix`` behind ``openunmix.transforms.TorchSTFT(center=False)`` +
  ``ComplexNorm`` and ``torch.optim.Adam``; ours: ``umx_tf.OpenUnmix`` through ``umx_tf.train.Trainer.step``
  (STFT, magnitude, network, loss, ``tf.GradientTape`` gradient and the Adam update in one ``tf.function``).
- ``demucs_train_step``: Demucs v2 at ``channels=16`` (depth 6, resampling, GLU, 2-layer BLSTM: 16.6 M parameters),
  batch 4 of ``valid_length(5 s)`` samples of 4 sources, L1 on the centre-trimmed sources.

Implementations: ``upstream``; ``umx_tf_graph`` (the step as a plain ``tf.function``; the LSTM recurrences and their
backward loops are XLA-compiled either way); ``umx_tf_xla`` (the whole step XLA-compiled, ``jit_compile=True``).

Timing: one fresh interpreter per case holds all implementations and steps them in turn (a warm-up round, which for
TensorFlow is tracing + compilation + one step and is timed on its own as ``first_call_s``, then ``--repeats``
rounds, the order reversed every other round): wall time (min, median) and process CPU time. Memory: one fresh
interpreter per (case, implementation): the resident memory a step adds on top of the built model (TensorFlow: the
second step, the first one's, compiler included, is ``first_call_peak_delta_mb``). The losses of the first step are
compared (relative difference; UMX differs also by the dropout masks).

Results: ``benchmarks/results/train_tf.json`` (rows in :mod:`benchmarks.common`'s format, ratio = ours /
upstream). Usage: ``python -m benchmarks.bench_train_tf [--cases ...] [--impls ...] [--repeats N] [--batch B]
[--seconds S]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import MEMORY_ENV, TIMING_ENV, measure_peak_rss, print_table, run_isolated, write_result

CASES = ("umx_train_step", "demucs_train_step")
IMPLS = ("upstream", "umx_tf_graph", "umx_tf_xla")
THREADS = int(os.environ.get("UNMIX_BENCH_THREADS", "2"))
DEFAULTS = {"umx_train_step": {"batch": 16, "seconds": 6.0}, "demucs_train_step": {"batch": 4, "seconds": 5.0}}
DEMUCS_CHANNELS = 16
RATE = 44100


def _batch(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _case(case: str, batch: int, seconds: float) -> dict[str, Any]:
    """Config, recipe, seeded weights and batch of a case (the same for every implementation)."""
    from core_spec.configs import demucs_preset, umx_preset
    from core_spec.seeded import random_weights
    from core_spec.shapes import valid_length
    from core_spec.training import DemucsTrainConfig, UMXTrainConfig

    if case == "umx_train_step":
        cfg = umx_preset("umxhq").model
        length = int(seconds * RATE)
        return {
            "config": cfg,
            "recipe": UMXTrainConfig(batch_size=batch, seq_dur=seconds),
            "weights": random_weights(cfg, seed=0),
            "batch": (_batch((batch, 2, length), 1), _batch((batch, 2, length), 2)),
        }
    if case == "demucs_train_step":
        cfg = dataclasses.replace(demucs_preset("demucs"), channels=DEMUCS_CHANNELS)
        length = valid_length(int(seconds * RATE), cfg)
        return {
            "config": cfg,
            "recipe": DemucsTrainConfig(batch_size=batch),
            "weights": random_weights(cfg, seed=0),
            "batch": (_batch((batch, len(cfg.sources), 2, length), 3),),
        }
    raise ValueError(f"unknown case {case!r}")


def _setup_upstream(case: str, spec: dict[str, Any]) -> tuple[Any, int]:
    """``(step, parameter count)``: upstream's training step (openunmix ``scripts/train.py``, demucs ``train.py``)."""
    import torch

    from parity_tests import oracle

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cfg, recipe = spec["config"], spec["recipe"]
    if case == "umx_train_step":
        from openunmix.transforms import ComplexNorm, make_filterbanks

        model = oracle.umx_model(cfg, spec["weights"], torch.float32).train()
        n_fft = 2 * (cfg.nb_bins - 1)
        stft, _ = make_filterbanks(n_fft=n_fft, n_hop=n_fft // 4, sample_rate=float(RATE))  # center=False
        encoder = torch.nn.Sequential(stft, ComplexNorm(mono=cfg.nb_channels == 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        x, y = (torch.from_numpy(b) for b in spec["batch"])

        def step() -> float:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(encoder(x)), encoder(y))
            loss.backward()
            optimizer.step()
            return loss.item()

    else:
        from demucs.utils import center_trim

        model = oracle.demucs_model(cfg, spec["weights"], torch.float32).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        criterion = torch.nn.L1Loss()
        sources = torch.from_numpy(spec["batch"][0])

        def step() -> float:
            estimates = model(sources.sum(dim=1))
            loss = criterion(estimates, center_trim(sources, estimates))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss.item()

    return step, sum(p.numel() for p in model.parameters())


def _tf_threads() -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)


def _setup_tf(spec: dict[str, Any], jit_compile: bool) -> tuple[Any, int]:
    """``(step, parameter count)``: ``umx_tf.train.Trainer.step`` on the case's batch."""
    import tensorflow as tf

    from umx_tf import from_canonical
    from umx_tf.train import Trainer

    model = from_canonical(spec["config"], spec["weights"])
    trainer = Trainer(model, spec["recipe"], weights=spec["weights"], jit_compile=jit_compile)
    batch = tuple(tf.constant(b) for b in spec["batch"])
    params = sum(int(np.prod(v.shape)) for v in trainer.params.values)
    return (lambda: trainer.step(batch)), params


def _setup(case: str, impl: str, batch: int, seconds: float) -> tuple[Any, int]:
    spec = _case(case, batch, seconds)
    if impl == "upstream":
        return _setup_upstream(case, spec)
    return _setup_tf(spec, jit_compile=impl == "umx_tf_xla")


def memory_worker(case: str, impl: str, batch: int, seconds: float) -> dict[str, Any]:
    """One (case, implementation) in a fresh process: the peak memory a step adds, and the first step's loss."""
    extra: dict[str, Any] = {}
    if impl != "upstream":
        _tf_threads()
    step, params = _setup(case, impl, batch, seconds)
    loss, memory = measure_peak_rss(step)
    if impl != "upstream":  # the first step traced and compiled: measure the second
        extra["first_call_peak_delta_mb"] = memory["peak_delta_mb"]
        _, memory = measure_peak_rss(step)
    return {"case": case, "impl": impl, "first_loss": loss, "parameters": params, **memory, **extra}


def timing_worker(case: str, impls: list[str], batch: int, seconds: float, repeats: int) -> dict[str, dict[str, Any]]:
    """Every implementation of a case in one process, stepped in turn (a warm-up round, then ``repeats`` rounds,
    the order reversed every other round), so that a machine's changing load hits all alike."""
    _tf_threads()
    steps = {impl: _setup(case, impl, batch, seconds)[0] for impl in impls}
    wall: dict[str, list[float]] = {impl: [] for impl in impls}
    cpu: dict[str, list[float]] = {impl: [] for impl in impls}
    first: dict[str, float] = {}
    for round_ in range(repeats + 1):
        for impl in impls if round_ % 2 == 0 else impls[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[impl]()
            if round_:  # round 0 is the warm-up (TensorFlow: tracing and compilation)
                wall[impl].append(time.perf_counter() - start)
                cpu[impl].append(time.process_time() - start_cpu)
            else:
                first[impl] = time.perf_counter() - start
    out = {}
    for impl in impls:
        row = {
            "wall_s_min": min(wall[impl]),
            "wall_s_median": float(np.median(wall[impl])),
            "wall_s_all": wall[impl],
            "cpu_s_min": min(cpu[impl]),
            "cpu_s_all": cpu[impl],
            "first_call_s": first[impl],
        }
        if impl != "upstream":
            row["compile_s"] = first[impl] - row["wall_s_median"]
        out[impl] = row
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--impls", nargs="+", choices=IMPLS[1:], default=list(IMPLS[1:]), help="TF variants to run")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation after a warm-up")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size of every case")
    parser.add_argument("--seconds", type=float, default=None, help="override the excerpt length of every case")
    parser.add_argument("--name", default="train_tf", help="result file benchmarks/results/<name>.json")
    parser.add_argument("--threads", type=int, default=THREADS, help="intra-op threads of both (default 2)")
    args = parser.parse_args(argv)
    os.environ["UNMIX_BENCH_THREADS"] = str(args.threads)  # read by the worker processes
    impls = ["upstream", *args.impls]

    rows = []
    started = time.time()
    for case in args.cases:
        batch = args.batch or DEFAULTS[case]["batch"]
        seconds = args.seconds or DEFAULTS[case]["seconds"]
        timings = run_isolated(
            "benchmarks.bench_train_tf:timing_worker",
            env=TIMING_ENV,
            case=case,
            impls=impls,
            batch=batch,
            seconds=seconds,
            repeats=args.repeats,
        )
        case_rows = {}
        for impl in impls:
            memory = run_isolated(
                "benchmarks.bench_train_tf:memory_worker",
                env=MEMORY_ENV,
                case=case,
                impl=impl,
                batch=batch,
                seconds=seconds,
            )
            row = {**memory, **timings[impl], "batch": batch, "seconds": seconds, "repeats": args.repeats}
            case_rows[impl] = row
            print(
                f"  {case:<18} {impl:<13} {row['wall_s_min']:.3f} s wall (min of {args.repeats}), "
                f"{row['cpu_s_min']:.3f} s cpu, first {row['first_call_s']:.1f} s, +{row['peak_delta_mb']:.0f} MiB",
                flush=True,
            )
        upstream = case_rows["upstream"]
        rows.append(upstream)
        for impl in args.impls:
            ours = case_rows[impl]
            ours["ratio_vs_upstream"] = ours["wall_s_min"] / upstream["wall_s_min"]
            ours["ratio_median_vs_upstream"] = ours["wall_s_median"] / upstream["wall_s_median"]
            ours["cpu_ratio_vs_upstream"] = ours["cpu_s_min"] / upstream["cpu_s_min"]
            ours["ratio_first_call_vs_upstream"] = ours["first_call_s"] / upstream["wall_s_median"]
            ours["peak_delta_ratio_vs_upstream"] = ours["peak_delta_mb"] / max(upstream["peak_delta_mb"], 1e-9)
            ours["first_loss_rel_diff"] = abs(ours["first_loss"] - upstream["first_loss"]) / abs(upstream["first_loss"])
            rows.append(ours)
    print()
    print_table(rows)
    for r in rows:
        if "ratio_vs_upstream" in r:
            print(
                f"{r['case']} {r['impl']}: ratio {r['ratio_vs_upstream']:.2f} "
                f"(median {r['ratio_median_vs_upstream']:.2f},"
                f" cpu {r['cpu_ratio_vs_upstream']:.2f}), first step {r['first_call_s']:.1f} s (compile "
                f"{r['compile_s']:.1f} s), first loss rel diff {r['first_loss_rel_diff']:.1e}"
            )
    import tensorflow as tf

    path = write_result(
        args.name,
        rows,
        meta={
            "threads": args.threads,
            "timing_env": TIMING_ENV,
            "memory_env": MEMORY_ENV,
            "dtype": "float32",
            "device": "cpu",
            "tensorflow": tf.__version__,
            "demucs_channels": DEMUCS_CHANNELS,
            "step": "forward + loss + backward + Adam step (coupled weight decay)",
            "timing": "wall_s_*: steps after tracing/compilation; compile_s = first_call_s - wall_s_median",
            "total_s": time.time() - started,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
