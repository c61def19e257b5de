"""``make demo``: separate the real stempeg clip and compare every implementation with the upstream code.

1. Oracle Wiener separation (true source magnitudes in place of the networks, niter 1) of the sum of the clip's
   four stems, by the NumPy reference and by upstream openunmix; the reference's stems are written as WAV files
   under ``--out``; museval SDR per source is printed for each implementation side by side.
2. Demucs: the reference runs a seeded ``demucs_unittest``-shaped model on the clip next to upstream
   demucs 2.0.3; the SNR between the two is printed per source.
3. The ports (``scripts/demo_ports.py``): the Open-Unmix separator (umxhq shapes, seeded weights, niter 1) and
   Demucs in PyTorch, TensorFlow, JAX and NNabla; SNR of each port's stems against upstream's, per stem.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# torch's OpenMP threads spin while they wait; on a shared machine that stalls single calls for seconds
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "scripts"]

from parity_tests import real_clip  # noqa: E402


def _columns() -> dict[str, Callable[[real_clip.Clip, object], np.ndarray]]:
    """Implementation name -> oracle separation ``(nb_sources, nb_channels, nb_timesteps)``."""
    return {
        "reference (NumPy)": real_clip.oracle_reference,
        "upstream openunmix": real_clip.oracle_upstream,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out", help="folder for the separated stems (WAV)")
    parser.add_argument("--no-demucs", action="store_true", help="skip the Demucs line")
    parser.add_argument("--no-ports", action="store_true", help="skip the port columns")
    args = parser.parse_args()

    import soundfile as sf

    clip = real_clip.load_clip()
    seconds = clip.mixture.shape[-1] / clip.rate
    print(
        f"stempeg example: {seconds:.2f} s, {clip.mixture.shape[0]} channels, {clip.rate} Hz (mixture = sum of stems)"
    )
    sep = real_clip.oracle_config(niter=1)

    scores: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    for name, run in _columns().items():
        start = time.perf_counter()
        estimates = run(clip, sep)
        timings[name] = time.perf_counter() - start
        scores[name] = real_clip.sdr_per_source(clip, estimates)
        if name.startswith("reference"):
            args.out.mkdir(parents=True, exist_ok=True)
            for i, source in enumerate(real_clip.STEM_NAMES):
                sf.write(args.out / f"{source}.wav", estimates[i].T, clip.rate, subtype="FLOAT")
            sf.write(args.out / "mixture.wav", clip.mixture.T, clip.rate, subtype="FLOAT")
            print(f"wrote {len(real_clip.STEM_NAMES)} stems and the mixture to {args.out}/")

    names = list(scores)
    width = max(len(n) for n in names) + 2
    print("\nOracle Wiener separation (niter 1), museval SDR in dB (median over 1 s windows)")
    print(f"{'source':<8}" + "".join(f"{n:>{width}}" for n in names))
    for source in real_clip.STEM_NAMES:
        print(f"{source:<8}" + "".join(f"{scores[n][source]:>{width}.4f}" for n in names))
    print(f"{'time s':<8}" + "".join(f"{timings[n]:>{width}.2f}" for n in names))
    ref, up = names[0], "upstream openunmix"
    worst = max(abs(scores[ref][s] - scores[up][s]) for s in real_clip.STEM_NAMES)
    print(f"largest SDR difference reference vs upstream: {worst:.2e} dB")

    if not args.no_demucs:
        demo_demucs = ROOT / "scripts" / "demo_demucs.py"
        if demo_demucs.exists():
            sys.path.insert(0, str(demo_demucs.parent))
            from demo_demucs import demucs_demo

            result = demucs_demo(clip.mixture)
            print("\nDemucs (demucs_unittest shapes, seeded weights), reference vs upstream demucs 2.0.3:")
            for key, value in result.items():
                print(f"  {key}: {value}")

    if not args.no_ports:
        from scripts import demo_ports

        if demo_ports.run(clip.mixture.astype(np.float32)):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
