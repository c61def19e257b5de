"""A port's Demucs ``apply_model`` at an earlier commit against the working tree, in one run on the same input.

Issue 16 asks that NNabla be "at least not slower than before": a ratio against upstream from an earlier run is
no answer (other machine load, other upstream settings), so this script times both versions of the code side by
side. The earlier commit is checked out in a temporary ``git worktree``; each version runs in its own fresh
process (its own ``core_spec``, seeded weights ``core_spec.seeded.random_weights(seed=0)`` at the pretrained shapes,
the same NumPy input), the two alternating ``--rounds`` times so that a change of load hits both alike. The
outputs are compared bit for bit.

Usage: ``python -m benchmarks versus_commit --commit 4adb66a --framework nnabla [--seconds 10] [--rounds 2]``;
writes ``benchmarks/results/versus_<commit>_<framework>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, ROOT, machine_info
from core_spec.frameworks import framework
from unmix.environments import nnabla_env, nnabla_python

# run in each tree, with that tree's own packages: argv = input.npy output.npy calls
CHILD = """
import sys, time
import numpy as np
import {package} as port
from core_spec.configs import demucs_preset
from core_spec.seeded import random_weights
cfg = demucs_preset("demucs")
weights = random_weights(cfg, seed=0)
build = getattr(port, "from_canonical", None)
if build is None:  # before the issue-15 refactor the builder lived in weights.py
    from {package}.weights import from_canonical as build
model = build(cfg, weights)
del weights
mix = np.load(sys.argv[1])
if "{package}" == "umx_torch":
    import torch
    torch.set_num_threads(2)
    mix = torch.from_numpy(mix)
out = None
times = []
for _ in range(int(sys.argv[3]) + 1):  # the first call is the warm-up
    start = time.perf_counter()
    out = np.asarray(port.apply_model(model, mix, shifts=0, split=True))
    times.append(time.perf_counter() - start)
np.save(sys.argv[2], out)
print(" ".join(f"{{t:.4f}}" for t in times[1:]))
"""


def _run(tree: Path, fw: str, mix: Path, out: Path, calls: int) -> list[float]:
    python = str(nnabla_python()) if fw == "nnabla" else sys.executable
    env = {**nnabla_env(), "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}  # only that tree's packages
    code = CHILD.format(package=framework(fw).package)
    done = subprocess.run(
        [python, "-c", code, str(mix), str(out), str(calls)], cwd=tree, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"{tree}: the {fw} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return [float(t) for t in done.stdout.split()[-calls:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks versus_commit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--framework", default="nnabla", choices=["torch", "tf", "jax", "nnabla"])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of (seeded Gaussian) stereo input")
    parser.add_argument("--rounds", type=int, default=2, help="alternations old / new")
    parser.add_argument("--calls", type=int, default=2, help="timed calls per process, after one warm-up")
    args = parser.parse_args(argv)

    commit = subprocess.run(
        ["git", "rev-parse", "--short=10", args.commit], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    times: dict[str, list[float]] = {"before": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        old = work / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), commit], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            mix = work / "mix.npy"
            rng = np.random.default_rng(0)
            np.save(mix, rng.standard_normal((2, int(args.seconds * 44100))).astype(np.float32))
            for _ in range(args.rounds):
                times["before"] += _run(old, args.framework, mix, work / "before.npy", args.calls)
                times["now"] += _run(ROOT, args.framework, mix, work / "now.npy", args.calls)
            before, now = np.load(work / "before.npy"), np.load(work / "now.npy")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    result = {
        "framework": args.framework,
        "commit_before": commit,
        "seconds_of_audio": args.seconds,
        "times_s": times,
        "min_s": {k: min(v) for k, v in times.items()},
        "ratio_now_vs_before": min(times["now"]) / min(times["before"]),
        "max_abs_diff": float(np.max(np.abs(before - now))),
        "machine": machine_info(),
    }
    path = RESULTS_DIR / f"versus_{commit}_{args.framework}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{args.framework} Demucs apply_model {args.seconds:g} s: before ({commit}) min "
        f"{result['min_s']['before']:.2f} s, now min {result['min_s']['now']:.2f} s, "
        f"ratio now/before {result['ratio_now_vs_before']:.3f}; "
        f"outputs max |diff| {result['max_abs_diff']:.2e}; {path.relative_to(ROOT)}"
    )
    return 0
