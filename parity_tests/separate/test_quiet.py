"""The commands print none of TensorFlow's start-up log lines (absl's notice, "oneDNN custom operations are on",
the CPU-feature line), even with ``TF_CPP_MIN_LOG_LEVEL`` unset, and keep the rest of stderr:
:func:`core_spec.frameworks.quiet_import` around the first TensorFlow import (``umx_tf``, ``unmix.parity``'s
adapters). ``unmix-separate`` and ``unmix-parity`` run in their own processes on a 1-s excerpt with a small seeded
Demucs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core_spec.frameworks import REPO_ROOT, quiet_import

from . import inputs as make

NOISE = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|cpu_feature_guard"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]",  # absl/glog's prefix ("I0000 00:00:17...  5439 port.cc:153]")
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-s excerpt of the stempeg clip and a canonical small Demucs (channels 4)."""
    root = tmp_path_factory.mktemp("quiet")
    clip = make.write_clip(root / "clip.wav", seconds=1.0)
    return clip, make.convert(make.write_demucs_package(root / "demucs.th"), root / "demucs")


def run_without_log_level(module: str, *args: object, cwd: Path) -> str:
    """``python -m MODULE ARGS`` with ``TF_CPP_MIN_LOG_LEVEL`` removed from the environment: its stdout + stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", module, *map(str, args)]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def noise_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if NOISE.search(line)]


def test_separate_tf_prints_no_tensorflow_log_lines(small, tmp_path):
    clip, model = small
    output = run_without_log_level(
        "unmix.separate_cli", clip, "--model", model, "--framework", "tf", "-o", tmp_path / "out", cwd=tmp_path
    )
    assert not noise_in(output), output
    stems = sorted(p.stem for p in (tmp_path / "out").rglob("*.wav"))
    assert stems == ["bass", "drums", "other", "vocals"], output


def test_parity_tf_prints_no_tensorflow_log_lines(small, tmp_path):
    clip, model = small
    args = (model, "--audio", clip, "--seconds", "1", "--frameworks", "tf", "--no-upstream")
    output = run_without_log_level("unmix.parity", *args, cwd=tmp_path)
    assert not noise_in(output), output
    assert "tf float32" in output and "verdict   pass" in output, output


def test_quiet_import_keeps_what_is_not_noise(capfd, monkeypatch):
    """Only absl's notice and log lines under the level (2: INFO, WARNING) are held back; errors and other text pass."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    written = (
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        b"I0000 00:00:1796618742.776657    5439 port.cc:153] oneDNN custom operations are on.\n"
        b"W1207 04:47:05.123456 5439 some.cc:12] a warning\n"
        b"E0000 00:00:1796618742.776657    5439 some.cc:34] an error\n"
        b"Traceback (most recent call last): anything else\n"
    )
    with quiet_import():
        os.write(2, written)
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    kept = written.decode().splitlines(keepends=True)[3:]  # the error and the other text
    assert capfd.readouterr().err == "".join(kept)

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's own level wins: nothing held back
    with quiet_import():
        os.write(2, written)
    assert capfd.readouterr().err == written.decode()
