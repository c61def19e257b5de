"""The framework-neutral pieces of the training loops: unmix.run_folder and the helpers of core_spec.training
(NumPy only: runs in both environments)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from core_spec.configs import UMXConfig, demucs_preset, umx_preset
from core_spec.tolerances import check
from core_spec.training import (
    DemucsTrainConfig,
    UMXTrainConfig,
    initial_weights,
    shard_batch,
    train_stft,
)
from unmix.data import DataError
from unmix.run_folder import RunFolder, RunState, atomic_write, check_out, jsonable, read_state, run_name
from unmix.train_setup import epoch_batches, make_datasets


def _args(out, **kwargs) -> argparse.Namespace:
    values = {"out": str(out), "resume": False, "force": False, "root": str(out), "valid_tracks": None}
    values.update(kwargs)
    return argparse.Namespace(**values)


def test_layout():
    """Every path carries the run's name (the target or ``demucs``): one folder holds several runs."""
    folder = RunFolder.for_recipe("run", "jax", UMXTrainConfig(target="drums"))
    assert folder.best.name == "drums" and folder.best_file.name == "drums.safetensors"
    assert folder.native.name == "drums-jax"
    assert folder.checkpoint.name == "checkpoint-drums-jax" and folder.state_file.parent == folder.checkpoint
    assert not folder.legacy and folder.legacy_checkpoint.name == "checkpoint-jax"
    assert RunFolder.for_recipe("run", "tf", DemucsTrainConfig()).checkpoint.name == "checkpoint-demucs-tf"
    assert run_name(DemucsTrainConfig()) == "demucs"


def test_check_out(tmp_path):
    recipe = UMXTrainConfig()
    out = tmp_path / "run"
    folder = check_out(_args(out), recipe, "torch")  # creates the folder
    assert out.is_dir() and folder.framework == "torch"
    folder.best_file.write_bytes(b"")
    with pytest.raises(FileExistsError, match="pass --resume to continue it or --force"):
        check_out(_args(out), recipe, "torch")
    check_out(_args(out, force=True), recipe, "torch")
    with pytest.raises(FileNotFoundError, match=r"checkpoint-vocals-torch/state\.json does not exist"):
        check_out(_args(out, resume=True), recipe, "torch")
    check_out(_args(out), UMXTrainConfig(target="bass"), "torch")  # another target: no results of its own


def test_targets_share_a_folder(tmp_path):
    """A second target (or Demucs) in the folder of the first is a new run; only a run's own best model or
    checkpoint are its results."""
    out, vocals = tmp_path / "run", UMXTrainConfig(target="vocals")
    folder = check_out(_args(out), vocals, "torch")
    RunState.for_recipe(vocals).save(folder, np.random.default_rng(0))  # vocals' checkpoint, no best model yet
    for other in (UMXTrainConfig(target="drums"), DemucsTrainConfig()):
        assert check_out(_args(out), other, "torch").checkpoint != folder.checkpoint
    check_out(_args(out), vocals, "jax")  # another framework: its own checkpoint (and no best model here yet)
    with pytest.raises(FileExistsError, match="checkpoint-vocals-torch"):
        check_out(_args(out), vocals, "torch")
    check_out(_args(out, resume=True), vocals, "torch")
    with pytest.raises(FileNotFoundError, match="checkpoint-drums-torch"):
        check_out(_args(out, resume=True), UMXTrainConfig(target="drums"), "torch")


def test_old_layout_resumes(tmp_path):
    """A folder of the layout before the checkpoint carried the run's name (``checkpoint-<framework>/``): the run its
    ``state.json`` names resumes from it and goes on writing there; other runs neither read it nor count it."""
    vocals, drums = UMXTrainConfig(target="vocals", patience=3), UMXTrainConfig(target="drums")
    old = RunFolder(tmp_path, "torch", "vocals", legacy=True)
    assert old.checkpoint == tmp_path / "checkpoint-torch"
    run, rng = RunState.for_recipe(vocals), np.random.default_rng(1)
    run.end_epoch(1.0, 0.5, run.lr, 2, 0.1)
    run.save(old, rng)

    folder = check_out(_args(tmp_path, resume=True), vocals, "torch")
    assert folder.legacy and folder.state_file == tmp_path / "checkpoint-torch" / "state.json"
    again = RunState.for_recipe(vocals)
    again.load(folder, np.random.default_rng(0))
    assert again.epoch == 1 and again.history == run.history
    with pytest.raises(FileExistsError, match="checkpoint-torch"):
        check_out(_args(tmp_path), vocals, "torch")  # this run's results: not overwritten without --force
    other = check_out(_args(tmp_path), drums, "torch")  # another target: a new run, the new layout
    assert not other.legacy and other.checkpoint.name == "checkpoint-drums-torch"
    with pytest.raises(FileNotFoundError, match="checkpoint-torch holds the 'vocals' run"):
        check_out(_args(tmp_path, resume=True), drums, "torch")
    assert not RunFolder.for_recipe(tmp_path, "jax", vocals).legacy  # another framework's old folder is not there
    (tmp_path / "checkpoint-vocals-torch").mkdir()  # the new layout, where there is one, comes first
    assert not RunFolder.for_recipe(tmp_path, "torch", vocals).legacy


def test_state_round_trip(tmp_path):
    recipe = UMXTrainConfig(patience=2, lr_decay_patience=0, lr_decay_cooldown=0)
    folder = RunFolder(tmp_path, "tf", run_name(recipe))
    run = RunState.for_recipe(recipe)
    assert run.lr == recipe.lr and run.scheduler is not None and run.stopper is not None
    rng = np.random.default_rng(recipe.seed)
    rng.integers(10, size=5)
    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.9]):
        row, stop, is_best = run.end_epoch(2.0 * loss, loss, run.lr, 3, 0.1)
        assert row["epoch"] == epoch and is_best == (loss == 0.5 or epoch == 0)
    assert stop and run.epoch == 4 and run.best_loss == 0.5 and run.lr < recipe.lr
    run.step = 12
    run.save(folder, rng, lr=run.lr)
    expected = rng.random(3)

    again, rng2 = RunState.for_recipe(recipe), np.random.default_rng(0)
    state = again.load(folder, rng2)
    assert state["framework"] == "tf" and state["lr"] == run.lr and read_state(folder) == state
    assert (again.epoch, again.step, again.best_loss) == (run.epoch, run.step, run.best_loss)
    assert again.history == run.history
    assert again.scheduler.state_dict() == run.scheduler.state_dict()
    assert again.stopper.state_dict() == run.stopper.state_dict()
    np.testing.assert_array_equal(rng2.random(3), expected)
    assert again.result()["steps"] == 12 and "best=0.5" in again.epoch_message(again.history[-1])
    with pytest.raises(ValueError, match="trains 'vocals'"):
        RunState.for_recipe(UMXTrainConfig(target="drums")).load(folder, rng2)


def test_demucs_state_keeps_best():
    run = RunState.for_recipe(DemucsTrainConfig())
    assert run.scheduler is None and run.stopper is None and run.lr == DemucsTrainConfig().lr
    flags = [run.end_epoch(1.0, loss, run.lr, 1, 0.0)[2] for loss in (3.0, 2.0, 2.5, 1.0)]
    assert flags == [True, True, False, True] and run.best_loss == 1.0
    assert run.done(None) is False and (run.step == 0 and run.done(0))


def test_atomic_write_and_jsonable(tmp_path):
    atomic_write(tmp_path / "a.txt", "text")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.npz", lambda path: np.savez(path, x=np.arange(3)))
    assert (tmp_path / "a.txt").read_text() == "text" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with np.load(tmp_path / "c.npz") as f:
        np.testing.assert_array_equal(f["x"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.npz"]
    value = jsonable({1: (np.int64(2), np.float32(0.5)), "x": [np.float64(math.inf)]})
    assert value == {"1": [2, 0.5], "x": [math.inf]} and json.loads(json.dumps(value))["1"] == [2, 0.5]


def test_train_stft():
    hq = train_stft(umx_preset("umxhq").model)
    assert (hq.n_fft, hq.n_hop, hq.center) == (4096, 1024, False)
    se = train_stft(umx_preset("umxse").model, center=True)
    assert (se.n_fft, se.n_hop, se.center) == (1024, 512, True)
    small = train_stft(UMXConfig(nb_bins=257, max_bin=64, hidden_size=16, nb_layers=3))
    assert (small.n_fft, small.n_hop) == (512, 128)


def test_no_validation_is_an_error(tmp_path):
    config = umx_preset("umxhq").model
    with pytest.raises(DataError, match="at least one validation track"):
        make_datasets(_args(tmp_path, valid_tracks=0), UMXTrainConfig(), config, 44100.0)


def test_shard_batch():
    x = np.arange(8).reshape(4, 2)
    np.testing.assert_array_equal(shard_batch(x, 1, 2), x[2:])
    _, b = shard_batch((x, x + 1), 0, 4)
    np.testing.assert_array_equal(b, x[:1] + 1)
    assert shard_batch({"x": x}, 0, 1)["x"].shape == (4, 2)
    with pytest.raises(ValueError, match="does not split"):
        shard_batch(x, 0, 3)


class _Items:
    """A dataset of ``(x, y)`` items that depend on the epoch set last."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        value = np.full((1, 2), 100 * self.epoch + i, np.float32)
        return value, -value


def test_epoch_batches_set_the_epoch():
    recipe = UMXTrainConfig(batch_size=2)
    items = _Items(4)
    first = list(epoch_batches(items, recipe, np.random.default_rng(0), 0))
    second = list(epoch_batches(items, recipe, np.random.default_rng(0), 3))
    assert items.epoch == 3 and len(first) == len(second) == 2
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(b[0], a[0] + 300)  # same order (same rng), the next epoch's items
    shares = [list(epoch_batches(items, recipe, np.random.default_rng(0), 3, r, 2)) for r in (0, 1)]
    for batch, s0, s1 in zip(second, *shares, strict=True):
        np.testing.assert_array_equal(np.concatenate([s0[0], s1[0]]), batch[0])


def test_initial_weights():
    config = demucs_preset("demucs_unittest")
    a, b = initial_weights(config, 3), initial_weights(config, 3)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == np.float32 for k in a)
    umx = UMXConfig(nb_bins=257, max_bin=64, hidden_size=16, nb_layers=3)
    mean, scale = np.linspace(0, 1, 257), np.linspace(1, 2, 257)
    w = initial_weights(umx, 0, mean, scale)
    check(w["input_mean"], -mean[:64], "init", "float32", what="input_mean = -mean")
    check(w["input_scale"], 1 / scale[:64], "init", "float32", what="input_scale = 1 / scale")
    assert all(np.all(w[k] == 1) for k in w if k.startswith("bn") and k.endswith(".weight"))
