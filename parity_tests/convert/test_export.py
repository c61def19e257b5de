"""``unmix-convert --export``: canonical weights -> upstream's own layouts, loaded by upstream's own loaders; and
``unmix-convert`` joining one-target files into one separator. Main environment (torch, openunmix, demucs).

- ``--export openunmix``: a 2-target separator (small seeded config) -> a model folder that openunmix 1.3.0's
  ``load_separator`` loads with the canonical arrays bit for bit, and that separates a clip as ``umx_torch``'s
  ``Separator`` does from the same canonical file (float32 ``separator`` row); ``unmix-convert`` reads it back.
- ``--export demucs``: a seeded Demucs v2 -> a package that demucs 2.0.3's ``load_model`` loads with the same state.
- refusals: an existing output without ``--force`` (and a folder that is not a model folder even with it), the
  wrong kind of model, a network openunmix cannot build, torch missing; a writer failing half-way leaves nothing.
- joining: two one-target files (as ``unmix-train`` writes them) -> one canonical separator equal to
  ``core_spec.canonical.join_targets`` of the two; ``--to torch`` on it; a run folder; ``--export`` from targets.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("parity_tests.oracle")  # inserts the torchaudio stub openunmix needs
pytest.importorskip("openunmix")
pytest.importorskip("demucs")

from core_spec.canonical import join_targets, load_canonical, save_canonical, split_targets
from core_spec.configs import (
    DemucsConfig,
    SeparatorConfig,
    STFTConfig,
    UMXConfig,
    UMXSeparatorConfig,
    constructor_kwargs,
)
from core_spec.seeded import random_audio, random_weights
from core_spec.tolerances import check
from parity_tests.convert.flat import bit_equal
from unmix import export_upstream
from unmix.convert_cli import main

pytestmark = pytest.mark.upstream

UMX = UMXSeparatorConfig(
    model=UMXConfig(nb_bins=129, nb_channels=2, hidden_size=16, max_bin=100),
    separator=SeparatorConfig(targets=("vocals", "drums"), sample_rate=8000.0, stft=STFTConfig(256, 64)),
)
DEMUCS = DemucsConfig(channels=4, segment_length=22050)  # as parity_tests/parity_cli/conftest.py
# one target network of the umxse STFT (513 bins): join_separator takes the separator settings from that preset
TARGET = UMXConfig(nb_bins=513, nb_channels=2, hidden_size=16, max_bin=60)


def run(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def numpy_state(state: dict) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture
def umx_file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    per_target = {t: random_weights(UMX.model, seed=10 + i) for i, t in enumerate(UMX.separator.targets)}
    weights = join_targets(per_target)
    st_path, _ = save_canonical(tmp_path / "sep", weights, UMX, {"note": "seeded"})
    return st_path, weights


@pytest.fixture
def demucs_file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    weights = random_weights(DEMUCS, seed=5)
    st_path, _ = save_canonical(tmp_path / "demucs", weights, DEMUCS)
    return st_path, weights


def test_openunmix_folder_loads_in_openunmix_and_separates_as_the_port(
    tmp_path: Path, capsys: pytest.CaptureFixture, umx_file: tuple
) -> None:
    import torch
    from openunmix.utils import load_separator

    from umx_torch.separator import Separator

    source, weights = umx_file
    folder = tmp_path / "models" / "mine"
    code, out, err = run([source, "--export", "openunmix", "-o", folder], capsys)
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "drums.json", "drums.pth", "separator.json", "vocals.json", "vocals.pth"
    ]  # fmt: skip
    assert json.loads((folder / "separator.json").read_text()) == {
        "nb_channels": 2, "nfft": 256, "nhop": 64, "sample_rate": 8000
    }  # fmt: skip
    args = json.loads((folder / "vocals.json").read_text())["args"]
    assert (args["nfft"], args["nb_channels"], args["hidden_size"], args["target"]) == (256, 2, 16, "vocals")
    assert f"upstream  umx --model {folder} --targets vocals drums --niter 1 TRACK" in out
    assert "openunmix 1.3.0 model folder" in out and f"wrote     {folder / 'vocals.pth'}" in out

    upstream = load_separator(str(folder), targets=["vocals", "drums"], niter=1)
    upstream.freeze()  # as umx does
    nested = split_targets(weights, UMX.separator.targets)
    for target in UMX.separator.targets:
        state = numpy_state(upstream.target_models[target].state_dict())
        assert sorted(state) == sorted(nested[target])
        assert all(bit_equal(state[k], nested[target][k]) for k in state), target
    assert upstream.target_models["vocals"].fc1.in_features == UMX.model.max_bin * UMX.model.nb_channels
    assert (upstream.sample_rate.item(), upstream.stft.n_fft, upstream.stft.n_hop) == (8000.0, 256, 64)

    audio = random_audio(4000, seed=3).astype(np.float32)[None]  # (1, 2, 4000): half a second at 8 kHz
    with torch.no_grad():
        expected = upstream(torch.from_numpy(audio)).numpy()
        port = Separator.from_config(UMX, load_canonical(source)[0])
        actual = port(torch.from_numpy(audio)).numpy()
    assert actual.shape == expected.shape == (1, 2, 2, 4000)
    check(actual, expected, "separator", "float32", what="umx_torch vs openunmix on the exported folder")

    # and unmix-convert reads the folder back to the same arrays
    code, _, err = run([folder, "-o", tmp_path / "back", "-q"], capsys)
    assert code == 0, err
    back, config, _ = load_canonical(tmp_path / "back")
    assert config == UMX and sorted(back) == sorted(weights)
    assert all(bit_equal(back[k], weights[k]) for k in weights)


def test_demucs_package_loads_in_demucs(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, demucs_file: tuple
) -> None:
    from demucs.model import Demucs
    from demucs.utils import load_model

    source, weights = demucs_file
    code, out, err = run([source, "--export", "demucs", "-o", tmp_path / "models" / "mine"], capsys)
    assert code == 0, err
    package = tmp_path / "models" / "mine.th"  # .th added
    assert sorted(p.name for p in package.parent.iterdir()) == ["mine.th"]
    assert f"upstream  python -m demucs.separate --models {package.parent} -n mine TRACK" in out

    # demucs 2.0.3's torch.load predates weights_only: torch >= 2.6 needs this for any package, its own included
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model = load_model(package)
    assert type(model) is Demucs
    assert model._init_args_kwargs == ((), {**constructor_kwargs(DEMUCS), "sources": list(DEMUCS.sources)})
    assert (model.sources, model.channels, model.samplerate, model.segment_length) == (
        list(DEMUCS.sources), 4, 44100, 22050
    )  # fmt: skip
    state = numpy_state(model.state_dict())
    assert sorted(state) == sorted(weights)
    assert all(bit_equal(state[k], weights[k]) for k in weights)

    code, _, err = run([package, "-o", tmp_path / "back", "-q"], capsys)  # and unmix-convert reads it back
    assert code == 0, err
    back, config, _ = load_canonical(tmp_path / "back")
    assert config == DEMUCS and all(bit_equal(back[k], weights[k]) for k in weights)


def test_existing_output_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture, umx_file: tuple, demucs_file: tuple
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "separator.json").write_text("{}")
    code, out, err = run([umx_file[0], "--export", "openunmix", "-o", folder], capsys)
    assert code == 1 and f"{folder} exists; pass --force to replace it" in err and out == ""
    assert sorted(p.name for p in folder.iterdir()) == ["separator.json"]
    code, _, err = run([umx_file[0], "--export", "openunmix", "-o", folder, "--force"], capsys)
    assert code == 0, err
    assert json.loads((folder / "separator.json").read_text())["nfft"] == 256
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging, no old copy

    package = tmp_path / "d.th"
    package.write_bytes(b"keep me")
    code, _, err = run([demucs_file[0], "--export", "demucs", "-o", package], capsys)
    assert code == 1 and "exists; pass --force" in err and package.read_bytes() == b"keep me"
    assert run([demucs_file[0], "--export", "demucs", "-o", package, "--force", "-q"], capsys)[0] == 0
    assert package.read_bytes()[:2] == b"PK"  # a torch zip file

    other = tmp_path / "music"  # a folder that is not a model folder is never replaced
    other.mkdir()
    (other / "song.wav").write_bytes(b"RIFF")
    code, _, err = run([umx_file[0], "--export", "openunmix", "-o", other, "--force"], capsys)
    assert code == 1 and "not an openunmix model folder" in err and "song.wav" in err
    assert sorted(p.name for p in other.iterdir()) == ["song.wav"]


def test_wrong_kind_and_unsupported_networks_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, umx_file: tuple, demucs_file: tuple
) -> None:
    target_file, _ = save_canonical(tmp_path / "run" / "vocals", random_weights(TARGET, seed=1), TARGET)
    code, _, err = run([target_file, "--export", "demucs", "-o", tmp_path / "x.th"], capsys)
    assert code == 1 and str(target_file) in err and "Open-Unmix" in err and "use --export openunmix" in err
    code, _, err = run([demucs_file[0], "--export", "openunmix", "-o", tmp_path / "y"], capsys)
    assert code == 1 and "a Demucs v2 model" in err and "use --export demucs" in err

    two_layers = dataclasses.replace(UMX, model=dataclasses.replace(UMX.model, nb_layers=2))
    per_target = {t: random_weights(two_layers.model, seed=i) for i, t in enumerate(UMX.separator.targets)}
    st_path, _ = save_canonical(tmp_path / "two_layers", join_targets(per_target), two_layers)
    code, _, err = run([st_path, "--export", "openunmix", "-o", tmp_path / "z"], capsys)
    assert code == 1 and "nb_layers=2" in err and "openunmix 1.3.0" in err

    clash = dataclasses.replace(UMX, separator=dataclasses.replace(UMX.separator, targets=("vocals", "vocals2")))
    weights = join_targets({t: random_weights(UMX.model, seed=i) for i, t in enumerate(clash.separator.targets)})
    st_path, _ = save_canonical(tmp_path / "clash", weights, clash)
    code, _, err = run([st_path, "--export", "openunmix", "-o", tmp_path / "z"], capsys)
    assert code == 1 and "vocals*.pth would also match vocals2.pth" in err
    assert not any(p.name in ("x.th", "y", "z") for p in tmp_path.iterdir())


def test_torch_missing_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, umx_file: tuple
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as where it is not installed
    for fmt, out in (("openunmix", tmp_path / "new" / "mine"), ("demucs", tmp_path / "new" / "mine.th")):
        code, stdout, err = run([umx_file[0], "--export", fmt, "-o", out], capsys)
        assert code == 1 and stdout == ""
        assert "torch cannot be imported in this environment" in err and "main environment (.venv" in err
    assert not (tmp_path / "new").exists()


def test_usage_errors(capsys: pytest.CaptureFixture, umx_file: tuple) -> None:
    for argv, message in (
        ([umx_file[0], "--export", "openunmix"], "--export openunmix needs -o/--out"),
        ([umx_file[0], "--export", "demucs", "-o", "x.th", "--to", "torch"], "--export writes upstream's layout"),
        ([umx_file[0], "--export", "onnx", "-o", "x"], "invalid choice: 'onnx'"),
    ):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in argv])
        assert info.value.code == 2 and message in capsys.readouterr().err


def test_a_writer_failing_half_way_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, umx_file: tuple
) -> None:
    def fail(folder: Path, *args: object) -> None:
        (folder / "separator.json").write_text("{}")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(export_upstream, "_write_openunmix", fail)
    code, _, err = run([umx_file[0], "--export", "openunmix", "-o", tmp_path / "out" / "nested" / "m"], capsys)
    assert code == 1 and "disk full (simulated)" in err
    assert not (tmp_path / "out").exists()
    existing = tmp_path / "kept"  # a model folder being replaced stays as it was
    existing.mkdir()
    (existing / "separator.json").write_text("old")
    assert run([umx_file[0], "--export", "openunmix", "-o", existing, "--force"], capsys)[0] == 1
    assert (existing / "separator.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "sep.json", "sep.safetensors"]


def test_join_two_target_files_into_one_separator(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    vocals, drums = random_weights(TARGET, seed=1), random_weights(TARGET, seed=2)
    recipe = {"framework": "jax", "recipe": {"target": "vocals"}}
    v_path, _ = save_canonical(tmp_path / "run_vocals" / "vocals", vocals, TARGET, recipe)
    d_path, _ = save_canonical(tmp_path / "run_drums" / "drums", drums, TARGET)
    code, out, err = run([v_path, d_path, "-o", tmp_path / "joined", "--to", "torch"], capsys)
    assert code == 0, err
    weights, config, provenance = load_canonical(tmp_path / "joined")
    expected = join_targets({"vocals": vocals, "drums": drums})
    assert sorted(weights) == sorted(expected) and all(bit_equal(weights[k], expected[k]) for k in expected)
    assert config.model == TARGET and config.separator.targets == ("vocals", "drums")
    assert (config.separator.sample_rate, config.separator.stft) == (16000.0, STFTConfig(1024, 512))  # umxse's
    assert provenance["targets"]["vocals"]["provenance"] == recipe
    assert "2 one-target canonical files, joined" in out and "(target drums)" in out
    assert "separator settings from the Open-Unmix preset of 513 STFT bins: 16000 Hz, STFT 1024/512" in out
    state = torch.load(tmp_path / "joined-torch.pth", weights_only=True)  # --to works on the joined file
    assert all(bit_equal(state[k].numpy(), expected[k]) for k in expected)

    # a run folder holding both: its files sorted by name, or --targets for the order
    folder = tmp_path / "run"
    save_canonical(folder / "vocals", vocals, TARGET)
    save_canonical(folder / "drums", drums, TARGET)
    assert run([folder, "-o", tmp_path / "sorted", "-q"], capsys)[0] == 0
    assert load_canonical(tmp_path / "sorted")[1].separator.targets == ("drums", "vocals")
    assert run([folder, "--targets", "vocals", "-o", tmp_path / "one", "-q"], capsys)[0] == 0
    assert load_canonical(tmp_path / "one")[1].separator.targets == ("vocals",)

    # straight from the targets to openunmix's folder (one target: umx needs --residual for EM)
    code, out, err = run([v_path, "--export", "openunmix", "-o", tmp_path / "umx_vocals"], capsys)
    assert code == 0, err
    assert "--targets vocals --niter 1 --residual residual TRACK" in out
    assert json.loads((tmp_path / "umx_vocals" / "separator.json").read_text())["sample_rate"] == 16000
