"""``unmix-separate --framework torch`` end to end on the real clip, with upstream-written models converted by
``unmix-convert``: the stems read back equal ``Separator.separate`` / ``separate_track`` of ``umx_torch``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_spec.tolerances import check
from unmix.audio_files import read_audio_file, resample
from unmix.separate_cli import port_main

from .helpers import files_under, read_stems, run

torch = pytest.importorskip("torch")
import umx_torch  # noqa: E402

UMX_TARGETS = ("vocals", "drums", "bass", "other")


@pytest.fixture(scope="module")
def umx_expected(inputs):
    """``umx_torch`` Separator (upstream's CLI settings: niter 1, wiener_win_len 300) on the 3-s excerpt."""
    audio, _ = read_audio_file(inputs.excerpt)
    separator = umx_torch.from_canonical_file(inputs.umxhq, niter=1, wiener_win_len=300)
    return audio, separator.separate(audio[None])[0].numpy()


def demucs_expected(path: Path, audio: np.ndarray) -> np.ndarray:
    model = umx_torch.from_canonical_file(path)
    return umx_torch.separate_track(model, audio[None], shifts=0, split=True, overlap=0.25, rng=0)[0].numpy()


def test_umx_canonical_float32(inputs, umx_expected, tmp_path: Path, capsys) -> None:
    """Open-Unmix defaults as ``umx``: 32-bit float WAV, nothing clipped: equal to ``Separator.separate``."""
    code, out, err = run([inputs.excerpt, "--model", inputs.umxhq, "--framework", "torch", "-o", tmp_path], capsys)
    assert code == 0, err
    folder = tmp_path / "umxhq" / "excerpt"
    assert files_under(tmp_path) == [f"umxhq/excerpt/{t}.wav" for t in sorted(UMX_TARGETS)]
    assert f"{inputs.excerpt}: 3.0 s of audio" in out and "real-time factor" in out
    import soundfile as sf

    assert sf.info(str(folder / "vocals.wav")).subtype == "FLOAT"
    _, expected = umx_expected
    check(read_stems(folder, UMX_TARGETS), expected, "data.audio", "float32", what="umx torch float32 stems")


def test_umx_upstream_folder_in_memory(inputs, umx_expected, tmp_path: Path, capsys) -> None:
    """``--model`` an upstream folder: converted in memory (nothing written beside it), same stems; ``--ext flac
    --int16`` and ``python -m umx_torch separate`` (the same code) with the model name from the folder."""
    before = sorted(p.name for p in inputs.umxhq_folder.iterdir())
    argv = ["separate", str(inputs.excerpt), "--model", str(inputs.umxhq_folder), "-o", str(tmp_path)]
    code = port_main("torch", [*argv, "--ext", "flac", "--int16", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == "" and sorted(p.name for p in inputs.umxhq_folder.iterdir()) == before
    folder = tmp_path / inputs.umxhq_folder.name / "excerpt"
    import soundfile as sf

    assert sf.info(str(folder / "bass.flac")).subtype == "PCM_16"
    _, expected = umx_expected
    check(read_stems(folder, UMX_TARGETS, "flac"), expected, "data.pcm16", "float32", what="umx torch flac int16")


def test_umx_options_two_stems_filename_residual(inputs, umx_expected, tmp_path: Path, capsys) -> None:
    """``--two-stems vocals`` (no_vocals = the sum of the others) with a ``--filename`` template; ``--residual``
    with a name and ``--stems``."""
    audio, expected = umx_expected
    base = [inputs.excerpt, "--model", inputs.umxhq, "--framework", "torch", "-o", tmp_path, "-q"]
    code, _, err = run([*base, "--two-stems", "vocals", "--filename", "{track}_{stem}.{ext}"], capsys)
    assert code == 0, err
    assert files_under(tmp_path) == ["umxhq/excerpt_no_vocals.wav", "umxhq/excerpt_vocals.wav"]
    got = read_stems(tmp_path / "umxhq", ["excerpt_vocals", "excerpt_no_vocals"])
    check(got[0], expected[0], "data.audio", "float32", what="two stems: vocals")
    check(got[1], expected[1:].sum(axis=0), "data.audio", "float32", what="two stems: no_vocals")

    code, _, err = run(
        [*base, "-o", tmp_path / "res", "--residual", "accompaniment", "--stems", "vocals,accompaniment"], capsys
    )
    assert code == 0, err
    assert files_under(tmp_path / "res") == ["umxhq/excerpt/accompaniment.wav", "umxhq/excerpt/vocals.wav"]
    separator = umx_torch.from_canonical_file(inputs.umxhq, niter=1, wiener_win_len=300, residual=True)
    with_residual = separator.separate(audio[None])[0].numpy()
    got = read_stems(tmp_path / "res" / "umxhq" / "excerpt", ["vocals", "accompaniment"])
    check(got, with_residual[[0, 4]], "data.audio", "float32", what="residual named accompaniment")


def test_demucs_defaults_int16_rescaled(inputs, tmp_path: Path, capsys) -> None:
    """Demucs defaults as ``demucs.separate``: split into the model's segments, 16-bit WAV, each stem divided by
    ``max(1.01 * peak, 1)``; the upstream package itself as ``--model`` gives the same files."""
    code, _, err = run([inputs.clip, "--model", inputs.demucs, "--framework", "torch", "-o", tmp_path, "-q"], capsys)
    assert code == 0, err
    audio, _ = read_audio_file(inputs.clip)
    expected = demucs_expected(inputs.demucs, audio)
    expected = np.stack([s / max(1.01 * np.abs(s).max(), 1.0) for s in expected])  # demucs 2.0.3 separate.py
    sources = ("drums", "bass", "other", "vocals")
    import soundfile as sf

    assert sf.info(str(tmp_path / "demucs_small" / "clip" / "drums.wav")).subtype == "PCM_16"
    check(read_stems(tmp_path / "demucs_small" / "clip", sources), expected, "data.pcm16", "float32", what="demucs")
    code, _, err = run(
        [inputs.clip, "--model", inputs.demucs_package, "--framework", "torch", "-o", tmp_path / "p", "-q"], capsys
    )
    assert code == 0, err
    for s in sources:
        a = read_audio_file(tmp_path / "p" / "demucs_small" / "clip" / f"{s}.wav")[0]
        b = read_audio_file(tmp_path / "demucs_small" / "clip" / f"{s}.wav")[0]
        check(a, b, "data.audio", "float32", what=f"upstream package vs its canonical file: {s}")


def test_folder_batch_with_corrupt_and_mono_22k(inputs, tmp_path: Path, capsys) -> None:
    """A folder of three files: the clip, a corrupt file, a mono 22.05 kHz 16-bit file. The corrupt one is
    reported by name and the batch goes on; the mono file is resampled and upmixed; the exit status is 1."""
    import soundfile as sf

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    audio, rate = read_audio_file(inputs.excerpt)
    (folder / "a_clip.wav").write_bytes(inputs.excerpt.read_bytes())
    (folder / "b_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    mono = resample(audio.mean(axis=0), rate, 22050)
    sf.write(str(folder / "sub" / "c_mono.wav"), mono, 22050, subtype="PCM_16")
    code, out, err = run([folder, "--model", inputs.demucs, "--framework", "torch", "-o", tmp_path / "out"], capsys)
    assert code == 1
    assert f"{folder / 'b_corrupt.wav'}: cannot read audio" in err and "1 of 3 file(s) failed" in err
    assert "resampled from 22050 Hz, mono upmixed" in out
    written = files_under(tmp_path / "out")
    assert [w for w in written if "b_corrupt" in w] == []
    assert len(written) == 8
    mono_read, _ = read_audio_file(folder / "sub" / "c_mono.wav")
    up = np.repeat(resample(mono_read, 22050, 44100), 2, axis=0)
    expected = demucs_expected(inputs.demucs, up)
    expected = np.stack([s / max(1.01 * np.abs(s).max(), 1.0) for s in expected])
    got = read_stems(tmp_path / "out" / "demucs_small" / "c_mono", ("drums", "bass", "other", "vocals"))
    check(got, expected, "data.pcm16", "float32", what="mono 22.05 kHz resampled and upmixed")


def test_start_duration_mp3_round_trip(inputs, tmp_path: Path, capsys) -> None:
    """``--start/--duration`` take the excerpt (as ``umx``); ``--ext mp3`` goes through ffmpeg's lame encoder and
    reads back close to the stems (the ``data.mp3`` row)."""
    argv = [inputs.clip, "--model", inputs.demucs, "--framework", "torch", "-o", tmp_path, "-q", "--start", "1.5"]
    code, _, err = run([*argv, "--duration", "3", "--ext", "mp3", "--clip-mode", "none"], capsys)
    assert code == 0, err
    audio, rate = read_audio_file(inputs.clip)
    excerpt = audio[:, round(1.5 * rate) : round(4.5 * rate)]
    expected = demucs_expected(inputs.demucs, excerpt)
    got = read_stems(tmp_path / "demucs_small" / "clip", ("drums", "bass", "other", "vocals"), "mp3")
    assert got.shape == expected.shape
    check(got, expected, "data.mp3", "float32", what="mp3 320 kbit/s round trip")


def test_module_entry_point_help() -> None:
    """``python -m umx_torch separate --help`` reaches this command's parser."""
    done = subprocess.run([sys.executable, "-m", "umx_torch", "separate", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "python -m umx_torch separate" in done.stdout and "--segment-seconds" in done.stdout
