"""``python -m benchmarks --quick`` end to end (as ``make bench-quick`` runs it): every implementation and point of the
quick plan is measured and the three result files are written and well-formed; ``scripts/speed_table.py`` writes
the README table from them. Nothing about speed is asserted (benchmarks measure; tests do not time)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.impls import DEFAULT_IMPLS, THREADS
from benchmarks.plan import QUICK

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEED_TABLE = REPO_ROOT / "scripts" / "speed_table.py"


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=900)  # fmt: skip
    return proc, out


@pytest.fixture(scope="module")
def doc(run: tuple[subprocess.CompletedProcess, Path]) -> dict[str, Any]:
    proc, out = run
    assert proc.returncode == 0, f"python -m benchmarks --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return _strict((out / "latest.json").read_text())


def test_every_point_of_every_implementation_is_measured(doc: dict[str, Any]) -> None:
    assert doc["quick"] is True and doc["plan"]["name"] == "quick"
    assert doc["settings"]["threads"] == THREADS
    rows = {(r["point"], r["impl"]): r for r in doc["rows"]}
    expected = {(p.name, impl) for p in QUICK.points for impl in DEFAULT_IMPLS}
    assert set(rows) == expected
    for (point, impl), r in rows.items():
        assert "error" not in r, f"{point}/{impl}: {r.get('error')}"
        for key in ("wall_s_min", "wall_s_median", "first_call_s", "rtf", "peak_rss_mb"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (point, impl, key, r[key])
        assert 1 <= r["repeats"] == len(r["wall_s_all"]) and r["wall_s_min"] == min(r["wall_s_all"])
        assert r["peak_rss_mb"] >= r["rss_before_mb"]
        assert ("compile_s" in r) == (impl in ("tf", "jax")), (point, impl)
        if impl == "upstream":
            continue
        up = rows[(point, "upstream")]
        assert r["ratio_vs_upstream"] == pytest.approx(r["wall_s_min"] / up["wall_s_min"])
        assert r["peak_rss_ratio_vs_upstream"] == pytest.approx(r["peak_rss_mb"] / up["peak_rss_mb"])
        if r["kind"] == "train":
            assert math.isfinite(r["first_loss"]) and r["loss_rel_diff_vs_upstream"] >= 0
        else:  # compared with upstream's output: an SNR, or equal outputs (how close is the parity suite's job)
            assert r["output_identical"] or math.isfinite(r["snr_db_vs_upstream"]), (point, impl)
    for impl in DEFAULT_IMPLS:
        assert doc["implementations"][impl]["versions"], impl


def test_the_sweeps_cover_every_implementation(doc: dict[str, Any]) -> None:
    assert set(doc["sweeps"]) == set(QUICK.sweeps)
    for model, sweep in doc["sweeps"].items():
        assert set(sweep["implementations"]) == set(DEFAULT_IMPLS), model
        for impl, v in sweep["implementations"].items():
            lengths = [QUICK.point(n).seconds for n in QUICK.sweeps[model]]
            assert v["seconds"] == lengths and len(v["time_per_audio_s"]) == len(lengths), (model, impl)
            assert v["time_relative_to_shortest"][0] == 1.0
            assert isinstance(v["linear_time"], bool)
            assert v["linear_time"] == (not any("time per second" in f for f in v["flags"]))


def test_markdown_and_chart(run: tuple[subprocess.CompletedProcess, Path], doc: dict[str, Any]) -> None:
    _, out = run
    text = (out / "latest.md").read_text()
    assert text.startswith("# Benchmark: every port against upstream (quick plan)")
    for point in QUICK.points:
        assert f"`{point.name}`" in text
    for impl in DEFAULT_IMPLS:
        assert doc["implementations"][impl]["label"] in text
    assert "## Length sweep" in text
    png = (out / "latest.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image

    assert matplotlib.image.imread(out / "latest.png").shape[:2] == (900, 1500)


def test_speed_table_writes_between_the_markers(run: tuple[subprocess.CompletedProcess, Path], tmp_path: Path) -> None:
    _, out = run
    readme = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "README.md", readme)
    before = readme.read_text()
    cmd = [sys.executable, str(SPEED_TABLE), "--json", str(out / "latest.json"), "--readme", str(readme)]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "--quick run" in refused.stderr
    assert readme.read_text() == before
    assert subprocess.run([*cmd, "--allow-quick", "--check"], capture_output=True).returncode == 1
    done = subprocess.run([*cmd, "--allow-quick"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = readme.read_text()
    begin, end = before.index("<!-- speed-table: begin"), before.index("<!-- speed-table: end -->")
    head, tail = before[: before.index("\n", begin) + 1], before[end:]
    assert after.startswith(head) and after.endswith(tail)
    table = after[len(head) : len(after) - len(tail)]
    assert table.startswith("| workload | upstream (s) | `umx_torch` | `umx_tf` | `umx_jax` | `umx_nnabla` |")
    for name in QUICK.main:
        assert QUICK.point(name).label in table
    assert subprocess.run([*cmd, "--allow-quick", "--check"], capture_output=True).returncode == 0
    readme.write_text(before.replace("<!-- speed-table: end -->\n", ""))
    missing = subprocess.run([*cmd, "--allow-quick"], capture_output=True, text=True)
    assert missing.returncode == 2 and "marker" in missing.stderr
