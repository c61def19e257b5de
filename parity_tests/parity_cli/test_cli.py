"""``unmix-parity`` end to end (a subprocess per run, as a user runs it): upstream-written models, the four ports
and upstream on 1 s of the stempeg clip; the report files; a corrupted weight caught; bad arguments refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core_spec.frameworks import FRAMEWORKS, REPO_ROOT
from unmix.parity.report import FILES

from .conftest import SECONDS

pytestmark = pytest.mark.upstream


def run_unmix_parity(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "unmix.parity", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)


def _check_report(folder: Path, stages: set[str]) -> dict:
    for name in FILES:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    for name in FILES[2:]:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = json.loads((folder / "parity.json").read_text())
    assert report["ok"] is True
    seen = {(r["implementation"], r["stage"]) for r in report["rows"]}
    for implementation in ["upstream", *FRAMEWORKS]:
        missing = {s for s in stages if (implementation, s) not in seen}
        assert not missing, f"{implementation}: no rows for {missing}"
    assert all(r["ok"] for r in report["rows"])
    assert not [r for r in report["runs"] if r["error"]]
    text = (folder / "parity.md").read_text()
    assert "parity_snr.png" in text and "**pass**" in text
    return report


@pytest.mark.slow
def test_umxhq_folder_in_every_port(umxhq_folder: Path, tmp_path: Path) -> None:
    """The upstream-written umxhq folder (read by unmix-convert's reader in memory), every stage of every port."""
    out = run_unmix_parity(str(umxhq_folder), "--seconds", SECONDS, "--report", str(tmp_path / "report"))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    stages = {"stft", "magnitude", "umx.layer", "umx.output", "wiener", "istft", "separator"}
    report = _check_report(tmp_path / "report", stages)
    wiener = [r for r in report["rows"] if r["stage"] == "wiener" and r["implementation"] != "upstream"]
    assert wiener and all(r["snr_bound_db"] is not None for r in wiener)  # judged against upstream's own error
    assert "verdict   pass" in out.stdout


@pytest.mark.slow
def test_demucs_package_in_every_port(demucs_package: Path, tmp_path: Path) -> None:
    out = run_unmix_parity(str(demucs_package), "--seconds", SECONDS, "--report", str(tmp_path / "report"))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    _check_report(tmp_path / "report", {"demucs.layer", "demucs.output", "demucs.apply"})


def test_corrupted_weight_is_caught(demucs_package: Path, tmp_path: Path) -> None:
    """One tensor of one port scaled by 1.001 (the test hook): exit 1, naming the framework and the stage."""
    args = [str(demucs_package), "--seconds", SECONDS, "--frameworks", "torch,jax", "--no-upstream"]
    out = run_unmix_parity(*args, "--perturb-weight", "jax:encoder.0.0.weight:1.001", "--report", str(tmp_path))
    assert out.returncode == 1, out.stdout[-4000:] + out.stderr[-4000:]
    failures = [line for line in out.stderr.splitlines() if line.startswith("unmix-parity: FAIL")]
    assert failures and all(" jax float32 stage demucs." in line for line in failures), out.stderr
    assert any("stage demucs.layer (encoder.0)" in line for line in failures), out.stderr
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["ok"] is False
    assert {r["implementation"] for r in report["rows"] if not r["ok"]} == {"jax"}
    assert all(r["ok"] for r in report["rows"] if r["implementation"] == "torch")


def test_existing_report_needs_force(demucs_package: Path, tmp_path: Path) -> None:
    (tmp_path / "parity.json").write_text("{}")
    out = run_unmix_parity(str(demucs_package), "--frameworks", "torch", "--report", str(tmp_path))
    assert out.returncode == 1
    assert "parity.json exist(s); pass --force" in out.stderr
    assert (tmp_path / "parity.json").read_text() == "{}"


def test_bad_arguments(tmp_path: Path) -> None:
    out = run_unmix_parity(str(tmp_path / "nothing.th"), "--frameworks", "torch")
    assert out.returncode == 1 and "nothing.th: not found" in out.stderr
    out = run_unmix_parity(str(tmp_path), "--frameworks", "mxnet")
    assert out.returncode == 2 and "--frameworks: unknown mxnet" in out.stderr
    out = run_unmix_parity(str(tmp_path), "--dtype", "float16")
    assert out.returncode == 2 and "--dtype: float16" in out.stderr
