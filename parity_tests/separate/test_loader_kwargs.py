"""``from_canonical``, ``from_canonical_file`` and ``load_module`` take the same ``device="cpu"|"gpu"`` and
``dtype="float32"|"float64"`` keywords in every port (what ``unmix-separate --device/--dtype`` passes); a GPU
that is not there is a clear error. (NNabla, float32 only: ``parity_tests/separate_nnabla``.)"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from core_spec.canonical import save_canonical
from core_spec.configs import DEMUCS_PRESETS
from core_spec.seeded import random_weights

MODULES = {"torch": "torch", "tf": "tensorflow", "jax": "jax"}


def dtype_of(framework: str, model) -> str:
    if framework == "torch":
        return str(next(model.parameters()).dtype).removeprefix("torch.")
    if framework == "tf":
        return model.weights[0].dtype if isinstance(model.weights[0].dtype, str) else model.weights[0].dtype.name
    import jax

    return str(jax.tree.leaves(__import__("flax").nnx.state(model))[0].dtype)


def gpu_missing(framework: str) -> bool:
    if framework == "torch":
        return not importlib.import_module("torch").cuda.is_available()
    if framework == "tf":
        return not importlib.import_module("tensorflow").config.list_logical_devices("GPU")
    import jax

    return not any(d.platform == "gpu" for d in jax.devices())


@pytest.mark.parametrize("framework", list(MODULES))
def test_device_and_dtype_keywords(framework: str, tmp_path: Path) -> None:
    pytest.importorskip(MODULES[framework])
    port = importlib.import_module(f"umx_{framework}")
    config = DEMUCS_PRESETS["demucs_unittest"]
    weights = random_weights(config, 0)
    save_canonical(tmp_path / "m", weights, config)
    port.save_native(tmp_path / "native", weights, config)
    for dtype in ("float32", "float64", np.float64):
        name = np.dtype(dtype).name
        assert dtype_of(framework, port.from_canonical(config, weights, device="cpu", dtype=dtype)) == name
        assert dtype_of(framework, port.from_canonical_file(tmp_path / "m", device="cpu", dtype=dtype)) == name
        assert dtype_of(framework, port.load_module(tmp_path / "native", device="cpu", dtype=dtype)) == name
    with pytest.raises(ValueError, match=r"dtype must be one of float32, float64|float32 or float64"):
        port.from_canonical(config, weights, device="cpu", dtype="float16")
    if gpu_missing(framework):
        with pytest.raises(RuntimeError, match=r"gpu|GPU|CUDA|cuda"):
            port.from_canonical(config, weights, device="gpu")
