"""Checkpoints written at test time by the upstream code, read back in a subprocess that never imports torch.

Main environment (needs torch, openunmix, demucs, diffq to WRITE the files). The files: openunmix
``OpenUnmix`` state dicts at the real ``umxhq`` (zip) and ``umxse`` (legacy, with the 2019 legacy keys) shapes,
an openunmix model folder as ``scripts/train.py`` writes it, demucs 2.0.3 ``Demucs(channels=4)``
(``demucs_unittest``) state dicts in both formats and in float16, a package saved by ``demucs.utils.save_model``,
storages shared between views; and, read in this process because dequantizing needs torch: a diffq-quantized
package and the ``demucs_quantized`` layout. Everything is compared bit for bit with what torch saved.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("parity_tests.oracle")  # inserts the torchaudio stub openunmix needs
pytest.importorskip("openunmix")
pytest.importorskip("demucs")

from core_spec.configs import (
    DEMUCS_PRESETS,
    UMX_PRESETS,
    DemucsConfig,
    SeparatorConfig,
    STFTConfig,
    UMXConfig,
    UMXSeparatorConfig,
    config_from_json,
)
from core_spec.params import WeightsMismatchError, is_ignored_on_load
from core_spec.seeded import random_weights
from parity_tests.convert import checkpoints as ck
from parity_tests.convert.flat import bit_equal
from weights_convert import ConversionError, NonFiniteWeightsWarning
from weights_convert.sources import read_upstream

pytestmark = pytest.mark.upstream
torch = ck.torch
ROOT = Path(__file__).resolve().parents[2]
UNITTEST = DEMUCS_PRESETS["demucs_unittest"]
SMALL_SEPARATOR = UMXSeparatorConfig(
    model=UMXConfig(nb_bins=129, nb_channels=2, hidden_size=32, max_bin=100),
    separator=SeparatorConfig(targets=("vocals", "drums", "bass"), sample_rate=22050.0, stft=STFTConfig(256, 64)),
)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Write every checkpoint with the upstream code, read and convert them all in ONE torch-free subprocess."""
    d = tmp_path_factory.mktemp("upstream_checkpoints")
    saved: dict[str, tuple[Path, object]] = {}
    umxhq, umxse = UMX_PRESETS["umxhq"].model, UMX_PRESETS["umxse"].model
    # the 2019 umxhq files: legacy format, with the legacy keys; umxse: zip
    saved["umxhq_legacy"] = (d / "vocals-0123abcd.pth", ck.umx_state(umxhq, seed=1, legacy_keys=True))
    saved["umxse_zip"] = (d / "speech_89abcdef.pth", ck.umx_state(umxse, seed=2))
    saved["demucs_zip"] = (d / "demucs_unittest-09ebc15f.th", ck.demucs_state(UNITTEST, seed=3))
    saved["demucs_legacy"] = (d / "demucs_unittest_legacy.th", saved["demucs_zip"][1])
    saved["demucs_fp16"] = (d / "demucs_fp16.th", ck.demucs_state(UNITTEST, seed=4, half=True))
    saved["views_zip"] = (d / "views.pth", ck.views_object(seed=5))
    saved["views_legacy"] = (d / "views_legacy.pth", saved["views_zip"][1])
    for name, (path, obj) in saved.items():
        ck.save(obj, path, "legacy" if "legacy" in name else "zip")
    package_state = ck.write_demucs_package(d / "package.th", UNITTEST, seed=6)
    saved["package"] = (d / "package.th", {"state": package_state})
    folder_states = ck.write_umx_folder(d / "umx_model", SMALL_SEPARATOR, seed=7, fmt="legacy")
    per_target = {t: random_weights(SMALL_SEPARATOR.model, seed=20 + i) for i, t in enumerate(("vocals", "drums"))}
    separator_config = dataclasses.replace(
        SMALL_SEPARATOR, separator=dataclasses.replace(SMALL_SEPARATOR.separator, targets=("vocals", "drums"))
    )
    separator = ck.oracle.umx_separator(separator_config, per_target, dtype=torch.float32)
    saved["separator"] = (d / "separator.pth", separator.state_dict())
    ck.save(saved["separator"][1], saved["separator"][0], "zip")

    jobs = {
        "out": str(d / "torchfree.npz"),
        "read": {name: str(path) for name, (path, _) in saved.items()},
        "convert": {
            "umxhq": [str(saved["umxhq_legacy"][0]), "umxhq"],
            "umxhq_inferred": [str(saved["umxhq_legacy"][0]), None],
            "umxse": [str(saved["umxse_zip"][0]), None],
            "demucs": [str(saved["demucs_legacy"][0]), None],
            "demucs_fp16": [str(saved["demucs_fp16"][0]), "demucs_unittest"],
            "package": [str(saved["package"][0]), None],
            "folder": [str(d / "umx_model"), None],
            "separator": [str(saved["separator"][0]), None],
        },
        "cli": [[str(d / "umx_model"), "--out", str(d / "cli_out" / "model"), "--progress", "on"]],
    }
    (d / "jobs.json").write_text(json.dumps(jobs))
    script = ROOT / "parity_tests" / "convert" / "read_torchfree.py"
    result = subprocess.run([sys.executable, str(script), str(d / "jobs.json")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(Path(jobs["out"] + ".json").read_text())
    arrays: dict[str, dict[str, np.ndarray]] = {}
    with np.load(jobs["out"]) as data:
        for key in data.files:
            section, path = key.split("|", 1)
            arrays.setdefault(section, {})[path] = data[key]
    return {
        "dir": d,
        "saved": saved,
        "report": report,
        "arrays": arrays,
        "folder_states": folder_states,
        "separator_weights": per_target,
    }


def test_subprocess_never_imported_torch(written: dict) -> None:
    assert written["report"]["torch_imported"] is False


@pytest.mark.parametrize(
    "name",
    ["umxhq_legacy", "umxse_zip", "demucs_zip", "demucs_legacy", "demucs_fp16", "views_zip", "views_legacy", "package"],
)
def test_read_bit_exact_against_torch(written: dict, name: str) -> None:
    _, obj = written["saved"][name]
    want = ck.torch_flat(obj)
    got = written["arrays"][f"read:{name}"]
    if name == "package":
        got = {k: v for k, v in got.items() if k.startswith("state/")}
    assert sorted(got) == sorted(want)
    assert [k for k in want if not bit_equal(got[k], want[k])] == []
    assert written["report"]["read"][name]["format"] == ("legacy" if "legacy" in name else "zip")


def _canonical(written: dict, name: str) -> tuple[dict[str, np.ndarray], object, dict]:
    entry = written["report"]["convert"][name]
    return written["arrays"][f"convert:{name}"], config_from_json(json.dumps(entry["config"])), entry


def test_convert_umx_preset_shapes(written: dict) -> None:
    weights, config, entry = _canonical(written, "umxhq")
    umxhq = UMX_PRESETS["umxhq"]
    assert config == dataclasses.replace(umxhq, separator=dataclasses.replace(umxhq.separator, targets=("vocals",)))
    seeded = random_weights(UMX_PRESETS["umxhq"].model, seed=1)
    assert sorted(weights) == sorted(f"target_models.vocals.{k}" for k in seeded)
    assert all(bit_equal(weights[f"target_models.vocals.{k}"], v) for k, v in seeded.items())
    assert entry["provenance"]["sha256"] == _sha256(written["saved"]["umxhq_legacy"][0])
    _, inferred, entry = _canonical(written, "umxhq_inferred")
    assert inferred == config and entry["matched_presets"] == ["umx", "umxhq"]


def test_convert_umxse_and_the_2019_keys(written: dict) -> None:
    weights, config, entry = _canonical(written, "umxse")
    assert isinstance(config, UMXSeparatorConfig)
    assert config.model == UMX_PRESETS["umxse"].model and config.separator.targets == ("speech",)
    assert config.separator.stft == UMX_PRESETS["umxse"].separator.stft and entry["matched_presets"] == ["umxse"]
    assert config.separator.sample_rate == 16000.0
    _, _, entry = _canonical(written, "umxhq")
    assert any("sample_rate, stft.window, transform.0.window" in note for note in entry["notes"])
    seeded = random_weights(UMX_PRESETS["umxse"].model, seed=2)
    assert all(bit_equal(weights[f"target_models.speech.{k}"], v) for k, v in seeded.items())


def test_convert_demucs_states_and_package(written: dict) -> None:
    weights, config, entry = _canonical(written, "demucs")
    assert config == UNITTEST and "demucs_unittest" in entry["matched_presets"]
    seeded = random_weights(UNITTEST, seed=3)
    assert sorted(weights) == sorted(seeded) and all(bit_equal(weights[k], v) for k, v in seeded.items())

    weights, config, entry = _canonical(written, "demucs_fp16")
    half = written["saved"]["demucs_fp16"][1]
    assert entry["provenance"]["source_dtypes"] == {"float16": len(half)}
    assert all(bit_equal(weights[k], v.float().numpy()) for k, v in half.items())

    weights, config, entry = _canonical(written, "package")
    assert config == UNITTEST and entry["kind"] == "demucs package"
    seeded = random_weights(UNITTEST, seed=6)
    assert all(bit_equal(weights[k], v) for k, v in seeded.items())


def test_convert_umx_folder_and_cli(written: dict) -> None:
    weights, config, entry = _canonical(written, "folder")
    assert config.separator.targets == ("vocals", "drums", "bass")
    assert config.separator.stft == SMALL_SEPARATOR.separator.stft
    for target, state in written["folder_states"].items():
        for key, value in state.items():
            if not is_ignored_on_load(key):
                assert bit_equal(weights[f"target_models.{target}.{key}"], value.numpy())
    files = {f["path"]: f for f in entry["provenance"]["files"]}
    assert {"vocals.pth", "drums.pth", "bass.pth", "separator.json", "vocals.json"} <= set(files)
    (cli,) = written["report"]["cli"]
    assert cli["code"] == 0, cli["stderr"]
    out = written["dir"] / "cli_out"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert f"sha256 {_sha256(out / 'model.safetensors')}" in cli["stdout"]
    assert "reading tensors" in cli["stderr"]  # --progress on


def test_convert_whole_separator_state_dict(written: dict) -> None:
    weights, config, entry = _canonical(written, "separator")
    assert entry["kind"] == "openunmix Separator state dict"
    assert config.separator.targets == ("vocals", "drums") and config.model == SMALL_SEPARATOR.model
    assert any("dropped separator buffers" in note for note in entry["notes"])
    for target, seeded in written["separator_weights"].items():
        assert all(bit_equal(weights[f"target_models.{target}.{k}"], v) for k, v in seeded.items())


def _sha256(path: Path) -> str:
    from weights_convert.sources import sha256_file

    return sha256_file(path)


# --- in this process: things that need torch ------------------------------------------------------------------


def test_diffq_quantized_package(tmp_path: Path) -> None:
    pytest.importorskip("diffq")
    reference = ck.write_demucs_package(tmp_path / "q.th", UNITTEST, seed=8, diffq=True, q_min_size=0.01)
    converted = read_upstream(tmp_path / "q.th")
    assert converted.kind == "demucs package (diffq-quantized)" and converted.config == UNITTEST
    assert sorted(converted.weights) == sorted(reference)
    assert all(bit_equal(converted.weights[k], v.numpy()) for k, v in reference.items())
    seeded = random_weights(UNITTEST, seed=8)
    assert any(not np.array_equal(converted.weights[k], seeded[k]) for k in seeded)  # really quantized


def test_demucs_quantized_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("diffq")
    reference = ck.write_demucs_quantized_state(tmp_path / "demucs_quantized-07afea75.th", UNITTEST, seed=9)
    for preset in ("demucs_unittest", None):  # given, and inferred from the quantized state
        converted = read_upstream(tmp_path / "demucs_quantized-07afea75.th", model=preset)
        assert converted.config == UNITTEST
        assert all(bit_equal(converted.weights[k], v.numpy()) for k, v in reference.items())
    monkeypatch.setitem(sys.modules, "diffq", None)  # as if diffq were not installed
    with pytest.raises(ConversionError, match=r"needs torch, diffq.*pip install"):
        read_upstream(tmp_path / "demucs_quantized-07afea75.th")


def test_nonfinite_weights_warn_with_keys_and_counts(tmp_path: Path) -> None:
    state = ck.demucs_state(UNITTEST, seed=10)
    state["encoder.0.0.bias"][:2] = float("nan")
    state["lstm.linear.bias"][5] = float("inf")
    ck.save(state, tmp_path / "nan.th", "zip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = read_upstream(tmp_path / "nan.th")
    messages = [str(w.message) for w in caught if issubclass(w.category, NonFiniteWeightsWarning)]
    assert len(messages) == 1
    assert "encoder.0.0.bias (2 NaN, 0 Inf)" in messages[0] and "lstm.linear.bias (0 NaN, 1 Inf)" in messages[0]
    assert np.isnan(converted.weights["encoder.0.0.bias"][:2]).all()


def test_wrong_model_for_preset(tmp_path: Path) -> None:
    ck.save(ck.demucs_state(UNITTEST, seed=11), tmp_path / "d.th", "legacy")
    with pytest.raises(WeightsMismatchError) as info:
        read_upstream(tmp_path / "d.th", model="demucs48_hq")
    assert "mis-shaped  encoder.0.0.weight: expected (48, 2, 8), got (4, 2, 8)" in str(info.value)
    ck.save(ck.umx_state(UMX_PRESETS["umxse"].model, seed=12), tmp_path / "speech.pth", "zip")
    with pytest.raises(WeightsMismatchError, match=r"fc1.weight: expected \(512, 2974\), got \(256, 513\)"):
        read_upstream(tmp_path / "speech.pth", model="umxhq")


def test_to_torch_loads_into_upstream_models(tmp_path: Path) -> None:
    from unmix.convert import convert

    folder = tmp_path / "model"
    ck.write_umx_folder(folder, SMALL_SEPARATOR, seed=13, fmt="zip")
    report = convert(folder, out=tmp_path / "out" / "m", to=["torch"])
    names = sorted(w.path.name for w in report.outputs)
    assert names == ["m-torch.json", "m-torch.pth", "m.json", "m.safetensors"]
    state = torch.load(tmp_path / "out" / "m-torch.pth", weights_only=True)
    for target in SMALL_SEPARATOR.separator.targets:
        prefix = f"target_models.{target}."
        sub = {k[len(prefix) :]: v.numpy() for k, v in state.items() if k.startswith(prefix)}
        ck.oracle.umx_model(SMALL_SEPARATOR.model, sub)  # loads strictly (num_batches_tracked aside)
        assert all(bit_equal(v, report.converted.weights[prefix + k]) for k, v in sub.items())

    demucs_file = tmp_path / "d.th"
    ck.save(ck.demucs_state(DemucsConfig(channels=4, depth=4), seed=14), demucs_file, "zip")
    report = convert(demucs_file, out=tmp_path / "out" / "d", to=["torch"])
    state = torch.load(tmp_path / "out" / "d-torch.pth", weights_only=True)
    ck.oracle.demucs_model(report.converted.config, {k: v.numpy() for k, v in state.items()})  # strict load


def test_to_jax_beside_canonical(tmp_path: Path) -> None:
    from umx_jax import weights as jax_weights
    from unmix.convert import convert

    report = convert(ROOT / "parity_tests" / "fixtures" / "checkpoints" / "umx_tiny_model", tmp_path / "m", to=["jax"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"m.json", "m.safetensors"} <= set(names) and any(n.startswith("m-jax.") for n in names), names
    assert {w.path.name for w in report.outputs} == set(names)
    weights, config = jax_weights.load_native(tmp_path / "m-jax")
    assert config == report.converted.config
    assert all(bit_equal(np.asarray(weights[k]), v) for k, v in report.converted.weights.items())
