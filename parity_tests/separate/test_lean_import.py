"""``unmix.lean_import``: the TensorFlow commands import ``umx_tf`` without the optional packages TensorFlow and
Keras try at import (jax, pandas, matplotlib), and those packages stay importable afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unmix.lean_import import TF_OPTIONAL, without_optional

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fresh(name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def test_hidden_inside_importable_after() -> None:
    _fresh("colorsys")
    with without_optional(["colorsys"]):
        with pytest.raises(ModuleNotFoundError, match="colorsys"):
            import colorsys
    import colorsys

    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0)[0] == 0.0


def test_an_imported_package_is_never_hidden() -> None:
    import json

    with without_optional(["json"]):
        import json as again

    assert again is json


def test_tensorflow_port_imports_without_them() -> None:
    """The command's import of the TF port (``separate_models._import_port``) in a fresh process: the port works,
    none of the optional packages was imported, and each imports afterwards."""
    probe = (
        "import sys\n"
        "from unmix.separate_models import _import_port\n"
        "port = _import_port('tf')\n"
        f"names = {TF_OPTIONAL!r}\n"
        "print(sorted(n for n in names if n in sys.modules))\n"
        "import keras, tensorflow as tf\n"
        "print(keras.backend.backend(), float(tf.reduce_sum(tf.ones(3))))\n"
        "import importlib.util\n"
        "print(all(importlib.util.find_spec(n) is not None for n in names))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == ["[]", "tensorflow 3.0", "True"]
