"""``python -m umx_nnabla separate`` (``unmix-separate --framework nnabla``, the same code) in the NNabla
environment, which has neither soundfile nor torch: WAV read by scipy, files written and decoded by ffmpeg, models
given as upstream-written files (committed, ``parity_tests/fixtures/checkpoints``) converted in memory or by
``unmix-convert``, and the real clip's excerpt of ``nnabla_clip.npz`` (``make_clip_fixture.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core_spec.tolerances import check
from parity_tests.fixtures import load
from unmix.audio_files import read_audio_file, resample
from unmix.separate_cli import port_main

nn = pytest.importorskip("nnabla")
import umx_nnabla  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "parity_tests" / "fixtures" / "checkpoints"
UMX_FOLDER = CHECKPOINTS / "umx_tiny_model"  # openunmix model folder written by torch.save (8 kHz, 2 targets)
DEMUCS_PACKAGE = CHECKPOINTS / "demucs_small_package.th"  # demucs.utils.save_model, channels 4, depth 4


@pytest.fixture(scope="module")
def clip_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.2 s of the stempeg clip (44.1 kHz stereo) as a float WAV file, written by scipy."""
    from scipy.io import wavfile

    arrays, _ = load("nnabla_clip")
    path = tmp_path_factory.mktemp("nnabla-clip") / "clip.wav"
    wavfile.write(path, 44100, arrays["mixture"][0].T.astype(np.float32))
    return path


def load_demucs_config():
    from weights_convert.sources import read_upstream

    return read_upstream(DEMUCS_PACKAGE).config


def separate(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = port_main("nnabla", ["separate", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return code, out, err


def read(folder: Path, names: tuple[str, ...], ext: str) -> np.ndarray:
    return np.stack([read_audio_file(folder / f"{n}.{ext}")[0] for n in names])


def test_umx_upstream_folder_resampled(clip_wav: Path, tmp_path: Path, capsys) -> None:
    """An 8 kHz Open-Unmix folder as ``--model`` (converted in memory): the 44.1 kHz clip is resampled to 8 kHz;
    the float32 WAV stems (written by ffmpeg) equal ``Separator.separate`` of the resampled samples."""
    code, out, err = separate([clip_wav, "--model", UMX_FOLDER, "-o", tmp_path], capsys)
    assert code == 0, err
    assert "resampled from 44100 Hz" in out
    audio, _ = read_audio_file(clip_wav)
    at_8k = resample(audio, 44100, 8000)
    from weights_convert.sources import read_upstream

    converted = read_upstream(UMX_FOLDER)
    expected = umx_nnabla.from_canonical(converted.config, converted.weights, niter=1).separate(at_8k[None])[0]
    got = read(tmp_path / "umx_tiny_model" / "clip", ("vocals", "drums"), "wav")
    assert read_audio_file(tmp_path / "umx_tiny_model" / "clip" / "vocals.wav")[1] == 8000
    check(got, expected, "data.audio", "float32", what="nnabla umx folder, resampled, ffmpeg-written WAV")


def test_demucs_package_flac_split(clip_wav: Path, tmp_path: Path, capsys) -> None:
    """The upstream demucs package through ``unmix-convert`` (canonical file) and ``--segment 0.5`` (split into
    overlapping chunks): 16-bit FLAC written by ffmpeg, equal to ``separate_track``."""
    from unmix.convert_cli import main as convert

    assert convert([str(DEMUCS_PACKAGE), "--out", str(tmp_path / "demucs"), "-q"]) == 0
    argv = [clip_wav, "--model", tmp_path / "demucs.safetensors", "-o", tmp_path / "o", "-q", "--segment", "0.5"]
    code, _, err = separate([*argv, "--ext", "flac", "--int16", "--clip-mode", "none", "--two-stems", "vocals"], capsys)
    assert code == 0, err
    audio, _ = read_audio_file(clip_wav)
    model = umx_nnabla.from_canonical_file(tmp_path / "demucs")
    segment = round(0.5 * 44100)
    sources = umx_nnabla.separate_track(model, audio[None], segment_length=segment, overlap=0.25, rng=0)[0]
    got = read(tmp_path / "o" / "demucs" / "clip", ("vocals", "no_vocals"), "flac")
    check(got[0], sources[3], "data.pcm16", "float32", what="nnabla demucs vocals (flac by ffmpeg)")
    check(got[1], sources[:3].sum(axis=0), "data.pcm16", "float32", what="nnabla demucs no_vocals")


def test_float64_and_gpu_are_clear_errors(clip_wav: Path, tmp_path: Path, capsys) -> None:
    code, _, err = separate([clip_wav, "--model", DEMUCS_PACKAGE, "-o", tmp_path, "--dtype", "float64"], capsys)
    assert code == 1 and "the NNabla port computes in float32 only" in err
    if not any("cuda" in b for b in nn.ext_utils.list_extensions()):
        code, _, err = separate([clip_wav, "--model", DEMUCS_PACKAGE, "-o", tmp_path, "--device", "gpu"], capsys)
        assert code == 1 and "needs the NNabla CUDA extension" in err
    with pytest.raises(ValueError, match="float32 only"):
        umx_nnabla.from_canonical(load_demucs_config(), None, dtype="float64")
    assert list(tmp_path.iterdir()) == []


def test_bad_files_without_soundfile(clip_wav: Path, tmp_path: Path, capsys) -> None:
    """scipy's WAV reader and ffmpeg give the same named errors: a corrupt WAV, an undecodable MP3, a missing file;
    the good file in the same batch is separated."""
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF1234WAVEjunk" * 8)
    (tmp_path / "bad.mp3").write_bytes(b"\xff\xfb" + bytes(range(256)) * 4)
    argv = [tmp_path / "corrupt.wav", tmp_path / "bad.mp3", tmp_path / "nope.wav", clip_wav]
    code, _, err = separate([*argv, "--model", DEMUCS_PACKAGE, "-o", tmp_path / "o", "-q"], capsys)
    assert code == 1 and "3 of 4 file(s) failed" in err
    for name, message in [("corrupt.wav", "cannot read audio"), ("bad.mp3", ": "), ("nope.wav", "no such file")]:
        assert f"{tmp_path / name}: " in err and message in err
    assert sorted(p.name for p in (tmp_path / "o" / "demucs_small_package" / "clip").iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"
    ]  # fmt: skip
