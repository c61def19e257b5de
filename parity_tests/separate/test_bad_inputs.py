"""Every class of bad input: a clear error naming the file and the problem, nothing written for that file, the
batch goes on past it and the exit status is 1 (PyTorch port, small Demucs; the checks are framework-neutral)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core_spec.audio import MAX_AMPLITUDE

from .helpers import files_under, read_stems, run

pytest.importorskip("torch")

SOURCES = ("drums", "bass", "other", "vocals")


def write(path: Path, audio: np.ndarray, rate: int = 44100, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), np.asarray(audio).T, rate, subtype=subtype)
    return path


def separate(inputs, paths: list, out: Path, capsys, *extra) -> tuple[int, str, str]:
    return run([*paths, "--model", inputs.demucs, "--framework", "torch", "-o", out, "-q", *extra], capsys)


def noise(seconds: float = 0.5, channels: int = 2) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal((channels, round(seconds * 44100)))).astype(np.float32)


BAD = {
    "missing": (lambda p: p, "no such file"),
    "corrupt": (lambda p: p.write_bytes(os.urandom(4096)) and p, "cannot read audio"),
    "empty": (lambda p: write(p, np.zeros((2, 0), np.float32)), "no audio samples"),
    "nan": (lambda p: write(p, np.where(np.arange(22050) == 12345, np.nan, noise()[:, :22050])), "NaN or Inf samples"),
    "inf": (lambda p: write(p, np.where(np.arange(22050) == 100, np.inf, noise()[:, :22050])), "NaN or Inf samples"),
    "three_channels": (lambda p: write(p, noise(channels=3)), "3 channels"),
    "huge": (lambda p: write(p, noise() * 1e30), "beyond the largest amplitude"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_file_is_named_and_batch_goes_on(kind: str, inputs, tmp_path: Path, capsys) -> None:
    make, message = BAD[kind]
    bad = tmp_path / f"{kind}.wav"
    if kind != "missing":
        make(bad)
    good = write(tmp_path / "good.wav", noise())
    code, _, err = separate(inputs, [bad, good], tmp_path / "out", capsys)
    assert code == 1
    assert f"{bad}: " in err and message in err, err
    assert files_under(tmp_path / "out") == [f"demucs_small/good/{s}.wav" for s in sorted(SOURCES)]


def test_nan_error_says_where(inputs, tmp_path: Path, capsys) -> None:
    bad = write(tmp_path / "nan.wav", np.where(np.arange(44100) == 22050, np.nan, noise(1.0)))
    code, _, err = separate(inputs, [bad], tmp_path / "out", capsys)
    assert code == 1 and "2 NaN or Inf samples; the first in channel 0 at 0.500 s" in err


def test_huge_amplitude_error_gives_the_limit(inputs, tmp_path: Path, capsys) -> None:
    bad = write(tmp_path / "huge.wav", noise() * 1e30)
    code, _, err = separate(inputs, [bad], tmp_path / "out", capsys)
    assert code == 1 and f"({MAX_AMPLITUDE:.3g}: its power spectrograms would overflow)" in err


def test_too_short_for_umx(inputs, tmp_path: Path, capsys) -> None:
    """Open-Unmix needs ``n_fft // 2 + 1`` samples (reflect padding of the STFT): 100 samples are refused."""
    short = write(tmp_path / "short.wav", noise()[:, :100])
    code, _, err = run([short, "--model", inputs.umxhq, "--framework", "torch", "-o", tmp_path / "o", "-q"], capsys)
    assert code == 1
    assert f"{short}: too short: 100 samples (2.3 ms at 44100 Hz); umx (umxhq) needs at least 2049 samples" in err
    assert files_under(tmp_path / "o") == []


@pytest.mark.parametrize("model", ["demucs", "umxhq"])
def test_digital_silence_gives_silence(model: str, inputs, tmp_path: Path, capsys) -> None:
    silent = write(tmp_path / "silence.wav", np.zeros((2, 22050), np.float32))
    code, _, err = run(
        [silent, "--model", getattr(inputs, model), "--framework", "torch", "-o", tmp_path, "-q"], capsys
    )
    assert code == 0, err
    name = "demucs_small" if model == "demucs" else "umxhq"
    sources = SOURCES if model == "demucs" else ("vocals", "drums", "bass", "other")
    stems = read_stems(tmp_path / name / "silence", sources)
    assert stems.shape == (4, 2, 22050) and np.all(stems == 0)


def test_existing_output_refused_without_force(inputs, tmp_path: Path, capsys) -> None:
    track = write(tmp_path / "t.wav", noise())
    assert separate(inputs, [track], tmp_path / "out", capsys)[0] == 0
    target = tmp_path / "out" / "demucs_small" / "t" / "vocals.wav"
    target.write_bytes(b"mine")
    code, _, err = separate(inputs, [track], tmp_path / "out", capsys)
    assert code == 1 and f"{tmp_path / 'out' / 'demucs_small' / 't'}/" in err and "exists; pass --force" in err
    assert target.read_bytes() == b"mine"
    code, _, err = separate(inputs, [track], tmp_path / "out", capsys, "--force")
    assert code == 0, err
    assert sf.info(str(target)).frames == 22050


def test_output_folder_not_writable(inputs, tmp_path: Path, capsys) -> None:
    """An output folder that cannot be made (a file stands where a folder is needed); as a non-root user also a
    read-only folder."""
    track = write(tmp_path / "t.wav", noise())
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = separate(inputs, [track], blocker / "out", capsys)
    assert code == 1 and f"output folder {blocker / 'out' / 'demucs_small' / 't'} is not writable" in err
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = separate(inputs, [track], locked, capsys)
        assert code == 1 and "is not writable" in err


def test_same_track_name_twice_in_a_batch(inputs, tmp_path: Path, capsys) -> None:
    """Two inputs with the same name would write the same stems: the second is refused, not overwritten."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write(tmp_path / "a" / "t.wav", noise()), write(tmp_path / "b" / "t.wav", noise(0.6))
    code, _, err = separate(inputs, [first, second], tmp_path / "out", capsys)
    assert code == 1 and f"was already written in this run from {first}" in err
    assert sf.info(str(tmp_path / "out" / "demucs_small" / "t" / "bass.wav")).frames == 22050


def test_options_of_the_other_model_and_unknown_stem(inputs, tmp_path: Path, capsys) -> None:
    track = write(tmp_path / "t.wav", noise())
    code, _, err = separate(inputs, [track], tmp_path / "out", capsys, "--niter", "2")
    assert code == 1 and "--niter: Open-Unmix option(s)" in err
    code, _, err = separate(inputs, [track], tmp_path / "out", capsys, "--two-stems", "piano")
    assert code == 1 and "unknown stem(s) piano: the model's sources are drums, bass, other, vocals" in err
    code, _, err = separate(inputs, [track], tmp_path / "out", capsys, "--ext", "flac", "--float32")
    assert code == 1 and "FLAC holds integer samples only" in err
    code, _, err = run([track, "--model", tmp_path / "nothing", "--framework", "torch"], capsys)
    assert code == 1 and f"--model {tmp_path / 'nothing'}: not found" in err
    assert files_under(tmp_path / "out") == []
