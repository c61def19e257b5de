"""What ``unmix-parity MODEL`` reads: anything ``unmix-convert`` and ``unmix-separate`` read, into canonical weights
in memory (nothing is written).

In order: a canonical file (``<stem>.safetensors`` + ``.json``); a native file of a port (its ``.json`` carries
the port's format tag: ``.pth``, ``.weights.h5``, ``.msgpack`` of a port importable here, read by that port's
``load_native``; NNabla's ``.h5`` read in ``.venv-nnabla`` when NNabla is not importable here); an upstream file
or folder (``weights_convert.sources.read_upstream``: demucs 2 packages, demucs 4 packages, bags as a
``remote/*.yaml`` or a folder holding one, bare HTDemucs state dicts). The reading itself is
``unmix.separate_models.resolve_weights``, shared with ``unmix-separate``. NumPy only (a port is imported
only to read its own native file).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

from core_spec import frameworks
from core_spec.canonical import canonical_paths, load_canonical
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig
from unmix import environments
from unmix.separate_models import ModelError, resolve_weights

__all__ = ["Model", "ModelError", "load_model"]

_NATIVE_SUFFIXES = (".weights.h5", ".msgpack", ".pth", ".h5", ".json")


@dataclasses.dataclass
class Model:
    """Canonical weights and the config of a separation model, and where they came from."""

    weights: dict[str, np.ndarray]
    config: UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig
    name: str
    origin: str  # canonical, native (<framework>) or upstream
    path: str


def _header_format(path: Path) -> str | None:
    """The ``format`` of the JSON header beside a native file (``None`` if there is none)."""
    name = path.name
    for suffix in _NATIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    header = path.with_name(name + ".json")
    try:
        return json.loads(header.read_text()).get("format") if header.is_file() else None
    except (ValueError, OSError):
        return None


def _nnabla_native(path: Path) -> tuple[dict[str, np.ndarray], Any]:
    """An NNabla native file read in ``.venv-nnabla`` (``umx_nnabla.load_native``), crossing as a canonical file."""
    python = environments.nnabla_python()
    with tempfile.TemporaryDirectory(prefix="unmix-parity-") as tmp:
        out = Path(tmp) / "model"
        code = (
            "import sys; from umx_nnabla.weights import load_native; from core_spec.canonical import save_canonical;"
            "w, c = load_native(sys.argv[1]); save_canonical(sys.argv[2], w, c)"
        )
        done = subprocess.run(
            [str(python), "-c", code, str(path), str(out)],
            env=environments.nnabla_env(),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ModelError(f"{path}: the NNabla environment cannot read it: {done.stderr.strip()[-2000:]}")
        weights, config, _ = load_canonical(out)
        return weights, config


def load_model(path: str | Path) -> Model:
    """The model ``path`` names (module docstring).

    Raises:
        ModelError: nothing readable there, or not a separation model (a single Open-Unmix target).
    """
    path = Path(path)
    fmt = None if canonical_paths(path)[0].exists() else _header_format(path)
    port = None
    origin_framework = None
    if fmt is not None:
        for key in frameworks.FRAMEWORKS:
            if not frameworks.importable(key):
                continue
            weights = importlib.import_module(f"{frameworks.framework(key).package}.weights")
            if getattr(weights, "FORMAT", None) == fmt:
                # what resolve_weights calls, from the port's weights module (not every port exports native_paths
                # at package level)
                port = types.SimpleNamespace(
                    native_paths=weights.native_paths, load_native=weights.load_native, weights=weights
                )
                origin_framework = key
                break
    if fmt is not None and port is None and "nnabla" in fmt and not frameworks.importable("nnabla"):
        weights, config = _nnabla_native(path)
        name, origin = path.name.split(".", 1)[0], "native (nnabla)"
    else:
        weights, config, name, origin = resolve_weights(path, port)
        if origin == "native":
            origin = f"native ({origin_framework})"
    if isinstance(config, UMXConfig):
        raise ModelError(
            f"{path}: holds one Open-Unmix target network, not a separator; convert the targets together "
            "(unmix-convert on the model folder) to get a separator file"
        )
    if not isinstance(config, (UMXSeparatorConfig, DemucsConfig, HTDemucsConfig, BagConfig)):
        raise ModelError(f"{path}: holds a {type(config).__name__}, not a separation model")
    return Model(dict(weights), config, name, origin, str(path))
