"""Write the figures of ``docs/htdemucs.md`` from the committed HTDemucs fixtures, never by hand.

    .venv/bin/python scripts/htdemucs_doc.py            # rewrite the section between the markers
    .venv/bin/python scripts/htdemucs_doc.py --print    # print it only

For every fixture of ``parity_tests/fixtures_htdemucs.py`` (demucs 4.1.0 run in float64 and float32), the spec is
run in float64 exactly as ``parity_tests/spec/test_htdemucs_fixtures.py`` runs it, and per stage the table gives
the spec against upstream's float64 run (relative error: max |spec - upstream| / max |upstream|) and upstream's own
float32 error against its float64 run (relative error and SNR): the float32 error the ports are judged against.
Released-shape cases are run with upstream's input statistics injected (see ``core_spec.reference.htdemucs``) and
also without, to show what torch's float64 ``std`` costs there. NumPy only; about two minutes (the released shapes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core_spec.reference.htdemucs import htdemucs  # noqa: E402
from core_spec.reference.htdemucs_apply import apply_model  # noqa: E402
from core_spec.seeded import random_weights  # noqa: E402
from core_spec.tolerances import metrics  # noqa: E402
from parity_tests.fixtures import load  # noqa: E402
from parity_tests.fixtures_htdemucs import (  # noqa: E402
    APPLY_CASES,
    FORWARD_CASES,
    ReplayDraws,
    apply_weights,
)

DOC = ROOT / "docs" / "htdemucs.md"
BEGIN = "<!-- figures: written by scripts/htdemucs_doc.py -->"
END = "<!-- end of figures -->"


def _row(case: str, stage: str, spec, up64, up32) -> str:
    s = metrics(spec, up64)
    u = metrics(up32, up64)
    return f"| {case} | `{stage}` | {s.rel:.1e} | {u.rel:.1e} | {u.snr_db:.1f} |"


def section() -> str:
    lines = [
        BEGIN,
        "",
        "| case | stage | spec vs upstream, float64 (rel) | upstream float32 (rel) | upstream float32 (SNR dB) |",
        "|---|---|---:|---:|---:|",
    ]
    notes = []
    for name, case in FORWARD_CASES.items():
        arrays, meta = load(f"htdemucs_forward_{name}")
        weights = random_weights(case.config, case.weights_seed)
        stats = None
        if not case.traced:
            stats = {k: arrays[f"stats.{k}.float64"] for k in ("mean", "std", "mean_t", "std_t")}
        trace: dict = {}
        trace["output"] = htdemucs(weights, case.config, arrays["mix"], trace=trace, stats=stats)
        for key in meta["trace_keys"]:
            suffix = "" if key == "output" else "trace."
            up64 = arrays[f"{suffix}{key}.float64" if suffix else "output.float64"]
            up32 = arrays[f"{suffix}{key}.float32" if suffix else "output.float32"]
            label = name + (" (upstream's statistics)" if stats is not None else "")
            lines.append(_row(label, key, trace[key], up64, up32))
        if stats is not None:
            own = htdemucs(weights, case.config, arrays["mix"])
            notes.append(
                f"- {name}, the spec's own (correctly rounded) statistics: output rel "
                f"{metrics(own, arrays['output.float64']).rel:.1e} against upstream float64"
            )
    for name, case in APPLY_CASES.items():
        arrays, _ = load(f"htdemucs_apply_{name}")
        per_model = apply_weights(case)
        out = apply_model(
            per_model if case.bag else per_model[0],
            case.config,
            arrays["mix"],
            shifts=case.shifts,
            overlap=case.overlap,
            transition_power=case.transition_power,
            segment=case.segment,
            rng=ReplayDraws(arrays["draws.float64"]),
        )
        lines.append(_row(f"apply {name}", "apply_model", out, arrays["output.float64"], arrays["output.float32"]))
    lines += ["", *notes, "", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the section, write nothing")
    args = parser.parse_args()
    text = section()
    if args.print:
        print(text)
        return
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC}: the markers {BEGIN!r} and {END!r} are missing")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + text + tail)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
