"""Every port importable here exports the public names of :mod:`core_spec.public_api`, module by module, and the
separator and weights entry points take the same leading arguments.

In ``.venv`` this checks ``umx_torch``, ``umx_tf`` and ``umx_jax``; in ``.venv-nnabla``, ``umx_nnabla``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import pytest

from core_spec.public_api import PORTS, PUBLIC_NAMES

AVAILABLE = [port for port, framework in PORTS.items() if importlib.util.find_spec(framework) is not None]


def test_some_port_is_importable_here() -> None:
    assert AVAILABLE, f"none of the frameworks of {sorted(PORTS.values())} is installed in this environment"


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES))
@pytest.mark.parametrize("port", AVAILABLE)
def test_port_exports_the_public_names(port: str, module: str) -> None:
    mod = importlib.import_module(f"{port}.{module}" if module else port)
    exported = set(getattr(mod, "__all__", ()))
    missing = [name for name in PUBLIC_NAMES[module] if name not in exported or not hasattr(mod, name)]
    assert not missing, f"{mod.__name__} does not export {missing}"


def _leading(fn: object, n: int) -> list[str]:
    params = [p.name for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    return params[:n]


@pytest.mark.parametrize("port", AVAILABLE)
def test_entry_points_take_the_same_leading_arguments(port: str) -> None:
    pkg = importlib.import_module(port)
    assert _leading(pkg.from_canonical, 2) == ["config", "weights"]
    assert _leading(pkg.save_native, 4) == ["path", "weights", "config", "force"]
    for name in ("from_canonical_file", "load_module", "load_native"):
        assert _leading(getattr(pkg, name), 1) == ["path"], name
    assert _leading(pkg.apply_model, 2) == ["model", "mix"]
    assert _leading(pkg.separate_track, 3) == ["model", "audio", "sample_rate"]
    assert _leading(pkg.Separator.separate, 3) == ["audio", "sample_rate", "resample"]
    assert _leading(pkg.Separator.from_config, 2) == ["config", "weights"]
