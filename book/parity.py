"""The parity page: the figures the last ``make test`` recorded (``parity_tests/report/*.json``), read, never rerun.

Every ``core_spec.tolerances.check`` call of the suite is recorded with its three metrics and its test's id
(``parity_tests/conftest.py``; ``scripts/parity_report.py`` prints the same figures). Here they are grouped by
framework (the suite folder: ``torch``, ``tf``, ``jax``, ``nnabla``; the NumPy reference's own suites ``spec`` and
``upstream``; the rest), stage, dtype and device: the worst relative error and the lowest SNR, next to the
tolerance row of :mod:`core_spec.tolerances`. The heatmap is drawn by :func:`unmix.parity.plots.snr_heatmap`
(matplotlib), the plot ``unmix-parity`` writes for a checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core_spec.tolerances import tolerance

from .render import admonition, escape_cell, table, tabs

__all__ = ["HEATMAP", "Group", "groups", "heatmap_png", "markdown", "read_rows"]

REPORT = Path("parity_tests") / "report"
HEATMAP = "parity-heatmap.png"
"""The heatmap's file name, beside the parity page."""

FRAMEWORKS = {
    "torch": "PyTorch",
    "tf": "TensorFlow",
    "jax": "JAX",
    "nnabla": "NNabla",
    "spec": "NumPy reference",
    "upstream": "NumPy reference",
}
"""Suite folder -> the column it is shown in (other suites: "other suites")."""


def read_rows(root: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """Every recorded comparison of ``parity_tests/report/*.json`` (with ``suite`` and ``env`` added), and the
    files read."""
    files = sorted((Path(root) / REPORT).glob("*.json"))
    rows = []
    for path in files:
        env = path.stem.split("-")[1] if path.stem.count("-") else "-"
        for r in json.loads(path.read_text()):
            parts = r.get("test", "").split("::")[0].split("/")
            suite = parts[1] if len(parts) > 2 and parts[0] == "parity_tests" else "-"
            rows.append(dict(r, suite=suite, env=env))
    return rows, files


@dataclass(frozen=True)
class Group:
    """The worst figures of one (framework, stage, dtype, device)."""

    framework: str
    stage: str
    dtype: str
    device: str
    n: int
    rel: float
    max_abs: float
    snr_db: float
    failed: int
    failures: tuple[str, ...] = ()

    @property
    def tolerance(self) -> str:
        try:
            return tolerance(self.stage, self.dtype, self.device).describe()
        except KeyError:
            return "(no row)"


def groups(rows: Sequence[dict[str, Any]]) -> list[Group]:
    """The rows grouped, in framework, then stage order."""
    by: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(FRAMEWORKS.get(r["suite"], "other suites"), r["stage"], r["dtype"], r["device"])].append(r)
    order = [*dict.fromkeys(FRAMEWORKS.values()), "other suites"]
    out = [
        Group(
            fw,
            stage,
            dtype,
            device,
            len(rs),
            max(r["rel"] for r in rs),
            max(r["max_abs"] for r in rs),
            min(r["snr_db"] for r in rs),
            sum(not r["ok"] for r in rs),
            tuple(dict.fromkeys(f"{r.get('test', '?')}: {r.get('what', '')}" for r in rs if not r["ok"])),
        )
        for (fw, stage, dtype, device), rs in by.items()
    ]
    return sorted(out, key=lambda g: (order.index(g.framework), g.stage, g.dtype, g.device))


def _snr(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


def heatmap_png(found: Sequence[Group], cache: Path | None = None) -> bytes:
    """The lowest SNR of every stage (rows) per framework and dtype (columns), failures marked: PNG bytes (kept in
    ``cache``, a folder, under a hash of the figures: matplotlib draws it once per report)."""
    key = hashlib.sha256(repr([dataclasses.astuple(g) for g in found]).encode()).hexdigest()[:16]
    cached = cache / f"parity-heatmap-{key}.png" if cache is not None else None
    if cached is not None and cached.is_file():
        return cached.read_bytes()
    from unmix.parity.plots import snr_heatmap

    report = SimpleNamespace(
        rows=[
            SimpleNamespace(
                implementation=g.framework.split()[0], dtype=g.dtype, stage=g.stage, snr_db=g.snr_db, ok=not g.failed
            )
            for g in found
            if g.framework != "other suites"
        ],
        stages=sorted({g.stage for g in found}),
        model={"name": "make test"},
        audio={"source": "the parity suite's fixtures"},
        device="/".join(sorted({g.device for g in found})),
    )
    with tempfile.TemporaryDirectory() as tmp:
        png = snr_heatmap(report, Path(tmp) / HEATMAP).read_bytes()
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        for stale in cached.parent.glob("parity-heatmap-*.png"):
            stale.unlink()
        tmp_path = cached.with_name(cached.name + ".tmp")
        tmp_path.write_bytes(png)
        tmp_path.replace(cached)
    return png


def markdown(found: Sequence[Group], files: Sequence[Path], heatmap: bool) -> str:
    """The parity section: when and what was recorded, the heatmap, one tab per framework."""
    if not found:
        return (
            '!!! warning "No parity report yet"\n\n'
            "    No figures are recorded in `parity_tests/report/`. Run `make test` (every tolerance check writes "
            "its figures there), then `make docs`; the page is built from that report and never reruns the "
            "suite.\n"
        )
    stamps = [f.stat().st_mtime for f in files]
    dates = (time.strftime("%Y-%m-%d %H:%M", time.localtime(s)) for s in (min(stamps), max(stamps)))
    when = " and ".join(dict.fromkeys(dates))
    failed = sum(g.failed for g in found)
    head = (
        f"Figures of {sum(g.n for g in found)} comparisons recorded in {len(files)} files of "
        f"`parity_tests/report/` (written {when}); {failed} out of tolerance.\n\n"
    )
    if failed:
        lines = "\n".join(f"- `{escape_cell(f)}`" for g in found for f in g.failures)
        head += admonition(
            "note",
            f"The {failed} comparisons out of tolerance",
            "Every check is recorded, also those of negative controls: a test that requires a deliberately wrong "
            "variant to fail (decoupled weight decay, a degraded output, a synthetic regression) records the "
            "figures of that failure. `make test` passes only when every test does; these are the checks out of "
            "tolerance, by test:\n\n" + lines,
            collapsible=True,
        )
    image = f"![lowest SNR per stage and framework]({HEATMAP})\n\n" if heatmap else ""
    items = []
    for fw in dict.fromkeys(g.framework for g in found):
        rows = [
            (
                f"`{g.stage}`",
                g.dtype,
                g.device,
                str(g.n),
                f"{g.rel:.2e}",
                f"{g.max_abs:.2e}",
                _snr(g.snr_db),
                g.tolerance.replace("<=", "≤").replace(">=", "≥"),
                f"{g.failed} out" if g.failed else "ok",
            )
            for g in found
            if g.framework == fw
        ]
        head_row = ("stage", "dtype", "device", "n", "worst rel", "worst max abs", "min SNR dB", "tolerance", "")
        items.append((fw, table(head_row, rows)))
    return head + image + tabs(items)
