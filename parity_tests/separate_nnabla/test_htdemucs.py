"""``python -m umx_nnabla separate`` (``unmix-separate --framework nnabla``) with HTDemucs (demucs v4) in the NNabla
environment: the command's stems equal the spec's ``separate_track`` (demucs 4.1.0's ``Separator.separate_tensor``
in float64).

Models: the small traced config of :mod:`parity_tests.fixtures_htdemucs` (``SMALL``: 0.05-s segment, every
released structure) with seeded weights, written as canonical files: one model and a bag of two whose second member
has a shorter 0.04-s segment and whose weights differ per source. The track is 0.3 s of the real clip's excerpt
(``nnabla_clip.npz``: 8 segments of the model's), so every stem is a real overlap-add of several chunks. Float32
stems (written ``--float32 --clip-mode none``) are judged on the row ``htdemucs.apply`` (float32); ``--dtype
float64`` is a clear error (NNabla's CPU extension has no float64 kernels).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from core_spec.canonical import save_canonical
from core_spec.configs import BagConfig
from core_spec.reference.htdemucs_apply import separate_track as spec_separate_track
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from parity_tests.fixtures import load
from parity_tests.fixtures_htdemucs import SMALL
from unmix.audio_files import read_audio_file
from unmix.separate_cli import port_main

nn = pytest.importorskip("nnabla")
pytest.importorskip("umx_nnabla.htdemucs_apply")

SOURCES = SMALL.sources
SHORT = dataclasses.replace(SMALL, segment=(1, 25))  # a bag member trained on 0.04 s
BAG = BagConfig(models=(SMALL, SHORT), weights=((1.0, 0.5, 2.0, 1.0), (1.0, 1.5, 0.0, 1.0)))
SEEDS = {"small": 40, "bag0": 41, "bag1": 42}
FLOAT = ["--float32", "--clip-mode", "none"]


@dataclasses.dataclass(frozen=True)
class Models:
    clip: Path  # 0.3 s of the real clip, float WAV
    audio: np.ndarray  # what the command reads from it: (2, 13230) float32
    small: Path  # canonical SMALL
    bag: Path  # canonical bag of two
    weights: dict[str, dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    from scipy.io import wavfile

    root = tmp_path_factory.mktemp("htdemucs-separate-nnabla")
    arrays, _ = load("nnabla_clip")
    clip = root / "clip.wav"
    wavfile.write(clip, SMALL.samplerate, arrays["mixture"][0, :, : int(0.3 * SMALL.samplerate)].T.astype(np.float32))
    weights = {
        "small": random_weights(SMALL, SEEDS["small"]),
        "bag0": random_weights(SMALL, SEEDS["bag0"]),
        "bag1": random_weights(SHORT, SEEDS["bag1"]),
    }
    save_canonical(root / "small.safetensors", weights["small"], SMALL)
    flat = {f"models.{i}.{k}": v for i, tag in enumerate(("bag0", "bag1")) for k, v in weights[tag].items()}
    save_canonical(root / "bag.safetensors", flat, BAG)
    audio, _ = read_audio_file(clip)
    return Models(clip, audio, root / "small.safetensors", root / "bag.safetensors", weights)


def separate(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = port_main("nnabla", ["separate", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return code, out, err


def read(folder: Path, names: tuple[str, ...]) -> np.ndarray:
    return np.stack([read_audio_file(folder / f"{n}.wav")[0] for n in names])


def test_defaults_equal_spec(models: Models, tmp_path: Path, capsys) -> None:
    """demucs 4.1.0's defaults (one shift, seeded 0; split at the training segment; overlap 0.25)."""
    code, _, err = separate([models.clip, "--model", models.small, *FLOAT, "-o", tmp_path, "-q"], capsys)
    assert code == 0, err
    got = read(tmp_path / "small" / "clip", SOURCES)
    expected = spec_separate_track(models.weights["small"], SMALL, models.audio.astype(np.float64), shifts=1, rng=0)
    check(got, expected, "htdemucs.apply", "float32", what="unmix-separate --framework nnabla")


def test_bag_two_stems(models: Models, tmp_path: Path, capsys) -> None:
    """A canonical bag of two at its smallest segment, ``--two-stems vocals --other-method minus``, no shifts."""
    argv = [models.clip, "--model", models.bag, "--segment", "0.04", "--shifts", "0", "--two-stems", "vocals",
            "--other-method", "minus", *FLOAT, "-o", tmp_path, "-q"]  # fmt: skip
    code, _, err = separate(argv, capsys)
    assert code == 0, err
    wav = models.audio.astype(np.float64)
    per_model = [models.weights["bag0"], models.weights["bag1"]]
    stems = spec_separate_track(per_model, BAG, wav, shifts=0, segment=0.04)
    got = read(tmp_path / "bag" / "clip", ("vocals", "minus_vocals"))
    check(got[0], stems[3], "htdemucs.apply", "float32", what="nnabla bag: vocals")
    check(got[1], wav - stems[3], "htdemucs.apply", "float32", what="nnabla bag: minus_vocals")


def test_float64_is_a_clear_error(models: Models, tmp_path: Path, capsys) -> None:
    code, _, err = separate([models.clip, "--model", models.small, "--dtype", "float64", "-o", tmp_path], capsys)
    assert code == 1 and "the NNabla port computes in float32 only" in err, err
    assert not any(tmp_path.rglob("*.wav"))
