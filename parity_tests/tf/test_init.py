"""A model built without weights (what ``unmix-train --framework tf`` trains from) draws PyTorch's default
initialisation per layer: no two kernels share their values, and a build seeded with ``keras.utils.set_random_seed``
is the same in every process (one shared, import-time initialiser gave equal kernels and a new model per process)."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys

import pytest

from core_spec.configs import demucs_preset, umx_preset
from core_spec.frameworks import REPO_ROOT

CODE = """
import hashlib, sys
import keras
import umx_tf
from core_spec.configs import demucs_preset, umx_preset
from umx_tf.weights import to_canonical
keras.utils.set_random_seed(42)
config = demucs_preset("demucs_unittest") if sys.argv[1] == "demucs" else umx_preset("umxse").model
weights = to_canonical(umx_tf.from_canonical(config))
print(hashlib.sha256(b"".join(weights[k].tobytes() for k in sorted(weights))).hexdigest())
"""


def _build(name: str) -> dict:
    import keras

    import umx_tf
    from umx_tf.weights import to_canonical

    keras.utils.set_random_seed(42)
    config = demucs_preset("demucs_unittest") if name == "demucs" else umx_preset("umxse").model
    return to_canonical(umx_tf.from_canonical(config))


@pytest.mark.parametrize("name", ["demucs", "umx"])
def test_fresh_kernels_are_distinct_and_seeded(name: str) -> None:
    weights = _build(name)
    kernels = {k: v for k, v in weights.items() if k.endswith("weight") and v.ndim >= 2}
    equal = [(a, b) for a, b in itertools.combinations(sorted(kernels), 2)
             if kernels[a].shape == kernels[b].shape and (kernels[a] == kernels[b]).all()]  # fmt: skip
    assert not equal, f"kernels with equal initial values: {equal}"
    here = hashlib.sha256(b"".join(weights[k].tobytes() for k in sorted(weights))).hexdigest()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", CODE, name], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == here, "the seeded build differs between processes"
