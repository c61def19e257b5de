"""Read checkpoints and convert them with no torch import; run as a script in a subprocess by the tests.

``python parity_tests/convert/read_torchfree.py JOBS.json``: ``JOBS`` is ``{"out": npz path, "read": {name:
path}, "convert": {name: [path, preset or null]}, "cli": [[argv...], ...]}``. Writes the flattened arrays of
every read (``read:<name>|<key>``) and the canonical weights of every conversion (``convert:<name>|<key>``) to
the npz, and a JSON report beside it (``<out>.json``: configs, notes, CLI exit codes, and ``torch_imported``).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core_spec.configs import config_to_json
from parity_tests.convert.flat import flatten
from unmix.convert_cli import main as cli_main
from weights_convert import read_checkpoint
from weights_convert.sources import read_upstream


def run(jobs: dict) -> None:
    arrays: dict[str, np.ndarray] = {}
    report: dict = {"read": {}, "convert": {}, "cli": []}
    for name, path in jobs.get("read", {}).items():
        checkpoint = read_checkpoint(path)
        for key, value in flatten(checkpoint.obj).items():
            arrays[f"read:{name}|{key}"] = value
        report["read"][name] = {"format": checkpoint.format, "nb_tensors": checkpoint.nb_tensors}
    for name, (path, preset) in jobs.get("convert", {}).items():
        converted = read_upstream(path, model=preset)
        for key, value in converted.weights.items():
            arrays[f"convert:{name}|{key}"] = value
        report["convert"][name] = {
            "config": json.loads(config_to_json(converted.config)),
            "kind": converted.kind,
            "notes": converted.notes,
            "matched_presets": converted.matched_presets,
            "provenance": converted.provenance(),
        }
    for argv in jobs.get("cli", []):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(argv)
        report["cli"].append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
    report["torch_imported"] = "torch" in sys.modules
    np.savez(jobs["out"], **arrays)
    Path(jobs["out"] + ".json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
