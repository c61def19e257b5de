"""``--model`` naming a native file of the chosen port (``.pth``, ``.weights.h5``, ``.msgpack``): found through the
port's package-level ``native_paths`` and read by its ``load_native``, for every port of this environment (NNabla's
``.h5``: ``parity_tests/separate_nnabla``)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from core_spec.configs import DemucsConfig
from core_spec.frameworks import FRAMEWORKS
from core_spec.seeded import random_weights
from unmix.separate_models import resolve_weights

MAIN_ENV = ("jax", "tf", "torch")  # NNabla: parity_tests/separate_nnabla


@pytest.mark.parametrize("framework", MAIN_ENV)
def test_a_native_file_of_the_port_is_read_as_native(framework: str, tmp_path: Path) -> None:
    pytest.importorskip(FRAMEWORKS[framework].module)
    port = importlib.import_module(FRAMEWORKS[framework].package)
    config = DemucsConfig(channels=4, depth=3, lstm_layers=1)
    weights = random_weights(config, seed=3)
    written = port.save_native(tmp_path / "small", weights, config)
    for name in (tmp_path / "small", *written):
        got, got_config, model_name, origin = resolve_weights(name, port)
        assert (origin, model_name, got_config) == ("native", "small", config), name
        assert sorted(got) == sorted(weights)
        for key, value in weights.items():
            np.testing.assert_array_equal(got[key], value.astype(np.float32), err_msg=key)
