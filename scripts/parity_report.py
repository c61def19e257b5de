"""Print the parity figures the last test run recorded (``parity_tests/report/*.json``), worst case per stage.

Every ``core_spec.tolerances.check`` call is recorded with its three metrics and the id of its test; this groups
them by suite (the folder under ``parity_tests/``: ``spec``, ``upstream``, ``torch``, ``tf``, ``jax``, ``nnabla``,
``convert``) and (stage, dtype, device), and prints the worst relative error, the worst max-abs error and the
lowest SNR, next to the tolerance from the table. ``--suite torch`` keeps one suite.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core_spec.tolerances import tolerance  # noqa: E402


def _suite(row: dict) -> str:
    parts = row.get("test", "").split("::")[0].split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "parity_tests" else "-"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", help="only this suite (torch, tf, jax, nnabla, spec, upstream, convert)")
    args = parser.parse_args()
    rows = []
    for path in sorted((ROOT / "parity_tests" / "report").glob("*.json")):
        env = path.stem.split("-")[1]
        rows += [dict(r, env=env) for r in json.loads(path.read_text())]
    if not rows:
        raise SystemExit("no recorded parity figures: run 'make test' first")
    groups: dict[tuple[str, str, str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        suite = _suite(r)
        if args.suite in (None, suite):
            groups[(suite, r["env"], r["stage"], r["dtype"], r["device"])].append(r)
    head = f"{'suite':<9}{'env':<6}{'stage':<25}{'dtype':<9}{'dev':<5}{'n':>4}"
    print(head + f"{'worst rel':>12}{'worst abs':>12}{'min SNR dB':>12}  tolerance")
    for (suite, env, stage, dtype, device), rs in sorted(groups.items()):
        rel = max(r["rel"] for r in rs)
        mab = max(r["max_abs"] for r in rs)
        snr = min(r["snr_db"] for r in rs)
        failed = sum(not r["ok"] for r in rs)
        flag = f"  ({failed} FAILED)" if failed else ""
        tol = tolerance(stage, dtype, device).describe()
        print(
            f"{suite:<9}{env:<6}{stage:<25}{dtype:<9}{device:<5}{len(rs):>4}{rel:>12.2e}{mab:>12.2e}{snr:>12.1f}"
            f"  {tol}{flag}"
        )


if __name__ == "__main__":
    main()
