"""``unmix-separate --model`` with what ``unmix-train`` writes: one-target canonical files, run folders, several of
them (``--model`` repeated), folders of targets, a Demucs run folder (:mod:`unmix.targets`,
:func:`unmix.separate_models.resolve_models`).

The targets joined by the command must give, bit for bit, the stems of the separator file that
``core_spec.canonical.join_targets`` + ``save_canonical`` make of the same networks, through the path that reads a
separator file (same framework, same dtype). Small networks: umxse-shaped (16 kHz, 513 bins) with 16 hidden units,
written by ``save_canonical``; and real 1-step ``unmix-train`` runs (torch) on the tiny MUSDB root, for the run
folders as the command writes them (two targets in one folder, native files, checkpoints, a Demucs run).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core_spec.canonical import join_targets, load_canonical, save_canonical
from core_spec.configs import UMXConfig, UMXSeparatorConfig, umx_preset
from core_spec.training import initial_weights
from parity_tests.separate.helpers import files_under, read_stems, run

SMALL = dataclasses.replace(umx_preset("umxse").model, hidden_size=16)
SEEDS = {"vocals": 21, "drums": 22}
FRAMEWORKS = {"torch": "torch", "jax": "jax"}  # --framework -> the module it needs


def _separator_config(model: UMXConfig, preset: str, targets: tuple[str, ...]) -> UMXSeparatorConfig:
    """A separator of ``targets`` with ``preset``'s sample rate and STFT, as upstream and ``unmix-train`` pair them."""
    separator = dataclasses.replace(umx_preset(preset).separator, targets=targets)
    return UMXSeparatorConfig(model=model, separator=separator)


def _write_clip(path: Path, rate: int, seconds: float = 1.0) -> Path:
    import soundfile as sf

    audio = 0.1 * np.random.default_rng(5).standard_normal((round(rate * seconds), 2))
    sf.write(str(path), audio.astype(np.float32), rate, subtype="FLOAT")
    return path


@dataclass(frozen=True)
class Small:
    root: Path
    clip: Path  # 1 s of noise, 16 kHz stereo
    vocals: Path  # run_vocals/vocals.safetensors
    drums: Path  # run_drums/drums.safetensors
    both: Path  # a folder holding vocals.safetensors and drums.safetensors
    joined: Path  # the separator file of vocals + drums (join_targets + save_canonical)
    joined_sorted: Path  # of drums + vocals (the order of a folder's files)
    other_net: Path  # run_bass/bass.safetensors: 8 hidden units, not the same network


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    root = tmp_path_factory.mktemp("run-models")
    weights = {t: initial_weights(SMALL, seed) for t, seed in SEEDS.items()}
    provenance = {"framework": "torch"}
    for target, w in weights.items():
        save_canonical(root / f"run_{target}" / target, w, SMALL, {**provenance, "recipe": {"target": target}})
        save_canonical(root / "both" / target, w, SMALL, provenance)
    for stem, order in (("joined", tuple(SEEDS)), ("joined_sorted", tuple(sorted(SEEDS)))):
        ordered = {t: weights[t] for t in order}
        save_canonical(root / stem, join_targets(ordered), _separator_config(SMALL, "umxse", order))
    other = dataclasses.replace(SMALL, hidden_size=8)
    save_canonical(root / "run_bass" / "bass", initial_weights(other, 23), other)
    return Small(
        root=root,
        clip=_write_clip(root / "clip.wav", 16000),
        vocals=root / "run_vocals" / "vocals.safetensors",
        drums=root / "run_drums" / "drums.safetensors",
        both=root / "both",
        joined=root / "joined.safetensors",
        joined_sorted=root / "joined_sorted.safetensors",
        other_net=root / "run_bass" / "bass.safetensors",
    )


def _models(*paths: Path) -> list:
    return [a for p in paths for a in ("--model", p)]


def _separate(clip: Path, models: list, out: Path, capsys, *options: str, framework: str = "torch") -> str:
    """``unmix-separate`` that must succeed; its stderr."""
    code, _, err = run([clip, *models, "--framework", framework, "-o", out, "-q", *options], capsys)
    assert code == 0, err
    return err


def _refused(clip: Path, models: list, out: Path, capsys, *options: str) -> str:
    """``unmix-separate`` that must fail before writing anything; its stderr."""
    code, _, err = run([clip, *models, "--framework", "torch", "-o", out, "-q", *options], capsys)
    assert code == 1, err
    assert files_under(out) == []
    return err


# --- one target -------------------------------------------------------------------------------------------------


def test_one_target_is_refused_without_the_residual(small: Small, tmp_path: Path, capsys) -> None:
    """openunmix's rule: EM (the default --niter 1) needs two sources; the message says what to pass instead."""
    err = _refused(small.clip, _models(small.vocals), tmp_path / "out", capsys)
    assert f"--model {small.vocals}: one Open-Unmix target ('vocals')" in err
    for advice in ("--residual", "--niter 0", "a second target", "Cannot use EM if only one target is estimated"):
        assert advice in err, err
    # a run folder of one target, the same
    err = _refused(small.clip, _models(small.vocals.parent), tmp_path / "out", capsys)
    assert "one Open-Unmix target ('vocals')" in err and "--residual" in err


def test_one_target_with_the_residual_or_without_em(small: Small, tmp_path: Path, capsys) -> None:
    """--residual: two stems (the target and 'residual'); --niter 0: the target alone. The output folder is named
    after the file's stem (a file) or the folder's name (a run folder)."""
    out = tmp_path / "out"
    _separate(small.clip, _models(small.vocals), out, capsys, "--residual")
    assert files_under(out) == ["vocals/clip/residual.wav", "vocals/clip/vocals.wav"]
    _separate(small.clip, _models(small.vocals.parent), out, capsys, "--niter", "0")
    assert files_under(out / "run_vocals") == ["clip/vocals.wav"]
    stems = read_stems(out / "vocals" / "clip", ("vocals", "residual"))
    assert stems.shape == (2, 2, 16000) and np.isfinite(stems).all()


# --- several targets: the joined separator file, bit for bit -------------------------------------------------------


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_joined_targets_equal_the_joined_separator_file(small: Small, framework: str, tmp_path: Path, capsys) -> None:
    """Two one-target files, two run folders, a folder of both: the stems of the joined separator file, bit for
    bit. The targets come in the order given, a folder's files sorted by name (drums, vocals): EM sees the sources
    in that order, so each is compared with the separator file of the same order."""
    pytest.importorskip(FRAMEWORKS[framework])
    names = tuple(SEEDS)
    expected = {}
    for reference in (small.joined, small.joined_sorted):
        _separate(small.clip, _models(reference), tmp_path / "ref", capsys, framework=framework)
        expected[reference] = read_stems(tmp_path / "ref" / reference.name.split(".")[0] / "clip", names)
    forms = {
        "vocals+drums": (_models(small.vocals, small.drums), small.joined),  # two one-target files
        "run_vocals+run_drums": (_models(small.vocals.parent, small.drums.parent), small.joined),  # two run folders
        "drums+vocals": (_models(small.drums, small.vocals), small.joined_sorted),  # the order given
        "both": (_models(small.both), small.joined_sorted),  # one folder holding both targets
    }
    for name, (models, reference) in forms.items():
        out = tmp_path / name.replace("+", "_")
        _separate(small.clip, models, out, capsys, framework=framework)
        assert files_under(out) == [f"{name}/clip/drums.wav", f"{name}/clip/vocals.wav"], name
        got = read_stems(out / name / "clip", names)
        np.testing.assert_array_equal(got, expected[reference], err_msg=f"{framework}: {name}")


def test_the_targets_and_name_of_several_models(small: Small) -> None:
    """The separator's targets in the order given (a folder's sorted), the name joined by '+', the preset's STFT."""
    from unmix.separate_models import resolve_models

    _, config, name, origin = resolve_models([small.drums, small.vocals.parent])
    assert config.separator.targets == ("drums", "vocals") and (name, origin) == ("drums+run_vocals", "canonical")
    _, config, name, _ = resolve_models([small.both])
    assert config.separator.targets == ("drums", "vocals") and name == "both"
    assert config == _separator_config(SMALL, "umxse", ("drums", "vocals"))


# --- refusals ----------------------------------------------------------------------------------------------------


def test_different_networks_are_refused_naming_both_files(small: Small, tmp_path: Path, capsys) -> None:
    err = _refused(small.clip, _models(small.vocals, small.other_net), tmp_path / "out", capsys)
    assert str(small.vocals) in err and str(small.other_net) in err, err
    assert "hidden_size 16 vs 8" in err and "different networks" in err


def test_a_target_given_twice_is_refused_naming_both_files(small: Small, tmp_path: Path, capsys) -> None:
    err = _refused(small.clip, _models(small.vocals.parent, small.both), tmp_path / "out", capsys)
    assert f"target 'vocals' is given twice: {small.vocals} and {small.both / 'vocals.safetensors'}" in err, err
    err = _refused(small.clip, _models(small.vocals, small.vocals.with_suffix(".json")), tmp_path / "out", capsys)
    assert "target 'vocals' is given twice" in err


def test_a_separator_file_is_not_a_target_to_join(small: Small, tmp_path: Path, capsys) -> None:
    err = _refused(small.clip, _models(small.vocals, small.joined), tmp_path / "out", capsys)
    assert f"{small.joined}: holds a whole Open-Unmix separator (targets vocals, drums)" in err, err
    assert "pass it alone" in err
    err = _refused(small.clip, _models(small.vocals, small.root / "nowhere"), tmp_path / "out", capsys)
    assert f"{small.root / 'nowhere'}: not found" in err, err


def test_the_single_model_errors_are_unchanged(small: Small, tmp_path: Path, capsys) -> None:
    """One --model that is nothing: the message of before (what was looked for)."""
    err = _refused(small.clip, _models(small.root / "nowhere"), tmp_path / "out", capsys)
    assert f"--model {small.root / 'nowhere'}: not found (looked for a canonical nowhere.safetensors" in err, err


# --- what unmix-train writes, for real ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    mixture: Path  # a 2-s track of the tiny root (44.1 kHz)
    umx: Path  # one run folder, two targets: vocals and drums (umxhq bins, 16 hidden units)
    demucs: Path  # a Demucs run folder (demucs_unittest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """1-step ``unmix-train`` runs (torch): ``run_umx`` (``--target vocals``, then ``--target drums`` into the same
    folder, from a 16-unit ``--init``) and ``run_demucs``."""
    pytest.importorskip("torch")
    from parity_tests.tiny_musdb import make_tiny_musdb
    from unmix.train_cli import main as train

    root = tmp_path_factory.mktemp("trained")
    tiny = make_tiny_musdb(root / "tiny")
    small = UMXConfig(hidden_size=16)  # umxhq's bins and bandwidth
    save_canonical(root / "init", initial_weights(small), small)
    common = ["--framework", "torch", "--root", str(tiny), "--max-steps", "1", "--epochs", "1", "--quiet",
              "--batch-size", "2"]  # fmt: skip
    for target in ("vocals", "drums"):
        umx = ["--model", "umx", "--init", str(root / "init.safetensors"), "--target", target, "--seq-dur", "1.0",
               "--samples-per-track", "1"]  # fmt: skip
        assert train([*common, "--out", str(root / "run_umx"), *umx]) == 0
    demucs = ["--model", "demucs", "--preset", "demucs_unittest", "--remix-group-size", "2", "--samples", "22050",
              "--data-stride", "22050"]  # fmt: skip
    assert train([*common, "--out", str(root / "run_demucs"), *demucs]) == 0
    mixture = sorted(tiny.glob("valid/*/mixture.wav"))[0]
    return Trained(shutil.copy(mixture, root / "song.wav"), root / "run_umx", root / "run_demucs")


def test_a_demucs_run_folder_is_its_model(trained: Trained, tmp_path: Path, capsys) -> None:
    """--model run_demucs (the folder) separates as --model run_demucs/demucs.safetensors, into
    separated/run_demucs/."""
    _, config, _ = load_canonical(trained.demucs / "demucs.safetensors")
    _separate(trained.mixture, _models(trained.demucs / "demucs.safetensors"), tmp_path / "ref", capsys)
    _separate(trained.mixture, _models(trained.demucs), tmp_path / "out", capsys)
    assert files_under(tmp_path / "out") == sorted(f"run_demucs/song/{s}.wav" for s in config.sources)
    np.testing.assert_array_equal(
        read_stems(tmp_path / "out" / "run_demucs" / "song", config.sources),
        read_stems(tmp_path / "ref" / "demucs" / "song", config.sources),
    )


def test_a_run_folder_of_two_targets_is_a_separator(trained: Trained, tmp_path: Path, capsys) -> None:
    """The folder unmix-train filled with two targets: the separator of both (the preset's 44.1 kHz STFT), equal to
    the joined separator file; its checkpoints and native files are not models to join."""
    weights = {t: load_canonical(trained.umx / f"{t}.safetensors")[0] for t in ("drums", "vocals")}
    model = load_canonical(trained.umx / "vocals.safetensors")[1]
    save_canonical(tmp_path / "joined", join_targets(weights), _separator_config(model, "umxhq", ("drums", "vocals")))
    _separate(trained.mixture, _models(tmp_path / "joined"), tmp_path / "ref", capsys)
    _separate(trained.mixture, _models(trained.umx), tmp_path / "out", capsys)
    assert files_under(tmp_path / "out") == ["run_umx/song/drums.wav", "run_umx/song/vocals.wav"]
    np.testing.assert_array_equal(
        read_stems(tmp_path / "out" / "run_umx" / "song", ("drums", "vocals")),
        read_stems(tmp_path / "ref" / "joined" / "song", ("drums", "vocals")),
    )


def test_a_native_one_target_file_separates_with_the_residual(trained: Trained, tmp_path: Path, capsys) -> None:
    """vocals-torch.pth (the run's torch file): the target 'vocals', the same stems as its canonical file."""
    _separate(trained.mixture, _models(trained.umx / "vocals-torch.pth"), tmp_path / "native", capsys, "--residual")
    _separate(trained.mixture, _models(trained.umx / "vocals.safetensors"), tmp_path / "canon", capsys, "--residual")
    assert files_under(tmp_path / "native") == ["vocals-torch/song/residual.wav", "vocals-torch/song/vocals.wav"]
    np.testing.assert_array_equal(
        read_stems(tmp_path / "native" / "vocals-torch" / "song", ("vocals", "residual")),
        read_stems(tmp_path / "canon" / "vocals" / "song", ("vocals", "residual")),
    )
