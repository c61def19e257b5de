"""Training-step speed and memory of the NNabla port against the upstream code, measured in the same run.

Runs in the NNabla environment; the upstream rows come from this same file started in the main environment
(``.venv``, torch + openunmix + demucs) as a subprocess, as ``bench_nnabla.py`` does::

    .venv-nnabla/bin/python -m benchmarks.bench_train_nnabla [--cases ...] [--repeats N] [--batch B] [--seconds S]

One training step = forward, loss, backward and one Adam step (the recipe's lr and weight decay), float32, CPU,
models in train mode, seeded weights (``core_spec.seeded.random_weights``) and the same seeded batch on both sides.
The cases are ``bench_train_torch.py``'s:

- ``umx_train_step``: one Open-Unmix target at umxhq shapes (8.9 M parameters), batch 16 of 6-s stereo excerpts
  (264,600 samples, 255 un-centred STFT frames of 4096 / 1024), MSE on magnitudes, LSTM dropout 0.4 (as upstream).
  Upstream: ``openunmix.model.OpenUnmix`` behind ``TorchSTFT(center=False)`` + ``ComplexNorm``, ``torch.optim.Adam``;
  ours: :class:`umx_nnabla.train.UMXStep` (NumPy FFT magnitudes, the NNabla graph forward and backward) and
  :class:`umx_nnabla.train.TorchAdam`.
- ``demucs_train_step``: Demucs v2 at ``channels=16`` (depth 6, resampling, GLU, 2-layer BLSTM), batch 4 of
  ``valid_length(5 s)`` samples of 4 sources, L1 on the centre-trimmed sources; ours: :class:`DemucsStep`.

Per side and case, a fresh interpreter: the first step (NNabla: includes building the graph; its peak resident
memory above the built model is recorded), then ``--repeats`` timed steps (wall and process CPU time). Upstream
runs with ``--upstream-threads`` torch threads (default 1: NNabla's CPU kernels are single-threaded; 0: torch's
default). The first step's losses of both sides are compared (UMX: up to the dropout masks). ``ratio_vs_upstream``
= ours / upstream (``wall_s_min``), also for CPU time and the first step.

Results: ``benchmarks/results/train_nnabla.json`` (rows in :mod:`benchmarks.common`'s format).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import MEMORY_ENV, TIMING_ENV, measure_peak_rss, print_table, run_isolated, write_result  # noqa: E402

MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
CASES = ("umx_train_step", "demucs_train_step")
DEFAULTS = {"umx_train_step": {"batch": 16, "seconds": 6.0}, "demucs_train_step": {"batch": 4, "seconds": 5.0}}
DEMUCS_CHANNELS = 16


def _batch(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _case_data(case: str, batch: int, seconds: float) -> dict[str, Any]:
    """Config, recipe, seeded weights and batch of a case (framework-neutral)."""
    from core_spec.configs import demucs_preset, umx_preset
    from core_spec.seeded import random_weights
    from core_spec.shapes import valid_length
    from core_spec.training import DemucsTrainConfig, UMXTrainConfig

    if case == "umx_train_step":
        config = umx_preset("umxhq").model
        length = int(seconds * 44100)
        return {
            "config": config,
            "recipe": UMXTrainConfig(batch_size=batch, seq_dur=seconds),
            "weights": random_weights(config, seed=0),
            "batch": (_batch((batch, 2, length), 1), _batch((batch, 2, length), 2)),
        }
    if case == "demucs_train_step":
        config = dataclasses.replace(demucs_preset("demucs"), channels=DEMUCS_CHANNELS)
        length = valid_length(int(seconds * 44100), config)
        return {
            "config": config,
            "recipe": DemucsTrainConfig(batch_size=batch),
            "weights": random_weights(config, seed=0),
            "batch": _batch((batch, len(config.sources), 2, length), 3),
        }
    raise ValueError(f"unknown case {case!r}")


def _timed(step: Callable[[], float], repeats: int) -> dict[str, Any]:
    """The first step (time, CPU time, the peak memory it adds, its loss), then ``repeats`` timed steps."""
    start, start_cpu = time.perf_counter(), time.process_time()
    loss, memory = measure_peak_rss(step)
    first, first_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "first_loss": float(loss),
        "first_call_s": first,
        "first_call_cpu_s": first_cpu,
        "wall_s_min": min(wall or [first]),
        "wall_s_median": float(np.median(wall or [first])),
        "wall_s_all": wall,
        "cpu_s_min": min(cpu or [first_cpu]),
        "cpu_s_all": cpu,
        "repeats": repeats,
        **memory,
    }


# --- NNabla side (this environment) -----------------------------------------------------------------------------


def nnabla_worker(case: str, batch: int, seconds: float, repeats: int) -> dict[str, Any]:
    """One case in a fresh NNabla process: build the model, time its training steps."""
    import nnabla as nn

    from umx_nnabla import train
    from umx_nnabla.build import from_canonical

    data = _case_data(case, batch, seconds)
    nn.seed(0)
    model = from_canonical(data["config"], data["weights"])
    recipe = data["recipe"]
    step = train.make_step(model, recipe)  # UMX: dropout 0.4, as upstream
    step.graph(train._batch_shape(step, data["batch"], recipe))  # the LSTMs' trainable biases exist from here
    optimizer = train.make_optimizer(model, recipe)

    def one_step() -> float:
        optimizer.zero_grad()
        loss = step(data["batch"], recipe)
        optimizer.step()
        return loss

    row = _timed(one_step, repeats)
    row["parameters"] = int(sum(v.size for v in train.trainable_parameters(model).values()))
    return row


# --- upstream side (main environment, started as a subprocess) -------------------------------------------------


def upstream_worker(case: str, batch: int, seconds: float, repeats: int, threads: int) -> dict[str, Any]:
    """One case of upstream's training step (openunmix 1.3.0 / demucs 2.0.3 on torch), in the main environment."""
    import torch

    from parity_tests import oracle

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = _case_data(case, batch, seconds)
    recipe = data["recipe"]
    if case == "umx_train_step":
        from openunmix.transforms import ComplexNorm, make_filterbanks

        model = oracle.umx_model(data["config"], data["weights"], torch.float32).train()
        stft, _ = make_filterbanks(n_fft=4096, n_hop=1024, sample_rate=44100.0)  # center=False, as scripts/train.py
        encoder = torch.nn.Sequential(stft, ComplexNorm(mono=False))
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        x, y = (torch.from_numpy(a) for a in data["batch"])

        def step() -> float:  # upstream scripts/train.py
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(encoder(x)), encoder(y))
            loss.backward()
            optimizer.step()
            return loss.item()

    else:
        from demucs.utils import center_trim

        model = oracle.demucs_model(data["config"], data["weights"], torch.float32).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        criterion = torch.nn.L1Loss()
        sources = torch.from_numpy(data["batch"])

        def step() -> float:  # demucs/train.py
            estimates = model(sources.sum(dim=1))
            loss = criterion(estimates, center_trim(sources, estimates))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss.item()

    row = _timed(step, repeats)
    row["parameters"] = int(sum(p.numel() for p in model.parameters()))
    row["torch_threads"] = torch.get_num_threads()
    return row


def _upstream_versions() -> dict[str, str]:
    from importlib.metadata import version

    import torch

    return {"torch": torch.__version__, "openunmix": version("openunmix"), "demucs": version("demucs")}


def run_upstream(case: str, batch: int, seconds: float, repeats: int, threads: int) -> dict[str, Any]:
    """:func:`upstream_worker` in a fresh main-environment interpreter (``.venv``)."""
    if not MAIN_PYTHON.exists():
        raise SystemExit(f"the upstream rows need the main environment ({MAIN_PYTHON}); run 'make setup'")
    with tempfile.TemporaryDirectory(prefix="bench-train-nnabla-") as tmp:
        out = Path(tmp) / "up.json"
        cmd = [str(MAIN_PYTHON), "-m", "benchmarks.bench_train_nnabla", "--upstream-worker", str(out), "--cases", case]
        cmd += ["--batch", str(batch), "--seconds", str(seconds), "--repeats", str(repeats)]
        cmd += ["--upstream-threads", str(threads)]
        env = {**os.environ, **MEMORY_ENV, **TIMING_ENV, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        return json.loads(out.read_text())


# --- the run -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the first one")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size of every case")
    parser.add_argument("--seconds", type=float, default=None, help="override the excerpt length of every case")
    parser.add_argument("--upstream-threads", type=int, default=1, help="torch threads upstream (0: torch's default)")
    parser.add_argument("--no-upstream", action="store_true", help="NNabla rows only")
    parser.add_argument("--name", default="train_nnabla", help="result file benchmarks/results/<name>.json")
    parser.add_argument("--upstream-worker", metavar="JSON", help=argparse.SUPPRESS)  # main environment only
    args = parser.parse_args(argv)

    if args.upstream_worker:  # the subprocess in the main environment
        case = args.cases[0]
        row = upstream_worker(case, args.batch, args.seconds, args.repeats, args.upstream_threads)
        row["versions"] = _upstream_versions()
        Path(args.upstream_worker).write_text(json.dumps(row))
        return 0

    import nnabla

    rows: list[dict[str, Any]] = []
    started = time.time()
    versions: dict[str, str] = {}
    for case in args.cases:
        batch = args.batch or DEFAULTS[case]["batch"]
        seconds = args.seconds or DEFAULTS[case]["seconds"]
        common = {"case": case, "batch": batch, "seconds": seconds}
        theirs = None
        if not args.no_upstream:
            theirs = {**common, "impl": "upstream", **run_upstream(case, batch, seconds, args.repeats,
                                                                   args.upstream_threads)}  # fmt: skip
            versions = theirs.pop("versions")
            rows.append(theirs)
            print(f"  {case:<18} upstream   {theirs['wall_s_min']:.3f} s wall", file=sys.stderr, flush=True)
        env = {**MEMORY_ENV, **TIMING_ENV}
        ours = {**common, "impl": "umx_nnabla"}
        ours.update(run_isolated("benchmarks.bench_train_nnabla:nnabla_worker", env=env, case=case, batch=batch,
                                 seconds=seconds, repeats=args.repeats))  # fmt: skip
        if theirs is not None:
            ours["ratio_vs_upstream"] = ours["wall_s_min"] / theirs["wall_s_min"]
            ours["ratio_median_vs_upstream"] = ours["wall_s_median"] / theirs["wall_s_median"]
            ours["cpu_ratio_vs_upstream"] = ours["cpu_s_min"] / theirs["cpu_s_min"]
            ours["first_call_ratio_vs_upstream"] = ours["first_call_s"] / theirs["first_call_s"]
            ours["peak_delta_ratio_vs_upstream"] = ours["peak_delta_mb"] / max(theirs["peak_delta_mb"], 1e-9)
            ours["first_loss_rel_diff"] = abs(ours["first_loss"] - theirs["first_loss"]) / abs(theirs["first_loss"])
        rows.append(ours)
        shown = f"ratio {ours['ratio_vs_upstream']:.2f}" if theirs is not None else ""
        print(f"  {case:<18} umx_nnabla {ours['wall_s_min']:.3f} s wall {shown}", file=sys.stderr, flush=True)
    print_table(rows)
    path = write_result(
        args.name,
        rows,
        meta={
            "device": "cpu",
            "dtype": "float32",
            "nnabla": nnabla.__version__,
            "upstream": versions,
            "upstream_threads": args.upstream_threads,
            "demucs_channels": DEMUCS_CHANNELS,
            "step": "forward + loss + backward + Adam step (ours: TorchAdam, torch's update in NumPy)",
            "notes": "NNabla's CPU extension runs single-threaded Eigen kernels; its first step builds the graph "
            "(one node per LSTM time step, forward and backward). UMX losses differ by the dropout masks.",
            "memory_env": MEMORY_ENV,
            "timing_env": TIMING_ENV,
            "total_s": time.time() - started,
        },
    )
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
