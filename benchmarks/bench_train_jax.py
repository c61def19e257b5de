"""Training-step speed and memory of the JAX port against the upstream code, in one run on the same batch.

One training step = forward, loss, backward and one Adam step (the recipe's lr and coupled weight decay), float32,
CPU, models in train mode, seeded weights and batch; the same cases and shapes as ``bench_train_torch.py``:

- ``umx_train_step``: one Open-Unmix target at umxhq shapes (8.9 M parameters), batch 16 of 6-s stereo excerpts
  (264,600 samples, 255 un-centred STFT frames of 4096 / 1024), MSE on magnitudes, LSTM dropout 0.4.
  Upstream: ``openunmix.model.OpenUnmix`` behind ``openunmix.transforms.TorchSTFT(center=False)`` + ``ComplexNorm``
  and ``torch.optim.Adam``; ours: ``umx_jax.train.Trainer.step`` (STFT, network, loss, gradients and the optax
  update in one ``jax.jit``-compiled function; the batch is copied to the device inside the timed call).
- ``demucs_train_step``: Demucs v2 at ``channels=16`` (depth 6, resampling, GLU, 2-layer BLSTM: 16.6 M parameters),
  batch 4 of ``valid_length(2 s)`` samples of 4 sources, L1 on the centre-trimmed sources.
  Upstream: ``demucs.model.Demucs`` of demucs 2.0.3; ours: ``Trainer.step``.

Timing: one fresh interpreter per case holds both implementations (upstream with ``torch.set_num_threads(2)``, XLA
with its flags below). JAX's first step (trace, XLA compilation, one step) is timed on its own: ``first_call_s``, and
``compile_s = first_call_s - wall_s_median``. Then a warm-up round and ``--repeats`` rounds step the two
alternately, the order swapped every round: wall time (min, median) and process CPU time. Memory: one fresh
interpreter per (case, implementation): the resident memory a step adds on top of the built model (JAX: the step
after compilation, ``peak_delta_mb``; the compiling first step's in ``first_call_peak_delta_mb``). The first
steps' losses are compared (relative difference; for UMX up to the LSTM dropout masks, which the two frameworks
draw differently).

Results: ``benchmarks/results/train_jax.json`` (rows in :mod:`benchmarks.common`'s format, ratio = ours /
upstream). Usage: ``python -m benchmarks.bench_train_jax [--cases ...] [--repeats N] [--batch B] [--seconds S]``.
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
IMPLS = ("upstream", "umx_jax")
THREADS = 2
XLA_FLAGS = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}"
DEFAULTS = {"umx_train_step": {"batch": 16, "seconds": 6.0}, "demucs_train_step": {"batch": 4, "seconds": 2.0}}
DEMUCS_CHANNELS = 16


def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _case(case: str, batch: int, seconds: float) -> tuple[Any, Any, dict[str, np.ndarray], Any]:
    """``(config, recipe, batch arrays, canonical weights)`` of a case (the same for both implementations)."""
    from core_spec.configs import demucs_preset, umx_preset
    from core_spec.seeded import random_weights
    from core_spec.shapes import valid_length
    from core_spec.training import DemucsTrainConfig, UMXTrainConfig

    if case == "umx_train_step":
        cfg = umx_preset("umxhq").model
        recipe = UMXTrainConfig(batch_size=batch, seq_dur=seconds)
        length = int(seconds * 44100)
        arrays = {"x": _noise((batch, 2, length), 1), "y": _noise((batch, 2, length), 2)}
        return cfg, recipe, arrays, random_weights(cfg, seed=0)
    if case == "demucs_train_step":
        cfg = dataclasses.replace(demucs_preset("demucs"), channels=DEMUCS_CHANNELS)
        recipe = DemucsTrainConfig(batch_size=batch)
        length = valid_length(int(seconds * 44100), cfg)
        arrays = {"sources": _noise((batch, len(cfg.sources), 2, length), 3)}
        return cfg, recipe, arrays, random_weights(cfg, seed=0)
    raise ValueError(f"unknown case {case!r}")


def _setup_upstream(case: str, batch: int, seconds: float) -> tuple[Any, int]:
    """``(step, parameters)``: upstream's training step as its training scripts write it."""
    import torch

    from parity_tests import oracle
    from umx_jax.train import train_stft

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cfg, recipe, arrays, weights = _case(case, batch, seconds)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if case == "umx_train_step":
        from openunmix.transforms import ComplexNorm, make_filterbanks

        model = oracle.umx_model(cfg, weights, torch.float32).train()
        fft = train_stft(cfg, center=False)
        stft, _ = make_filterbanks(n_fft=fft.n_fft, n_hop=fft.n_hop, center=False, sample_rate=44100.0)
        encoder = torch.nn.Sequential(stft, ComplexNorm(mono=False))
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        x, y = tensors["x"], tensors["y"]

        def step() -> float:  # openunmix scripts/train.py
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(encoder(x)), encoder(y))
            loss.backward()
            optimizer.step()
            return loss.item()

    else:
        from demucs.utils import center_trim

        model = oracle.demucs_model(cfg, weights, torch.float32).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        criterion = torch.nn.L1Loss()
        sources = tensors["sources"]

        def step() -> float:  # demucs/train.py
            estimates = model(sources.sum(dim=1))
            loss = criterion(estimates, center_trim(sources, estimates))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss.item()

    return step, sum(p.numel() for p in model.parameters())


def _setup_jax(case: str, batch: int, seconds: float) -> tuple[Any, int]:
    """``(step, parameters)``: ``umx_jax.train.Trainer.step`` on the case's batch (NumPy, copied in each call)."""
    from umx_jax.train import Trainer

    cfg, recipe, arrays, weights = _case(case, batch, seconds)
    trainer = Trainer(cfg, weights, recipe, dropout=True, seed=0)
    data = (arrays["x"], arrays["y"]) if "x" in arrays else arrays["sources"]
    return (lambda: trainer.step(data)), sum(int(np.size(v)) for v in trainer.params.values())


def _setup(case: str, impl: str, batch: int, seconds: float) -> tuple[Any, int]:
    return (_setup_upstream if impl == "upstream" else _setup_jax)(case, batch, seconds)


def memory_worker(case: str, impl: str, batch: int, seconds: float) -> dict[str, Any]:
    """One (case, implementation) in a fresh process: the peak memory a step adds, and the first step's loss."""
    if impl == "umx_jax":
        os.environ["XLA_FLAGS"] = XLA_FLAGS
    step, params = _setup(case, impl, batch, seconds)
    loss, memory = measure_peak_rss(step)
    row = {"case": case, "impl": impl, "first_loss": loss, "parameters": params, **memory}
    if impl == "umx_jax":  # the first call compiled: measure a compiled step too
        _, compiled = measure_peak_rss(step)
        row.update({"first_call_peak_delta_mb": memory["peak_delta_mb"], **compiled})
    return row


def timing_worker(case: str, batch: int, seconds: float, repeats: int) -> dict[str, dict[str, Any]]:
    """Both implementations of a case in one process: JAX's compiling first step timed alone, then one warm-up
    round and ``repeats`` rounds stepping the two alternately (order swapped every round)."""
    os.environ["XLA_FLAGS"] = XLA_FLAGS
    steps = {impl: _setup(case, impl, batch, seconds)[0] for impl in IMPLS}
    start = time.perf_counter()
    steps["umx_jax"]()
    first_call = time.perf_counter() - start
    wall: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    cpu: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for round_ in range(repeats + 1):
        for impl in IMPLS if round_ % 2 == 0 else IMPLS[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[impl]()
            if round_:  # round 0 is the warm-up
                wall[impl].append(time.perf_counter() - start)
                cpu[impl].append(time.process_time() - start_cpu)
    out = {
        impl: {
            "wall_s_min": min(wall[impl]),
            "wall_s_median": float(np.median(wall[impl])),
            "wall_s_all": wall[impl],
            "cpu_s_min": min(cpu[impl]),
            "cpu_s_all": cpu[impl],
        }
        for impl in IMPLS
    }
    out["umx_jax"]["first_call_s"] = first_call
    out["umx_jax"]["compile_s"] = first_call - out["umx_jax"]["wall_s_median"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per implementation after a warm-up")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size of every case")
    parser.add_argument("--seconds", type=float, default=None, help="override the excerpt length of every case")
    parser.add_argument("--name", default="train_jax", help="result file benchmarks/results/<name>.json")
    args = parser.parse_args(argv)

    rows = []
    started = time.time()
    for case in args.cases:
        batch = args.batch or DEFAULTS[case]["batch"]
        seconds = args.seconds or DEFAULTS[case]["seconds"]
        timings = run_isolated(
            "benchmarks.bench_train_jax:timing_worker",
            env=TIMING_ENV,
            case=case,
            batch=batch,
            seconds=seconds,
            repeats=args.repeats,
        )
        case_rows = {}
        for impl in IMPLS:
            memory = run_isolated(
                "benchmarks.bench_train_jax:memory_worker",
                env=MEMORY_ENV,
                case=case,
                impl=impl,
                batch=batch,
                seconds=seconds,
            )
            case_rows[impl] = {**memory, **timings[impl], "batch": batch, "seconds": seconds, "repeats": args.repeats}
            compile_note = f", compile {timings[impl]['compile_s']:.1f} s" if "compile_s" in timings[impl] else ""
            print(
                f"  {case:<18} {impl:<10} {timings[impl]['wall_s_min']:.3f} s wall (min of {args.repeats}), "
                f"{timings[impl]['cpu_s_min']:.3f} s cpu, +{memory['peak_delta_mb']:.0f} MiB{compile_note}",
                flush=True,
            )
        ours, upstream = case_rows["umx_jax"], case_rows["upstream"]
        ours["ratio_vs_upstream"] = ours["wall_s_min"] / upstream["wall_s_min"]
        ours["ratio_median_vs_upstream"] = ours["wall_s_median"] / upstream["wall_s_median"]
        ours["cpu_ratio_vs_upstream"] = ours["cpu_s_min"] / upstream["cpu_s_min"]
        ours["peak_delta_ratio_vs_upstream"] = ours["peak_delta_mb"] / max(upstream["peak_delta_mb"], 1e-9)
        ours["first_loss_rel_diff"] = abs(ours["first_loss"] - upstream["first_loss"]) / abs(upstream["first_loss"])
        rows += [upstream, ours]
    print()
    print_table(rows)
    for r in rows:
        if r["impl"] == "umx_jax":
            print(
                f"{r['case']}: ratio {r['ratio_vs_upstream']:.2f} (min), {r['ratio_median_vs_upstream']:.2f} (median), "
                f"compile {r['compile_s']:.1f} s (separate)"
            )
    import jax
    import torch

    path = write_result(
        args.name,
        rows,
        meta={
            "threads": THREADS,
            "xla_flags": XLA_FLAGS,
            "timing_env": TIMING_ENV,
            "memory_env": MEMORY_ENV,
            "dtype": "float32",
            "device": "cpu",
            "jax": jax.__version__,
            "torch": torch.__version__,
            "demucs_channels": DEMUCS_CHANNELS,
            "step": "forward + loss + backward + Adam step (coupled weight decay)",
            "timing": "wall_s_*: steps after compilation; compile_s = first_call_s - wall_s_median",
            "total_s": time.time() - started,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
