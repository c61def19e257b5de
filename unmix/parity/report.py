"""The ``unmix-parity`` report: the table per stage (stdout and Markdown), ``parity.json``, ``parity.md``.

Every comparison is a :class:`unmix.parity.stages.Row`; the table shows, per stage and implementation/dtype, the
worst row (lowest SNR) with its three metrics and the tolerance row it is judged by. ``parity.json`` holds every
row, the runs (time, or why an implementation could not run), the model, the audio and the versions; ``parity.md``
the same for people, with the two plots (:mod:`unmix.parity.plots`). NumPy only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core_spec.canonical import atomic_write
from core_spec.configs import config_to_json
from unmix.parity.stages import Row

__all__ = ["FILES", "Report", "format_table", "worst_rows", "write_report"]

FILES = ("parity.json", "parity.md", "parity_snr.png", "parity_worst_stem.png")


@dataclasses.dataclass
class Report:
    """Everything one ``unmix-parity`` run found."""

    model: dict[str, Any]
    audio: dict[str, Any]
    device: str
    dtypes: list[str]
    implementations: list[str]
    stages: list[str]
    rows: list[Row]
    runs: list[dict[str, Any]]
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    command: str = ""
    config: Any = None  # the model's UMXSeparatorConfig / DemucsConfig (in the JSON as core_spec.configs JSON)

    @property
    def failed_rows(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    @property
    def failed_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["error"]]

    @property
    def ok(self) -> bool:
        return not self.failed_rows and not self.failed_runs

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("rows", "config")}
        out["model"] = {**self.model, "config": json.loads(config_to_json(self.config)) if self.config else None}
        out["ok"] = self.ok
        out["rows"] = [r.as_dict() for r in self.rows]
        out["worst"] = [r.as_dict() for r in worst_rows(self.rows, self.stages)]
        return out


def _column(row: Row) -> str:
    return f"{row.implementation} {row.dtype}"


def worst_rows(rows: Sequence[Row], stages: Sequence[str]) -> list[Row]:
    """Per (stage, implementation, dtype): the failed row with the lowest SNR if any failed, else the lowest SNR."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.stage, _column(r)), []).append(r)

    def badness(r: Row) -> tuple[bool, float]:
        return (r.ok, -math.inf if math.isnan(r.snr_db) else r.snr_db)

    order = {s: i for i, s in enumerate(stages)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), k[1]))
    return [min(groups[k], key=badness) for k in keys]


def _num(x: float | None, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return format(x, fmt)


def _bound(r: Row) -> str:
    """The row's bounds, with the bound from upstream's SNR where it applied (else: the absolute floor only)."""
    if r.snr_bound_db is not None:
        return f"{r.tolerance} (upstream {r.upstream_snr_db:.1f} dB: >= {r.snr_bound_db:.1f})"
    if "upstream's" not in r.tolerance:
        return r.tolerance
    return r.tolerance + (
        " (upstream itself: the floor)" if r.implementation == "upstream" else " (no upstream: the floor)"
    )


def format_table(rows: Sequence[Row], stages: Sequence[str], markdown: bool = False) -> str:
    """The worst row per stage and implementation/dtype as a text (or Markdown) table."""
    head = ["stage", "implementation", "worst key", "max abs", "rel", "SNR dB", "tolerance", ""]
    body = [
        [
            r.stage,
            _column(r),
            r.key,
            _num(r.max_abs, ".2e"),
            _num(r.rel, ".2e"),
            _num(r.snr_db, ".1f"),
            f"{r.tolerance_row}: {_bound(r)}",
            "ok" if r.ok else "FAIL",
        ]
        for r in worst_rows(rows, stages)
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [head, *body])


def _markdown(report: Report, plots: Sequence[str]) -> str:
    m, a = report.model, report.audio
    lines = [
        "# unmix-parity report",
        "",
        f"- model: `{m['path']}` ({m['origin']}): {m['description']}",
        f"- audio: {a['source']}, {a['seconds']:.2f} s, {a['rate']} Hz, {a['channels']} channels",
        f"- device: {report.device}; dtypes: {', '.join(report.dtypes)}; implementations: "
        f"{', '.join(report.implementations)}",
        f"- verdict: **{'pass' if report.ok else 'FAIL'}** ({len(report.rows)} comparisons, "
        f"{len(report.failed_rows)} out of tolerance, {len(report.failed_runs)} runs that could not be made)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(report.versions.items()))}",
        "",
        "Every implementation runs each stage on the float64 NumPy reference's input of that stage and is compared "
        "with the reference's output (max abs, rel = max abs / peak, SNR); the tolerance rows are "
        "`core_spec/tolerances.py`.",
        "",
        "## Worst comparison per stage",
        "",
        format_table(report.rows, report.stages, markdown=True),
        "",
    ]
    if report.failed_runs:
        lines += ["## Runs that could not be made", ""]
        lines += [f"- {r['implementation']} {r['dtype']}: {r['error'].splitlines()[0]}" for r in report.failed_runs]
        lines.append("")
    for name in plots:
        lines += [f"![{name}]({name})", ""]
    lines += ["## Timings", "", "| implementation | dtype | seconds |", "|---|---|---|"]
    lines += [f"| {r['implementation']} | {r['dtype']} | {r['seconds']:.1f} |" for r in report.runs if r["seconds"]]
    notes = [f"- {r['implementation']} {r['dtype']}: {r['note']}" for r in report.runs if r.get("note")]
    if notes:
        lines += ["", "Not run (not a failure):", "", *notes]
    lines += ["", "## Every comparison", "", "| implementation | stage | key | max abs | rel | SNR dB | ok |"]
    lines.append("|---|---|---|---|---|---|---|")
    lines += [
        f"| {_column(r)} | {r.stage} | {r.key} | {_num(r.max_abs, '.2e')} | {_num(r.rel, '.2e')} | "
        f"{_num(r.snr_db, '.1f')} | {'ok' if r.ok else 'FAIL'} |"
        for r in report.rows
    ]
    return "\n".join(lines) + "\n"


def write_report(report: Report, folder: Path, captures: Any, force: bool = False) -> list[Path]:
    """Write :data:`FILES` into ``folder`` (created), each atomically; the paths written.

    ``captures``: ``{(implementation, dtype): {key: array}}`` with ``("reference", "float64")``, for the plots.

    Raises:
        FileExistsError: a file exists and ``force`` is false (checked before anything is written).
    """
    folder = Path(folder)
    existing = [str(folder / f) for f in FILES if (folder / f).exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} exist(s); pass --force to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    from unmix.parity.plots import difference_spectrogram, snr_heatmap

    written = [snr_heatmap(report, folder / FILES[2])]
    worst = difference_spectrogram(report, captures, folder / FILES[3])
    if worst is not None:
        written.append(worst)
    text = json.dumps(report.as_dict(), indent=1, allow_nan=True)
    written.insert(0, atomic_write(folder / FILES[0], lambda tmp: Path(tmp).write_text(text + "\n")))
    md = _markdown(report, [p.name for p in written[1:]])
    written.insert(1, atomic_write(folder / FILES[1], lambda tmp: Path(tmp).write_text(md)))
    return written
