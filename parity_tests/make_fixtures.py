"""Regenerate every committed fixture from the upstream code: ``make fixtures`` (main environment, needs torch).

Each ``parity_tests/fixtures_*.py`` module runs one upstream package on seeded inputs and ``random_weights`` in
float64 and float32 and writes per-stage outputs to ``parity_tests/fixtures/*.npz`` with the versions it ran.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script, this folder would be sys.path[0] and its test packages (torch/, nnabla/) would shadow the real
# frameworks: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from parity_tests.fixtures import FIXTURE_DIR  # noqa: E402

# 20 MiB for Open-Unmix and Demucs v2, 10 MiB more for HTDemucs (demucs 4.1.0: two small models traced at every
# stage, the frequency decoders' outputs being the largest; two released-shape outputs; four apply_model runs),
# 1.5 MiB more for HTDemucs's training step (train_htdemucs.npz: weights, gradients, two Adam steps in float64)
BUDGET_BYTES = int(31.5 * 1024 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=("umx", "demucs", "htdemucs", "train"), help="regenerate one family only")
    args = parser.parse_args()
    written: list[Path] = []
    if args.only in (None, "umx"):
        from parity_tests import fixtures_umx

        written += fixtures_umx.make()
    if args.only in (None, "demucs"):
        from parity_tests import fixtures_demucs

        written += fixtures_demucs.make()
    if args.only in (None, "htdemucs"):
        from parity_tests import fixtures_htdemucs

        written += fixtures_htdemucs.make()
    if args.only in (None, "train"):
        from parity_tests import fixtures_htdemucs_train, fixtures_train

        written += fixtures_train.make()
        written += fixtures_htdemucs_train.make()
    for path in written:
        print(f"wrote {path.relative_to(FIXTURE_DIR.parent.parent)} ({path.stat().st_size / 1e6:.2f} MB)")
    total = sum(p.stat().st_size for p in FIXTURE_DIR.glob("*.npz"))
    print(f"fixtures: {total / 1e6:.2f} MB in total (budget {BUDGET_BYTES / 1e6:.0f} MB)")
    if total > BUDGET_BYTES:
        raise SystemExit("fixtures exceed their budget: shorten the cases")


if __name__ == "__main__":
    main()
