"""unmix.data against the live upstream code (main environment, torch): demucs 2.0.3's augment modules and
``Wavset``, openunmix 1.3.0's source augmentations and input statistics, and the training fixtures' reproduction.

Upstream draws from torch's global generator; the same draws are regenerated from the same torch seed (in the
modules' order) and fed to the NumPy transforms, which must then give the same batch exactly.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from core_spec.configs import STFTConfig, UMXConfig
from core_spec.tolerances import check
from core_spec.training import DemucsTrainConfig
from parity_tests.oracle import torch
from parity_tests.tiny_musdb import SOURCES, make_synthetic_root, make_tiny_musdb
from unmix.data import DemucsDataset, open_tracks, umx_statistics
from unmix.data.augment import (
    augment_channelswap,
    augment_gain,
    flip_channels,
    flip_sign,
    remix,
    scale,
    shift,
)

pytestmark = pytest.mark.upstream

B, S, C, T = 8, 4, 2, 700
SHIFT = 100


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_musdb(tmp_path_factory.mktemp("tiny_musdb"))


def _batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, S, C, T)).astype(np.float32)


def _train(module):
    return module.train()


@pytest.mark.parametrize("seed", [0, 1])
def test_demucs_augment_modules(seed: int) -> None:
    from demucs.augment import FlipChannels, FlipSign, Remix, Scale, Shift

    wav = _batch(seed)
    x = torch.from_numpy(wav)
    cases = {
        "Shift": (Shift(SHIFT), lambda: shift(wav, SHIFT, torch.randint(SHIFT, [B, S, 1, 1])[..., 0, 0].numpy())),
        "FlipChannels": (FlipChannels(), lambda: flip_channels(wav, torch.randint(2, (B, S, 1, 1))[..., 0, 0].numpy())),
        "FlipSign": (
            FlipSign(),
            lambda: flip_sign(wav, torch.randint(2, (B, S, 1, 1), dtype=torch.float32)[..., 0, 0].numpy()),
        ),
        "Scale": (Scale(), lambda: scale(wav, torch.empty(B, S, 1, 1).uniform_(0.25, 1.25)[..., 0, 0].numpy())),
        "Remix": (
            Remix(group_size=4),
            lambda: remix(wav, torch.argsort(torch.rand(B // 4, 4, S, 1, 1), dim=1)[..., 0, 0].numpy()),
        ),
    }
    for name, (module, ours) in cases.items():
        torch.manual_seed(100 + seed)
        expected = _train(module)(x.clone()).numpy()
        torch.manual_seed(100 + seed)
        np.testing.assert_array_equal(ours(), expected, err_msg=name)
    # eval mode: Shift keeps the first frames, the others do nothing
    np.testing.assert_array_equal(shift(wav, SHIFT, None), Shift(SHIFT).eval()(x).numpy())


def test_demucs_augment_pipeline_as_upstream() -> None:
    """demucs/__main__.py's Sequential(Shift, FlipSign, FlipChannels, Scale, Remix) vs the NumPy transforms
    composed in :func:`unmix.data.demucs_augment`'s order, on the same draws."""
    from demucs.augment import FlipChannels, FlipSign, Remix, Scale, Shift

    wav = _batch(3)
    torch.manual_seed(7)
    pipeline = torch.nn.Sequential(Shift(SHIFT), FlipSign(), FlipChannels(), Scale(), Remix(group_size=4)).train()
    expected = pipeline(torch.from_numpy(wav)).numpy()
    torch.manual_seed(7)
    out = shift(wav, SHIFT, torch.randint(SHIFT, [B, S, 1, 1])[..., 0, 0].numpy())
    out = flip_sign(out, torch.randint(2, (B, S, 1, 1), dtype=torch.float32)[..., 0, 0].numpy())
    out = flip_channels(out, torch.randint(2, (B, S, 1, 1))[..., 0, 0].numpy())
    out = scale(out, torch.empty(B, S, 1, 1).uniform_(0.25, 1.25)[..., 0, 0].numpy())
    out = remix(out, torch.argsort(torch.rand(B // 4, 4, S, 1, 1), dim=1)[..., 0, 0].numpy())
    np.testing.assert_array_equal(out, expected)


class _TorchDraws:
    """A ``numpy.random.Generator`` stand-in whose ``random()`` returns torch's next uniform draw, in the way the
    openunmix augmentation being mirrored draws it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def random(self) -> float:
        if self.kind == "gain":
            return float(torch.rand(1))
        return float(torch.tensor(1.0).uniform_())


def test_umx_source_augmentations() -> None:
    from openunmix.data import _augment_channelswap, _augment_gain

    audio = np.random.default_rng(0).standard_normal((2, 500)).astype(np.float32)
    for seed in range(6):
        torch.manual_seed(seed)
        expected = _augment_gain(torch.from_numpy(audio)).numpy()
        torch.manual_seed(seed)
        check(augment_gain(audio, _TorchDraws("gain")), expected, "data.audio", "float32", what=f"gain, seed {seed}")
        torch.manual_seed(seed)
        expected = _augment_channelswap(torch.from_numpy(audio)).numpy()
        torch.manual_seed(seed)
        np.testing.assert_array_equal(augment_channelswap(audio, _TorchDraws("swap")), expected)


def _soundfile_torchaudio() -> types.SimpleNamespace:
    """The two torchaudio calls demucs.wav makes, over soundfile (no torchaudio build works beside torch 2.13)."""
    import soundfile

    def info(path):
        i = soundfile.info(path)
        return types.SimpleNamespace(num_frames=i.frames, sample_rate=i.samplerate)

    def load(path, frame_offset=0, num_frames=-1):
        stop = None if num_frames < 0 else frame_offset + num_frames
        data, rate = soundfile.read(path, start=frame_offset, stop=stop, dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), rate

    return types.SimpleNamespace(info=info, load=load)


@pytest.mark.parametrize("normalize", [False, True])
def test_demucs_dataset_matches_wavset(tiny: Path, normalize: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import demucs.wav

    monkeypatch.setattr(demucs.wav, "ta", _soundfile_torchaudio())
    recipe = DemucsTrainConfig(data_stride=4410)
    valid_length = 30000
    for subset, train in (("train", True), ("valid", False)):
        metadata = demucs.wav._build_metadata(tiny / subset, list(SOURCES))
        upstream = demucs.wav.Wavset(
            tiny / subset,
            sorted(metadata.items()),
            list(SOURCES),
            length=valid_length + recipe.data_stride if train else None,
            stride=recipe.data_stride if train else None,
            normalize=normalize,
        )
        ours = DemucsDataset(open_tracks(tiny, subset), recipe, valid_length, train=train, normalize=normalize)
        assert len(ours) == len(upstream)
        for index in range(len(ours)):
            expected = upstream[index].numpy()
            check(ours[index], expected, "data.audio", "float32", what=f"Wavset {subset} {index}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_umx_statistics_vs_openunmix(tiny: Path, dtype: str) -> None:
    """get_statistics's computation (openunmix's encoder, mean over channels, mean/std over all frames, the floor)
    with upstream's STFT module in ``dtype`` vs :func:`umx_statistics` (float64, blockwise)."""
    from openunmix.transforms import ComplexNorm, make_filterbanks

    tdt = getattr(torch, dtype)
    tracks = open_tracks(tiny, "train")
    fft = STFTConfig(n_fft=4096, n_hop=1024)
    mean, std = umx_statistics(tracks, UMXConfig(), fft)
    stft_module, _ = make_filterbanks(n_fft=fft.n_fft, n_hop=fft.n_hop, center=False)
    if dtype == "float64":  # the float64 Hann window, so that only the accumulation order differs
        stft_module.window = torch.nn.Parameter(torch.hann_window(fft.n_fft, dtype=torch.float64), requires_grad=False)
    encoder = torch.nn.Sequential(stft_module, ComplexNorm(mono=False)).to(tdt)
    frames = []
    with torch.no_grad():
        for track in tracks:
            x = torch.from_numpy(track.load_mixture()).to(tdt)
            frames.append(encoder(x[None]).mean(1).permute(0, 2, 1)[0].double().numpy())
    frames = np.concatenate(frames)
    scale = frames.std(0)
    check(mean, frames.mean(0), "data.statistics", dtype, what=f"statistics mean vs openunmix encoder ({dtype})")
    check(std, np.maximum(scale, 1e-4 * scale.max()), "data.statistics", dtype, what=f"statistics std ({dtype})")


@pytest.mark.parametrize("name", ["umx", "demucs"])
def test_train_fixtures_reproduce(name: str) -> None:
    """The committed gradient-parity fixture is what the installed upstream computes now."""
    from parity_tests.fixtures_train import (
        TRAIN_CASES,
        _demucs_step,
        _umx_step,
        check_grads,
        check_updated,
        load_train_case,
    )

    case = load_train_case(name)
    step = _umx_step if name == "umx" else _demucs_step
    loss, grads, updated, _, _ = step(TRAIN_CASES[name], case.weights, case.inputs, torch, torch.float64)
    check(np.asarray(loss), np.asarray(case.loss), "train.loss", "float64", what=f"{name} upstream rerun")
    check_grads(grads, case, "float64", what="upstream rerun ")
    check_updated(updated, case, "float64", what="upstream rerun ")


def test_musdb_stems(tmp_path: Path) -> None:
    """A MUSDB18 stems root (musdb + ffmpeg): sample-exact excerpts of the sources and of the stored mixture."""
    import shutil

    import stempeg

    (tmp_path / "train").mkdir()
    shutil.copy(stempeg.example_stem_path(), tmp_path / "train")
    (track,) = open_tracks(tmp_path, "train", sample_rate=44100)
    decoded, _ = stempeg.read_stems(stempeg.example_stem_path())  # (5, T, C): mixture, drums, bass, other, vocals
    assert track.frames == decoded.shape[1] and track.has_mixture
    stems = track.load_frames(44100, 1000)
    excerpt = decoded[:, 44100:45100].transpose(0, 2, 1)
    for i, source in enumerate(SOURCES):  # AAC decoding from a seek point: within a 16-bit step
        assert np.abs(stems[source] - excerpt[i + 1]).max() < 2**-15, source
    assert np.abs(track.load_mixture_frames(44100, 1000) - excerpt[0]).max() < 2**-15
    with pytest.raises(FileNotFoundError, match="valid"):  # the example is not one of MUSDB's validation tracks
        open_tracks(tmp_path, "valid")


def test_musdb_validation_split(tmp_path: Path) -> None:
    """The WAV layout of MUSDB18 takes its validation tracks from musdb's own split (musdb is in .venv only)."""
    from unmix.data.tracks import musdb_validation_tracks

    names = musdb_validation_tracks()
    assert names is not None, "musdb (a main-environment dependency) provides the validation split"
    make_synthetic_root(tmp_path, {"train": (names[0], "Some Other Song")}, 0.25, rate=8000)
    assert [t.name for t in open_tracks(tmp_path, "valid")] == [names[0]]
    assert [t.name for t in open_tracks(tmp_path, "train")] == ["Some Other Song"]
