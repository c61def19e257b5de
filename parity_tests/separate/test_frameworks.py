"""``unmix-separate --framework tf|jax|nnabla`` end to end on the stempeg clip, with the upstream-written models
converted by ``unmix-convert``: the stems read back equal the port's own ``Separator.separate`` /
``separate_track`` on the same samples. NNabla runs in ``.venv-nnabla`` (the command re-runs itself there); its
reference comes from ``python -m umx_nnabla separate-npz`` in that environment."""

from __future__ import annotations

import importlib
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core_spec.frameworks import REPO_ROOT
from core_spec.tolerances import check
from unmix.audio_files import read_audio_file
from unmix.environments import nnabla_env, nnabla_python

from .helpers import read_stems, run

UMX_TARGETS = ("vocals", "drums", "bass", "other")
DEMUCS_SOURCES = ("drums", "bass", "other", "vocals")
FRAMEWORKS = ("tf", "jax", "nnabla")


def expected_in_process(framework: str, model: Path, audio: np.ndarray, kind: str) -> np.ndarray:
    port = importlib.import_module(f"umx_{framework}")
    if kind == "umx":
        separator = port.from_canonical_file(model, niter=1, wiener_win_len=300)
        return np.asarray(separator.separate(audio[None]))[0]
    demucs = port.from_canonical_file(model)
    return np.asarray(port.separate_track(demucs, audio[None], shifts=0, split=True, overlap=0.25, rng=0))[0]


def expected_nnabla(model: Path, audio: np.ndarray) -> np.ndarray:
    """``Separator.separate`` / ``separate_track`` of umx_nnabla in .venv-nnabla, through .npz files."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", mixture=audio)
        command = [str(nnabla_python()), "-m", "umx_nnabla", "separate-npz", "--weights", str(model)]
        command += ["--input", str(Path(tmp) / "in.npz"), "--output", str(Path(tmp) / "out.npz")]
        done = subprocess.run(command, cwd=REPO_ROOT, env=nnabla_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        with np.load(Path(tmp) / "out.npz") as out:
            return out["estimates"]


def expected(framework: str, model: Path, audio: np.ndarray, kind: str) -> np.ndarray:
    if framework == "nnabla":
        return expected_nnabla(model, audio)
    pytest.importorskip({"tf": "tensorflow", "jax": "jax"}[framework])
    return expected_in_process(framework, model, audio, kind)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_umxhq_stems_equal_the_port(framework: str, inputs, tmp_path: Path, capsys) -> None:
    """umxhq shapes, 4 targets, upstream CLI settings (niter 1), 3 s of the clip: float32 WAV stems."""
    argv = [inputs.excerpt, "--model", inputs.umxhq, "--framework", framework, "-o", tmp_path, "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    audio, _ = read_audio_file(inputs.excerpt)
    got = read_stems(tmp_path / "umxhq" / "excerpt", UMX_TARGETS)
    check(got, expected(framework, inputs.umxhq, audio, "umx"), "data.audio", "float32", what=f"umx {framework}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_demucs_stems_equal_the_port(framework: str, inputs, tmp_path: Path, capsys) -> None:
    """Small Demucs split into 2-s segments over the whole clip; ``--int16 --clip-mode none``, so the stems are the
    port's output rounded to 16 bits."""
    argv = [
        inputs.clip,
        "--model",
        inputs.demucs,
        "--framework",
        framework,
        "-o",
        tmp_path,
        "-q",
        "--clip-mode",
        "none",
    ]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    audio, _ = read_audio_file(inputs.clip)
    got = read_stems(tmp_path / "demucs_small" / "clip", DEMUCS_SOURCES)
    ref = expected(framework, inputs.demucs, audio, "demucs")
    check(got, ref, "data.pcm16", "float32", what=f"demucs {framework}")
