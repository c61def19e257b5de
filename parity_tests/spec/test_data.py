"""The training data pipeline (unmix.data), NumPy only: both environments, on seeded synthetic WAV roots.

Semantics of upstream's sampling and augmentations are pinned by rebuilding items from the documented draws;
the upstream modules themselves are compared in parity_tests/upstream/test_data_upstream.py (main environment).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from core_spec.configs import STFTConfig, UMXConfig
from core_spec.reference.transforms import stft
from core_spec.tolerances import check
from core_spec.training import DemucsTrainConfig, UMXTrainConfig, input_scaler_weights
from parity_tests.tiny_musdb import SOURCES, make_synthetic_root, make_tiny_musdb
from unmix.data import (
    DataError,
    DemucsDataset,
    UMXDataset,
    audio_info,
    audio_io,
    batch_indices,
    batches,
    demucs_augment,
    open_tracks,
    read_audio,
    shard,
    umx_statistics,
    write_wav,
)
from unmix.data.augment import (
    augment_channelswap,
    augment_gain,
    draw_remix,
    flip_channels,
    flip_sign,
    remix,
    scale,
    shift,
)

RATE = 8000  # small files, fast tests
TRACKS = {"train": ("a", "b", "c"), "valid": ("v",)}
SECONDS = {"a": 1.0, "b": 1.5, "c": 0.75, "v": 1.25}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_root(tmp_path_factory.mktemp("root"), TRACKS, SECONDS, rate=RATE)


def umx_recipe(**kw) -> UMXTrainConfig:
    defaults = dict(seq_dur=0.5, samples_per_track=4, batch_size=4)
    return UMXTrainConfig(**{**defaults, **kw})


# --- reading --------------------------------------------------------------------------------------------------


def test_open_tracks_wav_layout(root: Path) -> None:
    train = open_tracks(root, "train")
    assert [t.name for t in train] == ["a", "b", "c"]
    assert all(t.rate == RATE and t.channels == 2 and t.has_mixture for t in train)
    assert [t.frames for t in train] == [int(SECONDS[n] * RATE) for n in "abc"]
    assert [t.name for t in open_tracks(root, "valid")] == ["v"]
    stems = train[1].load(0.25, 0.5)
    assert set(stems) == set(SOURCES) and all(
        a.shape == (2, RATE // 2) and a.dtype == np.float32 for a in stems.values()
    )
    # the mixture file is the exact sum of the 16-bit stems
    np.testing.assert_array_equal(train[1].load_mixture(0.25, 0.5), np.sum(list(stems.values()), axis=0))


def test_read_audio_partial_and_both_readers(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = root / "train" / "b" / "vocals.wav"
    full, rate = read_audio(path)
    part, _ = read_audio(path, 100, 50)
    np.testing.assert_array_equal(part, full[:, 100:150])
    tail, _ = read_audio(path, full.shape[1] - 10, 50)  # beyond the end: fewer frames
    assert tail.shape == (2, 10)
    monkeypatch.setattr(audio_io, "_soundfile", lambda: None)  # the scipy reader (what .venv-nnabla uses)
    np.testing.assert_array_equal(read_audio(path, 100, 50)[0], part)
    assert audio_info(path).frames == full.shape[1] and rate == RATE


def test_single_track_folder_and_source_folders(tmp_path: Path) -> None:
    make_synthetic_root(tmp_path / "one", {"x": ("song",)}, 0.5, rate=RATE)
    (track,) = open_tracks(tmp_path / "one" / "x" / "song", "valid")
    assert track.name == "song" and set(track.sources) == set(SOURCES)
    folders = tmp_path / "folders" / "train"
    for i, source in enumerate(SOURCES):
        for k in range(2):
            write_wav(folders / source / f"take{k}.wav", np.full((2, RATE), 0.01 * (i + 1)), RATE)
    tracks = open_tracks(tmp_path / "folders", "train")
    assert len(tracks) == 8 and all(len(t.sources) == 1 for t in tracks)
    with pytest.raises(DataError, match="random_track_mix"):
        UMXDataset(tracks, umx_recipe(random_track_mix=False), 0)
    x, y = UMXDataset(tracks, umx_recipe(source_augmentations=()), 0)[3]
    check(x, np.full((2, RATE // 2), 0.1), "data.pcm16", "float32", what="sum of folder tracks")  # .01+.02+.03+.04
    check(y, np.full((2, RATE // 2), 0.04), "data.pcm16", "float32", what="vocals folder track")


def test_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_tracks(tmp_path / "nowhere")
    broken = make_synthetic_root(tmp_path / "broken", {"train": ("t",)}, 0.5, rate=RATE)
    (broken / "train" / "t" / "bass.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"bass\.wav"):
        open_tracks(broken)
    mixed = make_synthetic_root(tmp_path / "mixed", {"train": ("t",)}, 0.5, rate=RATE)
    write_wav(mixed / "train" / "t" / "bass.wav", np.zeros((2, 4000)), 16000)
    with pytest.raises(DataError, match="Hz"):
        open_tracks(mixed)
    with pytest.raises(DataError, match="44100 Hz"):
        open_tracks(root, sample_rate=44100)
    with pytest.raises(DataError, match="channel"):
        open_tracks(root, nb_channels=1)
    mono = make_synthetic_root(tmp_path / "mono", {"train": ("m",)}, 1.0, rate=RATE, channels=1)
    with pytest.raises(DataError, match="channel"):
        UMXDataset(open_tracks(root) + open_tracks(mono), umx_recipe(), 0)
    with pytest.raises(DataError, match="expects 2"):
        UMXDataset(open_tracks(mono), umx_recipe(), 0, nb_channels=2)
    with pytest.raises(DataError, match="44100"):
        UMXDataset(open_tracks(root), umx_recipe(), 0, sample_rate=44100)
    with pytest.raises(DataError, match="seq_dur"):
        UMXDataset(open_tracks(root), umx_recipe(seq_dur=5.0), 0)
    with pytest.raises(DataError, match="not a source"):
        UMXDataset(open_tracks(root), umx_recipe(target="piano"), 0)
    with pytest.raises(ValueError, match="unknown source augmentation"):
        UMXDataset(open_tracks(root), umx_recipe(source_augmentations=("reverb",)), 0)
    with pytest.raises(FileNotFoundError, match="valid"):
        open_tracks(make_synthetic_root(tmp_path / "train_only", {"train": ("t",)}, 0.25, rate=RATE), "valid")


def test_tiny_musdb(tmp_path: Path) -> None:
    dest = make_tiny_musdb(tmp_path / "tiny")
    origin = json.loads((dest / "origin.json").read_text())["origin"]
    assert origin in ("stempeg", "synthetic")
    train, valid = open_tracks(dest, "train", sample_rate=44100), open_tracks(dest, "valid", sample_rate=44100)
    assert len(train) == 2 and len(valid) == 1 and all(t.frames == 88200 and t.channels == 2 for t in train + valid)


# --- Open-Unmix examples --------------------------------------------------------------------------------------


def test_umx_train_items_shapes_and_reproducibility(root: Path) -> None:
    tracks = open_tracks(root)
    ds = UMXDataset(tracks, umx_recipe(), rng_seed=7)
    assert len(ds) == 3 * 4
    x, y = ds[5]
    assert x.shape == y.shape == (2, RATE // 2) and x.dtype == y.dtype == np.float32
    again = UMXDataset(tracks, umx_recipe(), rng_seed=7)
    for i in (0, 5, 11):  # an item does not depend on which items were read before
        np.testing.assert_array_equal(again[i][0], ds[i][0])
    other_seed = UMXDataset(tracks, umx_recipe(), rng_seed=8)
    assert not np.array_equal(other_seed[5][0], x)
    ds.set_epoch(1)
    assert not np.array_equal(ds[5][0], x)
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[5][0], x)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_umx_train_item_semantics(root: Path) -> None:
    """Each item is rebuilt from its draws: per source a random track (random_track_mix), its own start
    U[0, duration - seq_dur), int(seq_dur * rate) samples, gain U[0.25, 1.25), channel swap with p = 1/2."""
    tracks = open_tracks(root)
    recipe = umx_recipe()
    ds = UMXDataset(tracks, recipe, rng_seed=3)
    for index in (0, 6):
        rng = np.random.default_rng([3, 0, index])
        stems = {}
        for source in ds.sources:
            track = tracks[int(rng.integers(len(tracks)))]
            start = int(rng.uniform(0.0, track.duration - recipe.seq_dur) * RATE)
            audio = read_audio(track.files[source], start, RATE // 2)[0]
            audio = audio * np.float32(0.25 + rng.random() * 1.0)
            stems[source] = audio[::-1] if rng.random() < 0.5 else audio
        x, y = ds[index]
        np.testing.assert_array_equal(y, stems["vocals"])
        check(x, np.sum(list(stems.values()), axis=0), "data.audio", "float32", what=f"mixture of item {index}")


def test_umx_augmentation_statistics() -> None:
    rng = np.random.default_rng(0)
    audio = np.stack([np.ones(4, np.float32), 2 * np.ones(4, np.float32)])
    gains = np.array([augment_gain(audio, rng)[0, 0] for _ in range(4000)])
    assert 0.25 <= gains.min() and gains.max() < 1.25 and abs(gains.mean() - 0.75) < 0.02
    swapped = np.mean([augment_channelswap(audio, rng)[0, 0] == 2 for _ in range(4000)])
    assert abs(swapped - 0.5) < 0.03
    mono = audio[:1]
    assert augment_channelswap(mono, rng) is mono


def test_umx_without_track_mix_and_accompaniment(root: Path) -> None:
    tracks = open_tracks(root)
    ds = UMXDataset(tracks, umx_recipe(random_track_mix=False, source_augmentations=(), target="accompaniment"), 1)
    rng = np.random.default_rng([1, 0, 9])
    track = tracks[9 // 4]  # no track mixing: item i comes from track i // samples_per_track
    stems = {}
    for source in ds.sources:
        start = int(rng.uniform(0.0, track.duration - 0.5) * RATE)
        stems[source] = read_audio(track.files[source], start, RATE // 2)[0]
    x, y = ds[9]
    check(y, stems["drums"] + stems["bass"] + stems["other"], "data.audio", "float32", what="accompaniment")
    check(x, y + stems["vocals"], "data.audio", "float32", what="mixture")


def test_umx_valid_items(root: Path) -> None:
    (track,) = tracks = open_tracks(root, "valid")
    ds = UMXDataset(tracks, umx_recipe(), rng_seed=0, train=False)
    assert len(ds) == 1
    x, y = ds[0]
    np.testing.assert_array_equal(x, track.load_mixture())
    np.testing.assert_array_equal(y, track.load()["vocals"])


# --- Demucs examples and augmentations ------------------------------------------------------------------------


def demucs_recipe(**kw) -> DemucsTrainConfig:
    return DemucsTrainConfig(**{**dict(data_stride=1000, batch_size=4, remix_group_size=2), **kw})


def test_demucs_segments(root: Path) -> None:
    tracks = open_tracks(root)
    valid_length = 3000
    ds = DemucsDataset(tracks, demucs_recipe(), valid_length, normalize=False)
    length = valid_length + 1000
    expected = [int(np.ceil((t.frames - length) / 1000) + 1) if t.frames >= length else 1 for t in tracks]
    assert ds.num_examples == expected and len(ds) == sum(expected)
    last_of_b = expected[0] + expected[1] - 1
    item = ds[last_of_b]
    assert item.shape == (4, 2, length) and item.dtype == np.float32
    start = (expected[1] - 1) * 1000
    b = tracks[1]
    direct = np.stack([read_audio(b.files[s], start, length)[0] for s in SOURCES])
    n = direct.shape[-1]
    np.testing.assert_array_equal(item[..., :n], direct)
    np.testing.assert_array_equal(item[..., n:], 0)  # zero-padded at the end
    valid = DemucsDataset(open_tracks(root, "valid"), demucs_recipe(), valid_length, train=False, normalize=False)
    assert len(valid) == 1 and valid[0].shape == (4, 2, int(SECONDS["v"] * RATE))


def test_demucs_normalisation_and_channels(root: Path, tmp_path: Path) -> None:
    tracks = open_tracks(root)
    ds = DemucsDataset(tracks, demucs_recipe(), 3000)  # upstream default: normalised by the mixture
    raw = DemucsDataset(tracks, demucs_recipe(), 3000, normalize=False)
    mono = tracks[0].load_mixture().astype(np.float64).mean(0)
    check(ds[0], (raw[0] - mono.mean()) / mono.std(ddof=1), "data.audio", "float32", what="normalised sources")
    mono_root = make_synthetic_root(tmp_path, {"train": ("m",)}, 1.0, rate=RATE, channels=1)
    item = DemucsDataset(open_tracks(mono_root), demucs_recipe(), 3000, normalize=False)[0]
    np.testing.assert_array_equal(item[:, 0], item[:, 1])  # mono duplicated, as demucs's convert_audio_channels
    with pytest.raises(DataError, match="Hz"):
        DemucsDataset(tracks, demucs_recipe(), 3000, sample_rate=44100)


def test_demucs_augment_pipeline() -> None:
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((4, 4, 2, 1100)).astype(np.float32)
    cfg = demucs_recipe(data_stride=100)
    out = demucs_augment(batch, cfg, np.random.default_rng(5))
    assert out.shape == (4, 4, 2, 1000) and out.dtype == np.float32
    np.testing.assert_array_equal(out, demucs_augment(batch, cfg, np.random.default_rng(5)))
    np.testing.assert_array_equal(demucs_augment(batch, cfg, rng, train=False), batch[..., :1000])
    plain = demucs_augment(batch, dataclasses.replace(cfg, augment=False), np.random.default_rng(5))
    offsets = np.random.default_rng(5).integers(0, 100, size=(4, 4))
    for b in range(4):
        for s in range(4):
            np.testing.assert_array_equal(plain[b, s], batch[b, s, :, offsets[b, s] : offsets[b, s] + 1000])
    with pytest.raises(ValueError, match="divisible"):
        demucs_augment(batch[:3], cfg, rng)


def test_demucs_augment_semantics() -> None:
    rng = np.random.default_rng(1)
    wav = rng.standard_normal((4, 3, 2, 50))
    signs = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(flip_sign(wav, signs), wav * np.where(signs, 1, -1)[..., None, None])
    left = signs
    flipped = flip_channels(wav, left)
    np.testing.assert_array_equal(flipped[left == 1], wav[left == 1][:, ::-1])
    np.testing.assert_array_equal(flipped[left == 0], wav[left == 0])
    scales = rng.uniform(0.25, 1.25, (4, 3))
    np.testing.assert_allclose(scale(wav, scales), wav * scales[..., None, None])
    perms = draw_remix(rng, 4, 3, 2)
    mixed = remix(wav, perms)
    for g in range(2):
        for i in range(2):
            for s in range(3):
                np.testing.assert_array_equal(mixed[2 * g + i, s], wav[2 * g + perms[g, i, s], s])
    assert sorted(perms[0, :, 0]) == [0, 1]
    shifted = shift(wav, 10, np.full((4, 3), 3))
    np.testing.assert_array_equal(shifted, wav[..., 3:43])
    # distribution of the draws: flip probabilities 1/2, scales in range
    many = demucs_augment(np.ones((64, 4, 2, 20), np.float32), demucs_recipe(data_stride=4), rng)
    values = many[:, :, 0, 0]
    assert 0.25 <= np.abs(values).min() and np.abs(values).max() < 1.25
    assert abs(np.mean(values < 0) - 0.5) < 0.08


# --- batching -------------------------------------------------------------------------------------------------


def test_batches(root: Path) -> None:
    ds = UMXDataset(open_tracks(root), umx_recipe(), rng_seed=0)
    got = list(batches(ds, 5, np.random.default_rng(0)))
    assert len(got) == len(ds) // 5 and got[0][0].shape == (5, 2, RATE // 2)
    indices = batch_indices(len(ds), 5, np.random.default_rng(0))
    np.testing.assert_array_equal(got[1][1][2], ds[int(indices[1][2])][1])
    assert len(batch_indices(12, 5, shuffle=False, drop_last=False)) == 3
    parts = [shard(np.arange(8), r, 2) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(8))
    sharded = list(batches(ds, 4, np.random.default_rng(0), rank=1, world_size=2))
    full = list(batches(ds, 4, np.random.default_rng(0)))
    np.testing.assert_array_equal(sharded[0][0], full[0][0][2:])
    with pytest.raises(ValueError, match="rng"):
        batch_indices(4, 2)


# --- input statistics -----------------------------------------------------------------------------------------


def test_umx_statistics(root: Path) -> None:
    tracks = open_tracks(root)
    config = UMXConfig(nb_bins=129, hidden_size=16, max_bin=40)
    fft = STFTConfig(n_fft=256, n_hop=64)
    mean, std = umx_statistics(tracks, config, fft)
    frames = np.concatenate(
        [np.abs(stft(t.load_mixture(), 256, 64, center=False)).mean(0).T for t in tracks]
    )  # (all frames, bins): one pass, no blocks
    check(mean, frames.mean(0), "data.statistics", "float64", what="statistics mean")
    expected_std = np.maximum(frames.std(0), 1e-4 * frames.std(0).max())
    check(std, expected_std, "data.statistics", "float64", what="statistics std")
    weights = input_scaler_weights(mean, std, config)
    assert weights["input_mean"].shape == (40,)
    check(weights["input_scale"], 1 / std[:40], "data.statistics", "float32", what="input_scale (float32) = 1 / std")
    # the default STFT of a bare UMXConfig: n_fft = 2 (nb_bins - 1), hop n_fft / 4
    check(umx_statistics(tracks, config)[1], std, "data.statistics", "float64", what="default stft")


def test_umx_statistics_silence(tmp_path: Path) -> None:
    """A silent bin set (here every bin) gets sklearn's scale 1, then upstream's floor 1e-4 * max."""
    silent = tmp_path / "train" / "s"
    for s in SOURCES:
        write_wav(silent / f"{s}.wav", np.zeros((2, 2000)), RATE)
    mean, std = umx_statistics(open_tracks(tmp_path), UMXConfig(nb_bins=129, hidden_size=16, max_bin=40))
    np.testing.assert_array_equal(mean, 0)
    np.testing.assert_array_equal(std, 1)
