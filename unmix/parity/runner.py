"""Run implementations stage by stage (:func:`unmix.parity.stages.capture`): here, or in the NNabla environment.

An implementation runs in this process when its framework is importable here; NNabla, which lives in its own
environment (``core_spec.frameworks``), runs through ``python -m unmix.parity.run`` in ``.venv-nnabla``: the
weights cross as a canonical safetensors file, the audio, the reference's stage outputs and the results as
``.npz`` files. NumPy only.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core_spec import frameworks
from core_spec.canonical import save_canonical
from unmix import environments
from unmix.parity.adapters import DeviceUnavailable
from unmix.parity.adapters import load as load_adapter
from unmix.parity.stages import Config, StageUnavailable, capture

__all__ = [
    "PACKAGES",
    "Result",
    "available_here",
    "read_results",
    "run",
    "run_here",
    "scale_weight",
    "versions_of",
    "write_results",
]

Array = np.ndarray


@dataclasses.dataclass
class Result:
    """One implementation in one dtype: its capture, or why it has none: ``error`` (it could not run: a failure)
    or ``note`` (the implementation has no such dtype, e.g. NNabla float64: not a failure)."""

    implementation: str
    dtype: str
    captures: dict[str, Array] | None
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)  # of the packages it ran with


PACKAGES = {
    "reference": ("numpy",),
    "upstream": ("torch", "openunmix", "demucs", "julius"),
    "torch": ("torch",),
    "tf": ("tensorflow", "keras"),
    "jax": ("jax", "jaxlib", "flax"),
    "nnabla": ("nnabla", "numpy"),
}


def versions_of(name: str) -> dict[str, str]:
    """The installed versions of implementation ``name``'s packages (this environment)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in PACKAGES.get(name, ()):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def available_here(name: str, config: Config | None = None) -> bool:
    """Whether implementation ``name`` can be imported in this process (``upstream``: torch, openunmix, demucs;
    for an HTDemucs ``config``: torch and the demucs 4.1.0 oracle folder, :mod:`unmix.parity.oracle4`)."""
    import importlib.util

    from core_spec.configs import BagConfig, HTDemucsConfig

    if name == "reference":
        return True
    if name == "upstream":
        if isinstance(config, (HTDemucsConfig, BagConfig)):
            from unmix.parity.oracle4 import oracle4_available

            return oracle4_available() and importlib.util.find_spec("openunmix") is not None
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "openunmix", "demucs", "julius"))
    return frameworks.importable(name)


def scale_weight(weights: Mapping[str, Array], name: str, factor: float) -> dict[str, Array]:
    """A copy of ``weights`` with tensor ``name`` multiplied by ``factor`` (the test hook of ``unmix-parity``).

    Raises:
        KeyError: no such tensor (the message lists a few names).
    """
    if name not in weights:
        raise KeyError(f"no weight named {name!r}; e.g. {', '.join(sorted(weights)[:5])}")
    out = dict(weights)
    out[name] = (np.asarray(weights[name], dtype=np.float64) * factor).astype(np.asarray(weights[name]).dtype)
    return out


def run_here(
    name: str,
    config: Config,
    weights: Mapping[str, Array],
    audio: Array,
    dtypes: Sequence[str],
    device: str,
    inputs: Mapping[str, Array] | None,
    shifts: int = 0,
) -> list[Result]:
    """Capture ``name`` in every dtype it has among ``dtypes`` (this process); an implementation without the
    model (an adapter without the HTDemucs stages) gets a ``note``, not an ``error``."""
    try:
        port = load_adapter(name, device)
    except (ImportError, DeviceUnavailable) as e:
        return [Result(name, dt, None, error=f"{type(e).__name__}: {e}") for dt in dtypes]
    results = []
    for dtype in dtypes:
        if dtype not in port.dtypes:
            results.append(Result(name, dtype, None, note=f"{name} has no {dtype} ({', '.join(port.dtypes)} only)"))
            continue
        start = time.perf_counter()
        try:
            out = capture(port, config, weights, audio, dtype, inputs, shifts)
        except StageUnavailable as e:
            results.append(Result(name, dtype, None, note=f"not available yet: {e}"))
            continue
        except Exception as e:  # an implementation that crashes is a finding, reported like a failed stage
            results.append(Result(name, dtype, None, error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            continue
        results.append(Result(name, dtype, out, time.perf_counter() - start, versions=versions_of(name)))
    return results


def _run_in_nnabla_env(
    config: Config,
    weights: Mapping[str, Array],
    audio: Array,
    dtypes: Sequence[str],
    device: str,
    inputs: Mapping[str, Array] | None,
    shifts: int = 0,
) -> list[Result]:
    try:
        python = environments.nnabla_python()
    except FileNotFoundError as e:
        return [Result("nnabla", dt, None, error=str(e)) for dt in dtypes]
    with tempfile.TemporaryDirectory(prefix="unmix-parity-") as tmp:
        folder = Path(tmp)
        st_path, _ = save_canonical(folder / "model", dict(weights), config)
        meta = {"implementation": "nnabla", "dtypes": list(dtypes), "device": device, "weights": str(st_path)}
        meta["shifts"] = shifts
        arrays = {"audio": audio, **{f"in|{k}": v for k, v in (inputs or {}).items()}}
        np.savez(folder / "request.npz", meta=json.dumps(meta), **arrays)
        cmd = [str(python), "-m", "unmix.parity.run", str(folder / "request.npz"), str(folder / "result.npz")]
        done = subprocess.run(cmd, env=environments.nnabla_env(), capture_output=True, text=True)
        if done.returncode != 0 or not (folder / "result.npz").exists():
            error = f"{' '.join(cmd)} exited with {done.returncode}: {done.stderr[-3000:]}"
            return [Result("nnabla", dt, None, error=error) for dt in dtypes]
        return read_results(folder / "result.npz")


def run(
    name: str,
    config: Config,
    weights: Mapping[str, Array],
    audio: Array,
    dtypes: Sequence[str],
    device: str,
    inputs: Mapping[str, Array] | None = None,
    shifts: int = 0,
) -> list[Result]:
    """Capture implementation ``name`` (here, or NNabla in its environment) in each of ``dtypes``; ``shifts``:
    HTDemucs ``apply_model``'s seeded random shifts."""
    if name == "nnabla" and not available_here("nnabla"):
        return _run_in_nnabla_env(config, weights, audio, dtypes, device, inputs, shifts)
    return run_here(name, config, weights, audio, dtypes, device, inputs, shifts)


def write_results(path: Path, results: Sequence[Result]) -> None:
    """``results`` as one ``.npz``: ``meta`` (JSON) and ``<dtype>|<key>`` arrays."""
    meta = [dataclasses.asdict(dataclasses.replace(r, captures=None)) for r in results]
    arrays: dict[str, Any] = {}
    for r in results:
        arrays.update({f"{r.dtype}|{k}": v for k, v in (r.captures or {}).items()})
    np.savez(path, meta=json.dumps(meta), **arrays)


def read_results(path: Path) -> list[Result]:
    """Inverse of :func:`write_results`."""
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        arrays = {k: f[k] for k in f.files if k != "meta"}
    results = []
    for m in meta:
        prefix = f"{m['dtype']}|"
        ran = not (m["error"] or m["note"])
        captures = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)} if ran else None
        results.append(Result(**{**m, "captures": captures}))
    return results
