"""From training to separation to sharing, on the command line (issue 29), with real music and upstream's own
commands: two Open-Unmix targets trained in one framework into one run folder, separated from that folder in
another framework, exported to an openunmix 1.3.0 model folder and separated by upstream's ``umx``; the same for a
Demucs v2 run exported as a demucs 2.0.3 package and ``python -m demucs.separate``. Upstream's stems equal the
port's within the tolerance rows (upstream runs offline through ``benchmarks.upstream_cli``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_spec.canonical import save_canonical
from core_spec.configs import UMXConfig
from core_spec.tolerances import check
from core_spec.training import initial_weights
from parity_tests.fixtures_train import load_train_case
from parity_tests.tiny_musdb import make_tiny_musdb
from unmix.convert_cli import main as convert
from unmix.train_cli import main as train

from .helpers import read_stems, run

pytestmark = [pytest.mark.upstream, pytest.mark.slow]
pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
# the umxhq STFT (2049 bins, so the separator is umxhq's: 44.1 kHz, 4096 / 1024) with a narrow network: seconds
UMX_SMALL = UMXConfig(nb_bins=2049, max_bin=1487, hidden_size=16, nb_layers=3, nb_channels=2)


def upstream(command: list, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.upstream_cli", *map(str, command)], env=env, cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_musdb(tmp_path_factory.mktemp("tiny_musdb"))


def test_umx_trained_in_jax_separates_in_torch_and_in_upstream_umx(
    tiny_root: Path, inputs, tmp_path: Path, capsys
) -> None:
    init = tmp_path / "init"
    save_canonical(init, initial_weights(UMX_SMALL, seed=5), UMX_SMALL)
    run_folder = tmp_path / "run"
    for target in ("vocals", "drums"):  # a second target into the same folder: not an overwrite
        code = train(["--framework", "jax", "--model", "umx", "--target", target, "--root", str(tiny_root),
                      "--out", str(run_folder), "--init", str(init), "--seq-dur", "1.0", "--batch-size", "2",
                      "--samples-per-track", "2", "--max-steps", "2", "--quiet"])  # fmt: skip
        assert code == 0
    assert {p.name for p in run_folder.glob("*.safetensors")} == {"vocals.safetensors", "drums.safetensors"}

    code, _, err = run([inputs.excerpt, "--model", run_folder, "--framework", "torch", "-o", tmp_path / "ours", "-q"],
                       capsys)  # fmt: skip
    assert code == 0, err
    assert convert([str(run_folder), "--targets", "vocals,drums", "--export", "openunmix", "-o",
                    str(tmp_path / "umx_folder"), "-q"]) == 0  # fmt: skip
    upstream(["umx", inputs.excerpt, "--model", tmp_path / "umx_folder", "--targets", "vocals", "drums",
              "--outdir", tmp_path / "up", "--no-cuda"], tmp_path)  # fmt: skip

    targets = ("vocals", "drums")
    theirs = read_stems(tmp_path / "up" / "excerpt", targets)
    ours = read_stems(tmp_path / "ours" / "run" / "excerpt", targets)
    assert np.abs(theirs).max() > 0
    check(ours, theirs, "separator", "float32", what="unmix-separate (torch) vs umx on the export")


def test_demucs_trained_in_torch_separates_in_jax_and_in_upstream_demucs(
    tiny_root: Path, inputs, tmp_path: Path, capsys
) -> None:
    case = load_train_case("demucs")  # the fixture's small Demucs v2 (its depth and channels), upstream's init
    init = tmp_path / "init"
    save_canonical(init, initial_weights(case.config, seed=3), case.config)
    run_folder = tmp_path / "run_demucs"
    code = train(["--framework", "torch", "--model", "demucs", "--root", str(tiny_root), "--out", str(run_folder),
                  "--init", str(init), "--samples", "400", "--data-stride", "44100", "--batch-size", "2",
                  "--remix-group-size", "2", "--max-steps", "2", "--quiet"])  # fmt: skip
    assert code == 0

    code, _, err = run([inputs.clip, "--model", run_folder, "--framework", "jax", "-o", tmp_path / "ours", "-q"],
                       capsys)  # fmt: skip
    assert code == 0, err
    (tmp_path / "models").mkdir()
    assert convert([str(run_folder), "--export", "demucs", "-o", str(tmp_path / "models" / "mine.th"), "-q"]) == 0
    upstream(["demucs", inputs.clip, "-n", "mine", "--models", tmp_path / "models", "-o", tmp_path / "up",
              "-d", "cpu"], tmp_path)  # fmt: skip

    sources = tuple(case.config.sources)
    theirs = read_stems(tmp_path / "up" / "mine" / "clip", sources)
    ours = read_stems(tmp_path / "ours" / "run_demucs" / "clip", sources)
    assert np.abs(theirs).max() > 0 and ours.shape == theirs.shape
    # both write 16-bit WAV (upstream truncates where unmix-separate rounds): the pcm16 row, as the defaults test
    check(ours, theirs, "data.pcm16", "float32", what="unmix-separate (jax) vs python -m demucs.separate")
