"""``unmix-parity MODEL`` reads every form of a model to the same canonical weights (``unmix.parity.model``): the
upstream package itself, its canonical conversion and each port's native file (NNabla's through .venv-nnabla)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core_spec.frameworks import REPO_ROOT
from unmix.environments import nnabla_env
from unmix.parity.model import ModelError, load_model

pytestmark = pytest.mark.upstream

NATIVE = {"torch": "-torch.pth", "tf": "-tf.weights.h5", "jax": "-jax.msgpack", "nnabla": "-nnabla.h5"}


def test_every_form_of_a_model_reads_the_same(demucs_package: Path, tmp_path: Path) -> None:
    stem = tmp_path / "demucs"
    cmd = [sys.executable, "-m", "unmix", "convert", str(demucs_package), "--out", str(stem), "-q"]
    out = subprocess.run(
        [*cmd, "--to", ",".join(NATIVE)], capture_output=True, text=True, env=nnabla_env(), cwd=REPO_ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    upstream = load_model(demucs_package)
    assert upstream.origin == "upstream"
    forms = {"canonical": stem.with_name("demucs.safetensors")}
    forms.update({fw: stem.with_name("demucs" + suffix) for fw, suffix in NATIVE.items()})
    for kind, path in forms.items():
        model = load_model(path)
        assert model.origin == ("canonical" if kind == "canonical" else f"native ({kind})"), path
        assert model.config == upstream.config, path
        assert sorted(model.weights) == sorted(upstream.weights), path
        for name, value in upstream.weights.items():
            np.testing.assert_array_equal(model.weights[name], value, err_msg=f"{path}: {name}")


def test_unreadable_model(tmp_path: Path) -> None:
    (tmp_path / "garbage.th").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"garbage\.th"):
        load_model(tmp_path / "garbage.th")
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.th")
