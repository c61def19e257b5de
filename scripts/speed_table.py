"""Write README.md's speed table from a benchmark run's ``benchmarks/results/latest.json`` (``python -m benchmarks``).

The table replaces what lies between the two marker lines in the README (:data:`BEGIN`, :data:`END`); nothing else
changes. Cells: the port's wall time over upstream's measured in the same run, and in brackets its peak resident
memory over upstream's. A quick run (``--quick``: seconds-long inputs) is refused unless ``--allow-quick``.

Usage::

    python scripts/speed_table.py [--json benchmarks/results/latest.json] [--readme README.md] [--check]

``--check``: exit 1 if the README's table differs from the JSON's (writes nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core_spec.files import atomic_write  # noqa: E402

BEGIN = "<!-- speed-table: begin (scripts/speed_table.py writes this from benchmarks/results/latest.json) -->"
END = "<!-- speed-table: end -->"
PORTS = ("torch", "tf", "tf_graph", "tf_xla", "jax", "nnabla")  # in this order, those the run has


def _order(impl: str) -> int:
    order = ("upstream", *PORTS)
    return order.index(impl) if impl in order else len(order)


def _cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return ""
    if "error" in row:
        return "failed"
    if row.get("ratio_vs_upstream") is None:
        return ""
    return f"{row['ratio_vs_upstream']:.2f} ({row['peak_rss_ratio_vs_upstream']:.2f})"


def table(doc: Mapping[str, Any]) -> str:
    """The Markdown between the markers: the main workloads' ratios, the length sweep, the run's provenance."""
    rows = {(r["point"], r["impl"]): r for r in doc["rows"]}
    impls = [p for p in PORTS if any(r["impl"] == p for r in doc["rows"])]
    labels = {k: f"`{doc['implementations'][k]['label']}`" for k in impls}
    lines = [
        "| workload | upstream (s) | " + " | ".join(labels[k] for k in impls) + " |",
        "|---|---:|" + "---:|" * len(impls),
    ]
    for name in doc["plan"]["main"]:
        up = rows.get((name, "upstream"))
        label = next((r["label"] for r in doc["rows"] if r["point"] == name), name)
        seconds = "" if up is None or "error" in up else f"{up['wall_s_min']:.2f}"
        lines.append(f"| {label} | {seconds} | " + " | ".join(_cell(rows.get((name, k))) for k in impls) + " |")
    sweep_parts = []
    for model in sorted(doc["sweeps"], key=lambda m: m != "umx"):
        sweep = doc["sweeps"][model]
        entries = []
        for impl in sorted(sweep["implementations"], key=_order):
            v = sweep["implementations"][impl]
            growth = v["time_relative_to_shortest"][-1]
            mark = "" if v["linear_time"] else " (not linear)"
            entries.append(f"{doc['implementations'][impl]['label']} {growth:.2f}{mark}")
        if entries:
            seconds = sweep["implementations"][next(iter(sweep["implementations"]))]["seconds"]
            titles = {"umx": "UMX separator niter 1", "htdemucs": "HTDemucs `apply_model`"}
            title = titles.get(model, "Demucs `apply_model`")
            sweep_parts.append(f"{title}, {seconds[-1]:g} s vs {seconds[0]:g} s: " + ", ".join(entries))
    meta = doc["meta"]
    machine = meta["machine_start"]
    cpu = machine.get("cpu", machine.get("processor"))
    commit = meta.get("git", {}).get("commit", "?")[:10]
    lines += [
        "",
        "Cells: wall time / upstream's (min of the timed calls after the warm-up; TF and JAX compile time excluded), "
        "in brackets peak resident memory / upstream's; both measured in the same run on the same input.",
    ]
    if sweep_parts:
        lines += ["", "Length sweep, time per second of audio at the longest length over the shortest's: "]
        lines[-1] += "; ".join(sweep_parts) + "."
    lines += [
        "",
        f"`python -m benchmarks`, {doc['created'][:10]}, commit {commit}, {cpu} ({machine.get('cpu_count')} cores), "
        f"{doc['settings']['threads']} threads, float32, "
        f"{meta['total_s'] / 60:.0f} min; every figure in `benchmarks/results/latest.md`.",
    ]
    return "\n".join(lines)


def replace(readme: str, body: str) -> str:
    """``readme`` with ``body`` between the markers.

    Raises:
        ValueError: a marker is missing, repeated, or the end comes first.
    """
    lines = readme.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(
            f"the README needs exactly one line {BEGIN!r} followed by one line {END!r} "
            f"(found {len(begins)} begin and {len(ends)} end markers)"
        )
    return "".join(lines[: begins[0] + 1]) + body.rstrip("\n") + "\n" + "".join(lines[ends[0] :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is not the JSON's")
    parser.add_argument("--allow-quick", action="store_true", help="accept a --quick run (for tests)")
    args = parser.parse_args(argv)
    if not args.json.exists():
        print(
            f"speed_table: {args.json} does not exist: run 'python -m benchmarks' (make bench) first", file=sys.stderr
        )
        return 2
    doc = json.loads(args.json.read_text())
    if doc.get("quick") and not args.allow_quick:
        print(f"speed_table: {args.json} is a --quick run (seconds-long inputs): its figures do not belong in the "
              "README; run the full benchmark", file=sys.stderr)  # fmt: skip
        return 2
    readme = args.readme.read_text()
    try:
        updated = replace(readme, table(doc))
    except ValueError as e:
        print(f"speed_table: {args.readme}: {e}", file=sys.stderr)
        return 2
    if args.check:
        if updated != readme:
            print(f"speed_table: {args.readme}'s speed table is not the one of {args.json}", file=sys.stderr)
            return 1
        return 0
    if updated != readme:
        atomic_write(args.readme, lambda tmp: Path(tmp).write_text(updated))
        print(f"wrote the speed table of {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
