"""Write the figures section of ``docs/parity.md`` from ``unmix-parity`` reports (``parity.json``), never by hand.

    .venv/bin/python scripts/parity_doc.py --run       # write the models, run unmix-parity, then the section
    .venv/bin/python scripts/parity_doc.py docs/parity/umxhq/parity.json docs/parity/demucs/parity.json

``--run`` writes two models with the upstream code into a temporary folder (seeded weights:
``parity_tests.convert.checkpoints``): ``umxhq``, an openunmix model folder at the umxhq shapes, and
``demucs.th``, a demucs package (channels 8, 2-s segments), runs ``unmix-parity MODEL --report docs/parity/<name>
--force`` on the whole stempeg clip for each (all four ports and upstream, float32, CPU) and uses those reports.
The reports hold no path of the machine that made them: the temporary folder is written ``<tmp>`` and the
checkout's paths relative to the checkout (``model.path`` and ``command`` of ``parity.json``, the model line of
``parity.md``).

For every report: what ran (model, audio, device, versions, the command, its paths made relative as above), the
lowest SNR per stage and implementation/dtype (a cell out of tolerance is marked FAIL), the worst comparison per
stage with its tolerance row (``unmix.parity.report.format_table``) and the report's two figures, linked relative
to the document (``parity/umxhq/parity_snr.png`` from ``docs/parity.md``: the same file on GitHub and in the book,
which serves ``docs/**`` at the same paths). The text between the two marker lines of the document is replaced;
the rest is left as it is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unmix.parity.report import format_table  # noqa: E402
from unmix.parity.stages import Row  # noqa: E402

BEGIN = "<!-- BEGIN figures: written by scripts/parity_doc.py from the reports below; do not edit -->"
END = "<!-- END figures -->"
TMP_PREFIX = "parity-doc-"
"""The prefix of ``--run``'s temporary folder (its models), written ``<tmp>`` in the reports."""


def relative(path: str) -> str:
    """``path`` without the machine's part: relative to the checkout when inside it, ``<tmp>/...`` when inside a
    temporary folder of ``--run``; anything else unchanged."""
    p = Path(path)
    if not p.is_absolute():
        return path
    if p.is_relative_to(ROOT):
        return p.relative_to(ROOT).as_posix()
    for i, part in enumerate(p.parts):
        if part.startswith(TMP_PREFIX):
            return "/".join(["<tmp>", *p.parts[i + 1 :]])
    return path


def relative_command(command: str) -> str:
    """A command line (its arguments joined by spaces, as ``unmix-parity`` records it) with :func:`relative`
    applied to each argument."""
    return " ".join(relative(arg) for arg in command.split(" "))


def sanitise_report(folder: Path) -> None:
    """Make the paths of ``unmix-parity``'s report in ``folder`` relative (:func:`relative`): ``model.path`` and
    ``command`` of ``parity.json`` (written as ``unmix.parity.report.write_report`` does; nothing else changes)
    and the model path where ``parity.md`` quotes it."""
    json_path, md_path = folder / "parity.json", folder / "parity.md"
    report = json.loads(json_path.read_text())
    old = report["model"]["path"]
    report["model"]["path"] = relative(old)
    report["command"] = relative_command(report["command"])
    json_path.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    if md_path.exists():
        md_path.write_text(md_path.read_text().replace(f"`{old}`", f"`{report['model']['path']}`"))


def _snr_table(report: dict) -> list[str]:
    columns = list(dict.fromkeys(f"{r['implementation']} {r['dtype']}" for r in report["rows"]))
    lines = ["| stage | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for stage in report["stages"]:
        cells = []
        for column in columns:
            rows = [
                r for r in report["rows"] if r["stage"] == stage and f"{r['implementation']} {r['dtype']}" == column
            ]
            if not rows:
                cells.append("-")
                continue
            snr = min(math.inf if r["snr_db"] is None else r["snr_db"] for r in rows)
            text = "inf" if math.isinf(snr) else f"{snr:.1f}"
            cells.append(text if all(r["ok"] for r in rows) else f"**{text} FAIL**")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines


def section(path: Path, doc: Path) -> list[str]:
    """The figures of one report, its image links relative to ``doc``'s folder."""
    report = json.loads(path.read_text())
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    figures = Path(os.path.relpath(path.parent, doc.resolve().parent)).as_posix()
    m, a = report["model"], report["audio"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(report["versions"].items()))
    seconds = {f"{r['implementation']} {r['dtype']}": r["seconds"] for r in report["runs"] if r["seconds"]}
    metrics = ("max_abs", "rel", "snr_db")  # None in the JSON where a comparison could not be computed
    rows = [Row(**{k: (math.nan if k in metrics and v is None else v) for k, v in r.items()}) for r in report["rows"]]
    lines = [
        f"### {m['name']} ({rel.parent.name}/)",
        "",
        f"- model: {m['description']} ({m['origin']}: `{Path(m['path']).name}`)",
        f"- audio: {a['source']}, {a['seconds']:.2f} s at {a['rate']} Hz; device: {report['device']}",
        f"- command: `{relative_command(report['command'])}`",
        f"- versions: {versions}",
        f"- verdict: **{'pass' if report['ok'] else 'FAIL'}**, {len(report['rows'])} comparisons; seconds per run: "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        "",
        "Lowest SNR (dB) against the float64 reference, per stage:",
        "",
        *_snr_table(report),
        "",
        "Worst comparison per stage, with the tolerance row that judges it:",
        "",
        format_table(rows, report["stages"], markdown=True),
        "",
        f"![SNR per stage]({figures}/parity_snr.png)",
        "",
    ]
    if (path.parent / "parity_worst_stem.png").exists():
        lines += [f"![worst stem]({figures}/parity_worst_stem.png)", ""]
    return lines


def run_reports() -> list[Path]:
    """The two models written by the upstream code, verified by ``unmix-parity``; the reports' paths."""
    import subprocess
    import tempfile

    from core_spec.configs import DemucsConfig, umx_preset
    from parity_tests.convert.checkpoints import write_demucs_package, write_umx_folder

    reports = []
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        models = {"umxhq": Path(tmp) / "umxhq", "demucs": Path(tmp) / "demucs.th"}
        write_umx_folder(models["umxhq"], umx_preset("umxhq"), seed=3)
        write_demucs_package(models["demucs"], DemucsConfig(channels=8, segment_length=2 * 44100), seed=5)
        for name, model in models.items():
            out = Path("docs") / "parity" / name  # relative to the checkout, the command's folder
            cmd = [sys.executable, "-m", "unmix.parity", str(model), "--report", str(out), "--force", "--quiet"]
            done = subprocess.run(cmd, cwd=ROOT)
            if not (ROOT / out / "parity.json").exists():
                raise SystemExit(f"{' '.join(cmd)} wrote no report (exit {done.returncode})")
            sanitise_report(ROOT / out)
            reports.append(ROOT / out / "parity.json")
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="*", type=Path, help="parity.json files written by unmix-parity --report")
    parser.add_argument("--run", action="store_true", help="make the reports first (see above)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "parity.md")
    args = parser.parse_args()
    if args.run:
        args.reports = run_reports()
    if not args.reports:
        parser.error("give parity.json files or --run")
    text = args.doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.doc}: the marker lines are missing:\n{BEGIN}\n{END}")
    body = [line for path in args.reports for line in section(path.resolve(), args.doc)]
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.doc.write_text(head + BEGIN + "\n\n" + "\n".join(body) + "\n" + END + tail)
    print(f"wrote the figures of {len(args.reports)} report(s) into {args.doc}")


if __name__ == "__main__":
    main()
