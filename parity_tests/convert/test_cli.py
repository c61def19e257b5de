"""``unmix-convert`` / ``python -m unmix convert`` on the committed upstream checkpoints. No torch needed.

Covers: a folder and a single file to canonical, the summary (parameter counts, SHA-256 of source and outputs,
notes), ``--force``, atomicity (no output and no staging folder after any failure), NaN/Inf warnings, ``--to``
for a port that is not available, and the module entry point.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core_spec.canonical import load_canonical
from core_spec.params import nb_parameters
from unmix.convert_cli import main
from weights_convert.sources import sha256_file

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "parity_tests" / "fixtures" / "checkpoints"
FOLDER = CHECKPOINTS / "umx_tiny_model"


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_to_canonical_with_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run([FOLDER, "--out", tmp_path / "tiny"], capsys)
    assert code == 0, err
    _, config, provenance = load_canonical(tmp_path / "tiny")
    assert config.separator.targets == ("vocals", "drums")
    count = nb_parameters(config.model)
    assert f"values    vocals {count:,}, drums {count:,}; total {2 * count:,}" in out
    for name in ("tiny.safetensors", "tiny.json"):
        assert f"wrote     {tmp_path / name}" in out and f"sha256 {sha256_file(tmp_path / name)}" in out
    for source in ("vocals.pth", "drums.pth"):
        assert f"sha256 {sha256_file(FOLDER / source)}" in out
    assert "STFT 128/32 at 8000 Hz" in out
    files = {f["path"]: f["sha256"] for f in provenance["files"]}
    assert files["vocals.pth"] == sha256_file(FOLDER / "vocals.pth") and "separator.json" in files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert meta["format"] == "unmix-ports/canonical/1" and meta["config"]["__class__"] == "UMXSeparatorConfig"


def test_single_file_default_out_and_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src" / "vocals-0123abcd.pth"
    src.parent.mkdir()
    shutil.copy(CHECKPOINTS / "umx_tiny_legacy.pth", src)
    monkeypatch.chdir(tmp_path)
    code, out, err = run([src], capsys)
    assert code == 0, err
    _, config, provenance = load_canonical(tmp_path / "vocals-0123abcd")
    assert config.separator.targets == ("vocals",) and provenance["sha256"] == sha256_file(src)
    assert "legacy" in out and "dropped sample_rate, stft.window, transform.0.window" in out
    assert "no separator.json and no matching preset" in out


def test_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_stem = tmp_path / "d"
    assert run([CHECKPOINTS / "demucs_small_package.th", "-o", out_stem, "-q"], capsys)[0] == 0
    before = (tmp_path / "d.safetensors").read_bytes()
    (tmp_path / "d.json").write_text("{}")  # any change must survive a refused run
    code, _, err = run([CHECKPOINTS / "demucs_small_fp16_legacy.th", "-o", out_stem], capsys)
    assert code == 1 and "exists; pass --force" in err
    assert (tmp_path / "d.safetensors").read_bytes() == before and (tmp_path / "d.json").read_text() == "{}"
    code, _, err = run([CHECKPOINTS / "demucs_small_fp16_legacy.th", "-o", out_stem, "--force"], capsys)
    assert code == 0, err
    assert load_canonical(out_stem)[2]["source"] == "demucs_small_fp16_legacy.th"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.safetensors"]


@pytest.fixture
def broken_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two framework targets that fail: one whose port does not exist, one whose writer fails half-way."""
    from unmix import convert_targets as targets

    monkeypatch.setitem(targets.FRAMEWORKS, "absent", targets.Framework("absent", "umx_absent", "Absent", "x", "-"))
    monkeypatch.setitem(targets.FRAMEWORKS, "halfway", targets.Framework("halfway", "umx_half", "Halfway", "x", "-"))
    real_writer = targets._writer

    def writer(fw: targets.Framework):
        if fw.key != "halfway":
            return real_writer(fw)

        def save_native(path: Path, weights: object, config: object, force: bool = False) -> list[Path]:
            Path(f"{path}.part1").write_bytes(b"written before the failure")
            raise OSError("disk full (simulated)")

        return save_native

    monkeypatch.setattr(targets, "_writer", writer)


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "not_a_checkpoint",
        "empty",
        "wrong_preset",
        "folder_without_model",
        "absent_port",
        "writer_fails_halfway",
    ],
)
def test_failures_leave_nothing_behind(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture, broken_ports: None
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    raw = (CHECKPOINTS / "umx_tiny_zip.pth").read_bytes()
    extra: list[str] = []
    source = inputs / "x.pth"
    expected = {
        "truncated": "corrupt or truncated",
        "not_a_checkpoint": "not a PyTorch checkpoint",
        "empty": "empty",
        "wrong_preset": "mis-shaped  fc1.weight: expected (512, 2974), got (16, 80)",
        "folder_without_model": "without an Open-Unmix model",
        "absent_port": "the Absent port is not available yet",
        "writer_fails_halfway": "disk full (simulated)",
    }[case]
    if case == "truncated":
        source.write_bytes(raw[: len(raw) - 500])
    elif case == "not_a_checkpoint":
        source.write_text("hello")
    elif case == "empty":
        source.write_bytes(b"")
    elif case == "wrong_preset":
        source.write_bytes(raw)
        extra = ["--model", "umxhq"]
    elif case == "folder_without_model":
        source = inputs / "folder"
        source.mkdir()
        (source / "separator.json").write_text("{}")
        (source / "notes.txt").write_text("no weights here")
    else:
        source.write_bytes(raw)
        extra = ["--to", "absent" if case == "absent_port" else "halfway"]
    out = tmp_path / "out" / "nested" / "model"
    code, stdout, err = run([source, "--out", out, *extra], capsys)
    assert code == 1
    assert expected in err
    assert not (tmp_path / "out").exists(), "a failed conversion left files or folders behind"
    assert stdout == ""
    (tmp_path / "out").mkdir()  # an existing output folder is left as it was, without staging leftovers
    assert run([source, "--out", tmp_path / "out" / "model", *extra], capsys)[0] == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_to_nnabla_crosses_into_the_nnabla_environment(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # from the main environment the NNabla writer runs in .venv-nnabla through a subprocess and files
    code, _, err = run([CHECKPOINTS / "umx_tiny_zip.pth", "-o", tmp_path / "m", "--to", "nnabla"], capsys)
    assert code == 0, err
    assert any(p.suffix == ".h5" for p in tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


def test_nonfinite_weights_warn(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = (CHECKPOINTS / "umx_tiny_zip.pth").read_bytes()
    src = zipfile.ZipFile(io.BytesIO(raw))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:  # storage 0 is input_mean (40 x float32)
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                values = np.frombuffer(data, "<f4").copy()
                values[:3] = np.nan
                values[3] = np.inf
                data = values.tobytes()
            dst.writestr(info.filename, data)
    (tmp_path / "nan.pth").write_bytes(buf.getvalue())
    code, _, err = run([tmp_path / "nan.pth", "-o", tmp_path / "m"], capsys)
    assert code == 0, err
    assert "warning:" in err and "input_mean (3 NaN, 1 Inf)" in err
    weights, _, _ = load_canonical(tmp_path / "m")
    assert np.isnan(weights["target_models.nan.input_mean"][:3]).all()


def test_usage_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["x.pth", "--to", "caffe"])
    assert info.value.code == 2 and "unknown framework" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "unmix", "convert", str(CHECKPOINTS / "demucs_small_package.th"), "-o", "d"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "Demucs v2, sources drums, bass, other, vocals: channels 4, depth 4" in result.stdout
    script = Path(sys.executable).parent / "unmix-convert"
    if script.exists():
        result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "canonical" in result.stdout
