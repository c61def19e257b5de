"""The upstream rows of ``benchmarks/bench_nnabla.py``: run in the MAIN environment (torch, openunmix, demucs).

``bench_nnabla.py`` (NNabla environment) starts this script as a subprocess with the same case definitions
(``bench_nnabla.CASES``) and reads back what it writes: the timings as JSON, and as ``.npz`` the input of every
case (the stempeg example's stems summed and tiled, which the NNabla environment cannot decode) and upstream's
output (to check that both computed the same thing)::

    .venv/bin/python benchmarks/bench_nnabla_upstream.py --json OUT.json --npz OUT.npz [--cases a,b] ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_nnabla import CASES, Case, demucs_setup, timed, umx_setup  # noqa: E402


def music(seconds: float, rate: int = 44100) -> np.ndarray:
    """``(2, seconds * rate)`` float32: the stempeg example's four stems summed, tiled to the length."""
    from parity_tests.real_clip import load_clip

    clip = load_clip()
    assert clip.rate == rate
    length = int(seconds * rate)
    reps = math.ceil(length / clip.mixture.shape[-1])
    return np.ascontiguousarray(np.tile(clip.mixture, (1, reps))[:, :length], dtype=np.float32)


def run_upstream(case: Case, audio: np.ndarray, repeats: int) -> tuple[dict, np.ndarray]:
    """Timings and output of the upstream implementation on ``case``."""
    from parity_tests import oracle
    from parity_tests.oracle import torch

    if case.kind == "umx":
        config, weights = umx_setup(case)
        separator = oracle.umx_separator(config, weights, torch.float32)
        x = torch.from_numpy(audio[None])

        def call():
            return separator(x)[0]

    else:
        from demucs.utils import apply_model

        config, weights = demucs_setup(case)
        model = oracle.demucs_model(config, weights, torch.float32)
        del weights
        x = torch.from_numpy(audio)

        def call():
            return apply_model(model, x, shifts=0, split=True, overlap=0.25)

    with torch.no_grad():
        timing, out = timed(call, repeats)
    return timing, out.numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--npz", required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--umx-seconds", type=float, default=None)
    parser.add_argument("--demucs-seconds", type=float, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)

    from importlib.metadata import version

    from parity_tests.oracle import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results, arrays = {}, {}
    for name in args.cases.split(","):
        case = CASES[name].scaled(args.umx_seconds, args.demucs_seconds)
        audio = music(case.seconds)
        timing, out = run_upstream(case, audio, args.repeats)
        results[name] = timing
        arrays[f"{name}.input"], arrays[f"{name}.output"] = audio, out
        print(f"  {name:<22} upstream   {timing['wall_s_min']:.2f} s wall (min of {args.repeats})", file=sys.stderr)
    info = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "openunmix": version("openunmix"),
        "demucs": version("demucs"),
        "python": sys.version.split()[0],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.json).write_text(json.dumps({"versions": info, "cases": results}, indent=1))
    np.savez(args.npz, **arrays)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
