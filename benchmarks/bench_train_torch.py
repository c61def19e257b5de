"""Training-step speed and memory of the PyTorch port against the upstream code, in one run on the same batch.

One training step = forward, loss, backward and one ``torch.optim.Adam`` step (the recipe's lr and weight decay),
float32, CPU, ``torch.set_num_threads(2)``, models in train mode, seeded weights and batch:

- ``umx_train_step``: one Open-Unmix target at umxhq shapes (8.9 M parameters), batch 16 of 6-s stereo excerpts
  (264,600 samples, 255 un-centred STFT frames of 4096 / 1024), MSE on magnitudes, LSTM dropout 0.4 (as upstream).
  Upstream: ``openunmix.model.OpenUnmix`` behind ``openunmix.transforms.TorchSTFT(center=False)`` +
  ``ComplexNorm``; ours: ``umx_torch.OpenUnmix`` through ``umx_torch.train.train_step``.
- ``demucs_train_step``: Demucs v2 at ``channels=16`` (depth 6, resampling, GLU, 2-layer BLSTM: 16.6 M parameters),
  batch 4 of ``valid_length(2 s)`` samples of 4 sources, L1 on the centre-trimmed sources.
  Upstream: ``demucs.model.Demucs`` of demucs 2.0.3; ours: ``umx_torch.Demucs`` through ``train_step``.

Timing: one fresh interpreter per case holds both implementations and steps them alternately (a warm-up round,
then ``--repeats`` rounds, the order swapped every round): wall time (min, median) and process CPU time. Memory: one
fresh interpreter per (case, implementation): the resident memory its first step adds on top of the built model.
The losses of the first step of both implementations are compared (relative difference; for UMX up to the LSTM
dropout masks, drawn from the same seeded torch generator).

Results: ``benchmarks/results/train_torch.json`` (rows in :mod:`benchmarks.common`'s format, ratio = ours /
upstream). Usage: ``python -m benchmarks.bench_train_torch [--cases ...] [--repeats N] [--batch B] [--seconds S]``.
"""

from __future__ import annotations

import argparse
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
IMPLS = ("upstream", "umx_torch")
THREADS = int(os.environ.get("UNMIX_BENCH_THREADS", "2"))
DEFAULTS = {"umx_train_step": {"batch": 16, "seconds": 6.0}, "demucs_train_step": {"batch": 4, "seconds": 2.0}}
DEMUCS_CHANNELS = 16


def _batch(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _setup(case: str, impl: str, batch: int, seconds: float) -> tuple[Any, Any]:
    """``(step, model)``: a callable doing one training step (returns the loss), and the model it trains."""
    import torch

    from core_spec.seeded import random_weights
    from core_spec.training import DemucsTrainConfig, UMXTrainConfig
    from parity_tests import oracle
    from umx_torch import Demucs, OpenUnmix, load_weights
    from umx_torch.train import make_optimizer, train_step, train_stft

    torch.manual_seed(0)
    if case == "umx_train_step":
        from core_spec.configs import umx_preset

        cfg = umx_preset("umxhq").model
        recipe = UMXTrainConfig(batch_size=batch, seq_dur=seconds)
        stft_cfg = train_stft(cfg, center=False)
        weights = random_weights(cfg, seed=0)
        length = int(seconds * 44100)
        x = torch.from_numpy(_batch((batch, 2, length), 1))
        y = torch.from_numpy(_batch((batch, 2, length), 2))
        if impl == "upstream":
            from openunmix.transforms import ComplexNorm, make_filterbanks

            model = oracle.umx_model(cfg, weights, torch.float32).train()
            stft, _ = make_filterbanks(n_fft=stft_cfg.n_fft, n_hop=stft_cfg.n_hop, sample_rate=44100.0)
            encoder = torch.nn.Sequential(stft, ComplexNorm(mono=False))
            optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)

            def step() -> float:  # upstream scripts/train.py
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(encoder(x)), encoder(y))
                loss.backward()
                optimizer.step()
                return loss.item()

            return step, model
        model = OpenUnmix.from_config(cfg)
        load_weights(model, weights)
        optimizer = make_optimizer(model, recipe)
        return (lambda: train_step(model, optimizer, (x, y), recipe, stft_cfg)), model

    if case == "demucs_train_step":
        import dataclasses

        from core_spec.configs import demucs_preset

        cfg = dataclasses.replace(demucs_preset("demucs"), channels=DEMUCS_CHANNELS)
        recipe = DemucsTrainConfig(batch_size=batch)
        weights = random_weights(cfg, seed=0)
        length = Demucs.from_config(cfg).valid_length(int(seconds * 44100))
        sources = torch.from_numpy(_batch((batch, len(cfg.sources), 2, length), 3))
        if impl == "upstream":
            from demucs.utils import center_trim

            model = oracle.demucs_model(cfg, weights, torch.float32).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
            criterion = torch.nn.L1Loss()

            def step() -> float:  # demucs/train.py
                estimates = model(sources.sum(dim=1))
                loss = criterion(estimates, center_trim(sources, estimates))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                return loss.item()

            return step, model
        model = Demucs.from_config(cfg)
        load_weights(model, weights)
        optimizer = make_optimizer(model, recipe)
        return (lambda: train_step(model, optimizer, sources, recipe)), model
    raise ValueError(f"unknown case {case!r}")


def memory_worker(case: str, impl: str, batch: int, seconds: float) -> dict[str, Any]:
    """One (case, implementation) in a fresh process: the peak memory its first step adds, and that step's loss."""
    import torch

    torch.set_num_threads(THREADS)
    step, model = _setup(case, impl, batch, seconds)
    loss, memory = measure_peak_rss(step)
    params = sum(p.numel() for p in model.parameters())
    return {"case": case, "impl": impl, "first_loss": loss, "parameters": params, **memory}


def timing_worker(case: str, batch: int, seconds: float, repeats: int) -> dict[str, dict[str, Any]]:
    """Both implementations of a case in one process, stepped alternately (one warm-up round, then ``repeats``
    rounds, the order swapped every round), so that a machine's changing load hits both alike."""
    import torch

    torch.set_num_threads(THREADS)
    steps = {impl: _setup(case, impl, batch, seconds)[0] for impl in IMPLS}
    wall: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    cpu: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for round_ in range(repeats + 1):
        for impl in IMPLS if round_ % 2 == 0 else IMPLS[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[impl]()
            if round_:  # round 0 is the warm-up
                wall[impl].append(time.perf_counter() - start)
                cpu[impl].append(time.process_time() - start_cpu)
    return {
        impl: {
            "wall_s_min": min(wall[impl]),
            "wall_s_median": float(np.median(wall[impl])),
            "wall_s_all": wall[impl],
            "cpu_s_min": min(cpu[impl]),
            "cpu_s_all": cpu[impl],
        }
        for impl in IMPLS
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per implementation after a warm-up")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size of every case")
    parser.add_argument("--seconds", type=float, default=None, help="override the excerpt length of every case")
    parser.add_argument("--name", default="train_torch", help="result file benchmarks/results/<name>.json")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads (default 2)")
    args = parser.parse_args(argv)
    os.environ["UNMIX_BENCH_THREADS"] = str(args.threads)  # read by the worker processes

    rows = []
    started = time.time()
    for case in args.cases:
        batch = args.batch or DEFAULTS[case]["batch"]
        seconds = args.seconds or DEFAULTS[case]["seconds"]
        timings = run_isolated(
            "benchmarks.bench_train_torch:timing_worker",
            env=TIMING_ENV,
            case=case,
            batch=batch,
            seconds=seconds,
            repeats=args.repeats,
        )
        case_rows = {}
        for impl in IMPLS:
            memory = run_isolated(
                "benchmarks.bench_train_torch:memory_worker",
                env=MEMORY_ENV,
                case=case,
                impl=impl,
                batch=batch,
                seconds=seconds,
            )
            case_rows[impl] = {**memory, **timings[impl], "batch": batch, "seconds": seconds, "repeats": args.repeats}
            print(
                f"  {case:<18} {impl:<10} {timings[impl]['wall_s_min']:.3f} s wall (min of {args.repeats}), "
                f"{timings[impl]['cpu_s_min']:.3f} s cpu, +{memory['peak_delta_mb']:.0f} MiB",
                flush=True,
            )
        ours, upstream = case_rows["umx_torch"], case_rows["upstream"]
        ours["ratio_vs_upstream"] = ours["wall_s_min"] / upstream["wall_s_min"]
        ours["ratio_median_vs_upstream"] = ours["wall_s_median"] / upstream["wall_s_median"]
        ours["cpu_ratio_vs_upstream"] = ours["cpu_s_min"] / upstream["cpu_s_min"]
        ours["peak_delta_ratio_vs_upstream"] = ours["peak_delta_mb"] / max(upstream["peak_delta_mb"], 1e-9)
        ours["first_loss_rel_diff"] = abs(ours["first_loss"] - upstream["first_loss"]) / abs(upstream["first_loss"])
        rows += [upstream, ours]
    print()
    print_table(rows)
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
            "demucs_channels": DEMUCS_CHANNELS,
            "step": "forward + loss + backward + Adam step",
            "total_s": time.time() - started,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
