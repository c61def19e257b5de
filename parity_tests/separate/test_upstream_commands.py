"""``unmix-separate`` with its defaults against upstream's own commands on the same file and weights: openunmix
1.3.0's ``umx`` and demucs 2.0.3's ``python -m demucs.separate``, run offline by ``benchmarks.upstream_cli`` (local
models; soundfile in torchaudio's place, their separation code unchanged)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_spec.canonical import load_canonical, split_targets
from core_spec.tolerances import check
from unmix.audio_files import read_audio_file

from .helpers import read_stems, run

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def upstream(command: list, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.upstream_cli", *map(str, command)], env=env, cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_umx_defaults_equal_upstream_umx(inputs, tmp_path: Path, capsys) -> None:
    """umxhq-shaped weights, upstream's defaults on both sides (niter 1, wiener_win_len 300, float WAV)."""
    from parity_tests.separate.inputs import write_umx_cli_folder

    weights, config, _ = load_canonical(inputs.umxhq)
    folder = write_umx_cli_folder(tmp_path / "umx_folder", config, split_targets(weights, config.separator.targets))
    targets = config.separator.targets
    upstream(
        ["umx", inputs.excerpt, "--model", folder, "--targets", *targets, "--outdir", tmp_path / "up", "--no-cuda"],
        tmp_path,
    )
    code, _, err = run(
        [inputs.excerpt, "--model", inputs.umxhq, "--framework", "torch", "-o", tmp_path / "ours", "-q"], capsys
    )
    assert code == 0, err
    theirs = read_stems(tmp_path / "up" / "excerpt", targets)
    check(read_stems(tmp_path / "ours" / "umxhq" / "excerpt", targets), theirs, "separator", "float32", what="vs umx")


def test_demucs_defaults_equal_upstream_demucs_separate(inputs, tmp_path: Path, capsys) -> None:
    """The upstream package itself on both sides; defaults (shifts 0, overlap 0.25, split, 16-bit WAV, rescaled
    by max(1.01 peak, 1)); upstream truncates to 16 bits where this command rounds: within the pcm16 row."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "small.th").write_bytes(inputs.demucs_package.read_bytes())
    upstream(
        ["demucs", inputs.clip, "-n", "small", "--models", tmp_path / "models", "-o", tmp_path / "up", "-d", "cpu"],
        tmp_path,
    )
    (tmp_path / "small.th").write_bytes(inputs.demucs_package.read_bytes())
    code, _, err = run(
        [inputs.clip, "--model", tmp_path / "small.th", "--framework", "torch", "-o", tmp_path / "ours", "-q"], capsys
    )
    assert code == 0, err
    sources = ("drums", "bass", "other", "vocals")
    theirs = read_stems(tmp_path / "up" / "small" / "clip", sources)
    ours = read_stems(tmp_path / "ours" / "small" / "clip", sources)
    assert np.abs(theirs).max() > 0 and ours.shape == theirs.shape == (4,) + read_audio_file(inputs.clip)[0].shape
    check(ours, theirs, "data.pcm16", "float32", what="vs python -m demucs.separate")
