"""Audio files in and out (``unmix.audio_files``), the input checks every port shares
(``core_spec.audio.prepare_audio``: integer PCM, non-representable amplitudes), the file mode of everything
written, and interrupt safety: a stem is never left partial under its name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core_spec.audio import AudioError, pcm_to_float, prepare_audio
from core_spec.canonical import save_canonical
from core_spec.configs import DEMUCS_PRESETS
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from unmix.audio_files import (
    AudioFileError,
    StagedFiles,
    find_audio_files,
    read_audio_file,
    resample,
    to_pcm,
    write_audio_file,
)

from .helpers import files_under, run

ROOT = Path(__file__).resolve().parents[2]


def music(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(seconds * 44100)) / 44100
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t + 1)]).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "depth", "stage"),
    [("wav", "int16", "data.pcm16"), ("wav", "int24", "data.pcm16"), ("wav", "float32", "data.audio"),
     ("flac", "int16", "data.pcm16"), ("flac", "int24", "data.pcm16"), ("mp3", "int16", "data.mp3")],
)  # fmt: skip
@pytest.mark.parametrize("writer", ["soundfile", "ffmpeg"])
def test_write_read_round_trip(fmt: str, depth: str, stage: str, writer: str, tmp_path: Path, monkeypatch) -> None:
    """Every format and depth, written by soundfile or by ffmpeg (the NNabla environment has no soundfile), reads
    back as written (integers: half a step; MP3: the lossy codec's row); same length, rate and channels."""
    import unmix.audio_files as af

    if writer == "ffmpeg":
        monkeypatch.setattr(af, "_soundfile", lambda: None)
    audio = music()
    path = tmp_path / f"x.{fmt}"
    write_audio_file(path, audio, 44100, fmt, depth)
    back, rate = read_audio_file(path)
    assert rate == 44100 and back.shape == audio.shape and back.dtype == np.float32
    check(back, audio, stage, "float32", what=f"{fmt} {depth} by {writer}")
    expected_subtype = (
        {"int16": "PCM_16", "int24": "PCM_24", "float32": "FLOAT"}[depth] if fmt != "mp3" else "MPEG_LAYER_III"
    )
    assert sf.info(str(path)).subtype == expected_subtype


def test_pcm_rule_and_reading_int_pcm(tmp_path: Path) -> None:
    """``round(x * 2^15)`` clipped; a 16-bit file reads back as ``x / 2^15`` (soundfile's scaling)."""
    x = np.array([[-1.5, -1.0, -0.5 / 32768, 0.4 / 32768, 0.6 / 32768, 1.0, 2.0]])
    assert to_pcm(x, "int16").tolist() == [[-32768, -32768, 0, 0, 1, 32767, 32767]]
    assert (to_pcm(x, "int24") >> 8).tolist() == [[-(2**23), -(2**23), -128, 102, 154, 2**23 - 1, 2**23 - 1]]
    sf.write(str(tmp_path / "i.wav"), np.array([[-32768, 1, 32767]], np.int16).T, 8000, subtype="PCM_16")
    back, _ = read_audio_file(tmp_path / "i.wav")
    assert back.tolist() == [[-1.0, 1 / 32768, 32767 / 32768]]


def test_read_excerpt_and_ffmpeg_formats(inputs, tmp_path: Path) -> None:
    """``start``/``duration`` in seconds; M4A (AAC) and the MP4 stem file itself decoded by ffmpeg (the stem file's
    first stream is its mixture)."""
    import stempeg

    audio, _ = read_audio_file(inputs.clip)
    part, _ = read_audio_file(inputs.clip, start=1.0, duration=0.5)
    assert part.shape == (2, 22050) and np.array_equal(part, audio[:, 44100:66150])
    mixture, stem_rate = read_audio_file(stempeg.example_stem_path())
    assert stem_rate == 44100 and mixture.shape[0] == 2 and abs(mixture.shape[1] - audio.shape[1]) < 4096
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(inputs.excerpt), "-c:a", "aac", str(tmp_path / "x.m4a")], check=True
    )
    m4a, m4a_rate = read_audio_file(tmp_path / "x.m4a")
    assert m4a_rate == 44100 and m4a.shape[0] == 2 and abs(m4a.shape[1] - 3 * 44100) < 4096
    (tmp_path / "bad.mp3").write_bytes(b"\xff\xfb" + os.urandom(1000))
    with pytest.raises(AudioFileError, match=r"bad\.mp3: "):
        read_audio_file(tmp_path / "bad.mp3")


def test_find_audio_files_recursive_sorted(tmp_path: Path) -> None:
    for name in ["b.wav", "a/c.flac", "a/z.mp3", "notes.txt", ".hidden/x.wav", "a/.y.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_audio_files([tmp_path, tmp_path / "missing.wav"])
    assert [str(p.relative_to(tmp_path)) for p in found] == ["a/c.flac", "a/z.mp3", "b.wav", "missing.wav"]


def test_resample_length_and_rates() -> None:
    x = music(0.5)
    assert np.array_equal(resample(x, 44100, 44100), x)
    assert resample(x, 44100, 22050).shape == (2, 11025) and resample(x, 22050, 44100).shape == (2, 44100)
    assert resample(x, 48000, 44100).shape == (2, -(-22050 * 147 // 160))  # ceil(length * new / old)


def test_integer_pcm_is_scaled_and_huge_amplitudes_refused() -> None:
    """``prepare_audio`` (every port's separator runs it): int16 is scaled as soundfile reads it (it was separated
    as raw integers before), and a peak of 1e30 is an error instead of NaN stems."""
    pcm = (np.random.default_rng(0).integers(-32768, 32767, (2, 100))).astype(np.int16)
    scaled = prepare_audio(pcm, 44100, 44100)
    assert np.array_equal(scaled[0], pcm.astype(np.float64) / 32768) and scaled.max() < 1
    assert np.array_equal(pcm_to_float(np.array([0, 128, 255], np.uint8)), [-1.0, 0.0, 127 / 128])
    with pytest.raises(AudioError, match="signed integer PCM"):
        prepare_audio(pcm.astype(np.uint16), 44100, 44100)
    with pytest.raises(AudioError, match="peaks at 1e\\+30, beyond the largest amplitude"):
        prepare_audio(np.full((2, 100), 1e30), 44100, 44100)


def test_ports_scale_int16_like_float(inputs) -> None:
    """``umx_torch.separate_track`` on int16 samples equals the run on the same samples scaled to [-1, 1)."""
    torch = pytest.importorskip("torch")  # noqa: F841
    import umx_torch

    model = umx_torch.from_canonical_file(inputs.demucs)
    pcm = (np.clip(music(0.5), -1, 1) * 32767).astype(np.int16)
    as_int = umx_torch.separate_track(model, pcm).numpy()
    as_float = umx_torch.separate_track(model, pcm.astype(np.float32) / 32768).numpy()
    check(as_int, as_float, "data.audio", "float32", what="int16 input scaled")
    with pytest.raises(AudioError, match="beyond the largest amplitude"):
        umx_torch.separate_track(model, music(0.5) * 1e30)


def test_written_files_get_the_usual_mode(inputs, tmp_path: Path, capsys) -> None:
    """Canonical models, a port's native file and the stems: ``0o666`` under the umask (0o644 for umask 022),
    not a temporary file's 0o600."""
    previous = os.umask(0o022)
    try:
        config = DEMUCS_PRESETS["demucs_unittest"]
        paths = list(save_canonical(tmp_path / "m", random_weights(config, 0), config))
        torch = pytest.importorskip("torch")  # noqa: F841
        import umx_torch

        paths += umx_torch.save_native(tmp_path / "native", random_weights(config, 0), config)
        sf.write(str(tmp_path / "t.wav"), music(0.2).T, 44100)
        code, _, err = run(
            [tmp_path / "t.wav", "--model", inputs.demucs, "--framework", "torch", "-o", tmp_path / "o", "-q"], capsys
        )
        assert code == 0, err
        paths += sorted((tmp_path / "o").rglob("*.wav"))
        assert len(paths) == 8
        assert {oct(p.stat().st_mode & 0o777) for p in paths} == {"0o644"}
    finally:
        os.umask(previous)


def test_staged_files_interrupted_leave_nothing(tmp_path: Path) -> None:
    """A write interrupted (KeyboardInterrupt) half-way through a group of files: no destination, no temporary
    file, no folder made for them; committed files are complete."""
    dest = tmp_path / "new" / "track"

    def partial(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), StagedFiles() as staged:
        staged.write(dest / "a.wav", lambda tmp: Path(tmp).write_bytes(b"whole"))
        staged.write(dest / "b.wav", partial)
    assert files_under(tmp_path) == [] and not (tmp_path / "new").exists()
    with StagedFiles() as staged:
        staged.write(dest / "a.wav", lambda tmp: Path(tmp).write_bytes(b"whole"))
        assert files_under(dest)[0].startswith(".a.wav.") and not (dest / "a.wav").exists()
        staged.commit()
    assert files_under(tmp_path) == ["new/track/a.wav"] and (dest / "a.wav").read_bytes() == b"whole"


def test_cli_interrupted_in_process(inputs, tmp_path: Path, capsys, monkeypatch) -> None:
    """Ctrl-C while the second stem is written: exit 130, no stem, no temporary file."""
    import unmix.separate_cli as cli

    calls = []

    def interrupted(tmp, *args):
        calls.append(tmp)
        Path(tmp).write_bytes(b"partial")
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_audio_file", interrupted)
    sf.write(str(tmp_path / "t.wav"), music(0.3).T, 44100)
    code, _, err = run(
        [tmp_path / "t.wav", "--model", inputs.demucs, "--framework", "torch", "-o", tmp_path / "o"], capsys
    )
    assert code == 130 and "interrupted" in err and len(calls) == 2
    assert files_under(tmp_path / "o") == []


FAKE_FFMPEG = """#!/bin/sh
# stands in for ffmpeg while an MP3 is encoded: writes part of the file, then hangs until killed
for last; do :; done
printf 'partial mp3 data' > "$last"
exec sleep 600
"""


def _default_sigint() -> None:
    """In the child before it runs the command: SIGINT back to its default. A shell starting ``make test`` in the
    background (``&``, no job control) ignores SIGINT in what it starts, that is inherited, and Python keeps an
    ignored SIGINT ignored (no KeyboardInterrupt): the command would never see the signal this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _being_written(out: Path) -> bool:
    """A hidden temporary file with data under ``out`` (one renamed away between listing and stat is not)."""
    for p in out.rglob(".*"):
        try:
            if p.name.endswith(".tmp") and p.stat().st_size:
                return True
        except FileNotFoundError:
            continue
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_cli_killed_while_writing(signum: int, inputs, tmp_path: Path) -> None:
    """``unmix-separate`` in its own process, stopped while ffmpeg is writing a stem: SIGINT and SIGTERM leave
    neither the stem nor a temporary file; SIGKILL (nothing can clean up) leaves no stem under its name, only the
    hidden temporary file."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ffmpeg").write_text(FAKE_FFMPEG)
    (fake / "ffmpeg").chmod(0o755)
    sf.write(str(tmp_path / "t.wav"), music(0.3).T, 44100)
    out = tmp_path / "o"
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "unmix.separate_cli", str(tmp_path / "t.wav"), "--model", str(inputs.demucs)]
    command += ["--framework", "torch", "-o", str(out), "--ext", "mp3", "-q"]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a pipe nobody reads can block the command when it fills
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, start_new_session=True, stderr=stderr, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 240  # imports and the model under a loaded machine: tens of seconds
        while not _being_written(out):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the stem was never being written; stderr: {log.read_text()}"
            time.sleep(0.05)
        os.kill(process.pid, signum)
        process.wait(timeout=60)
    finally:
        try:  # the process group started above: the command and the fake ffmpeg it left sleeping
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=60)
    left = files_under(out)
    assert not [f for f in left if not Path(f).name.startswith(".")], left  # no stem under its own name
    if signum == signal.SIGKILL:
        assert len(left) == 1 and Path(left[0]).name.startswith(".drums.mp3.")
    else:
        assert left == [] and process.returncode == (130 if signum == signal.SIGINT else 128 + signal.SIGTERM)
