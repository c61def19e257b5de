"""Canonical weights -> the layouts upstream's own code loads (``unmix-convert --export``).

- ``openunmix``: a model folder as openunmix 1.3.0's ``scripts/train.py`` writes it, which ``umx --model FOLDER
  --targets ...`` and ``openunmix.utils.load_separator(FOLDER, targets=[...])`` load:

  - ``separator.json``: ``{"nb_channels", "nfft", "nhop", "sample_rate"}`` (what ``load_separator`` reads);
  - ``<target>.json``: a training log whose ``"args"`` hold ``nfft``, ``nb_channels`` and ``hidden_size`` (what
    ``load_target_models`` reads; ``max_bin`` it takes from the shape of ``input_mean``), plus ``nhop``,
    ``bandwidth``, ``target`` and ``unidirectional`` as ``scripts/train.py`` records them;
  - ``<target>.pth``: ``torch.save`` of the target's state dict, upstream's names
    (:func:`umx_torch.weights.state_dict_from_canonical`; the canonical arrays are already upstream's names and
    layouts), float32, bit for bit the canonical arrays.

  openunmix builds every network with ``nb_layers=3``, bidirectional, and its separator with a centred,
  unnormalised STFT: a model outside that cannot be loaded there and is refused. It finds ``<target>*.pth`` by a
  glob, so target names where one starts with another (``vocals``, ``vocals2``) are refused too. The Wiener
  settings are not part of the folder: ``umx`` takes them from its command line (``--niter``, ``--residual``,
  ``--wiener-win-len``).
- ``demucs``: a package as demucs 2.0.3's ``demucs.utils.save_model`` writes it, which ``demucs.utils.load_model``
  and ``python -m demucs.separate --models DIR -n NAME`` load (``DIR/NAME.th``): ``{"klass": demucs.model.Demucs,
  "args": (), "kwargs": <every constructor argument>, "state": <state dict>, "training_args":
  Namespace(diffq=0.0, qat=None, q_min_size=1.0)}`` (the training arguments ``load_model`` reads to rebuild a
  quantizer: none). The class is recorded by name (``demucs.model.Demucs``), so writing needs no demucs.

Both need torch (``torch.save``); without it :func:`require_torch` says so and where to run instead. Outputs are
built beside their final path (a staging folder or a temporary file) and renamed into place when complete; an
existing output is replaced only with ``force``, and a folder only when it is empty or an openunmix model folder
(it holds ``separator.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.canonical import per_target
from core_spec.configs import (
    DemucsConfig,
    HTDemucsConfig,
    UMXConfig,
    UMXSeparatorConfig,
    bandwidth_to_max_bin,
    constructor_kwargs,
)
from core_spec.files import atomic_write
from weights_convert.errors import ConversionError, OutputExistsError

__all__ = [
    "FORMATS",
    "DEMUCS_CLASS",
    "check_exportable",
    "demucs_package",
    "describe_kind",
    "export",
    "export_path",
    "openunmix_args",
    "require_torch",
    "separator_json",
    "upstream_command",
]

FORMATS = ("openunmix", "demucs")
DEMUCS_CLASS = ("demucs.model", "Demucs")  # what demucs 2.0.3's save_model records as "klass"
# openunmix 1.3.0's load_target_models builds OpenUnmix(nb_bins, nb_channels, hidden_size, max_bin) with the
# constructor's other defaults; its Separator uses make_filterbanks(center=True) (torch.stft, not normalised)
_UPSTREAM_UMX = {"nb_layers": 3, "unidirectional": False}
_OPENUNMIX_BANDWIDTH = 16000  # scripts/train.py's default --bandwidth


def require_torch(fmt: str) -> Any:
    """``torch``, or a :class:`ConversionError` saying that ``--export fmt`` needs it and where to run."""
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"--export {fmt} writes {'.pth files' if fmt == 'openunmix' else 'a .th package'} with torch.save, and "
            f"torch cannot be imported in this environment ({sys.executable}: {e}); run unmix-convert in the main "
            f"environment (.venv, made by `make setup`), which has torch"
        ) from None
    return torch


def describe_kind(config: Any) -> str:
    if isinstance(config, UMXSeparatorConfig):
        return f"an Open-Unmix separator (targets {', '.join(config.separator.targets)})"
    if isinstance(config, UMXConfig):
        return "one Open-Unmix target network"
    if isinstance(config, DemucsConfig):
        return f"a Demucs v2 model (sources {', '.join(config.sources)})"
    if isinstance(config, HTDemucsConfig):
        return f"an HTDemucs (v4) model (sources {', '.join(config.sources)})"
    return f"a {type(config).__name__}"


def check_exportable(config: Any, fmt: str, source: str) -> None:
    """Raise a :class:`ConversionError` naming ``source`` when ``config`` cannot be written as ``fmt``."""
    if fmt not in FORMATS:
        raise ConversionError(f"--export {fmt!r}: unknown layout; choose from {', '.join(FORMATS)}")
    if fmt == "demucs":
        if not isinstance(config, DemucsConfig):
            raise ConversionError(
                f"{source} holds {describe_kind(config)}; --export demucs writes demucs 2.0.3 packages of Demucs v2 "
                f"models: pass a Demucs model, or use --export openunmix for Open-Unmix"
            )
        return
    if not isinstance(config, UMXSeparatorConfig):
        raise ConversionError(
            f"{source} holds {describe_kind(config)}; --export openunmix writes openunmix model folders of Open-Unmix "
            f"separators: pass Open-Unmix targets, or use --export demucs for Demucs"
        )
    model, stft = config.model, config.separator.stft
    unsupported = [f"{k}={getattr(model, k)!r}" for k, v in _UPSTREAM_UMX.items() if getattr(model, k) != v]
    if not stft.center or stft.normalized:
        unsupported.append(f"STFT center={stft.center}, normalized={stft.normalized}")
    if unsupported:
        raise ConversionError(
            f"{source}: {', '.join(unsupported)}, but openunmix 1.3.0 loads a model folder as networks of "
            f"nb_layers=3, bidirectional, with a centred, unnormalised STFT: it would build another network; "
            f"use the canonical file with unmix-separate instead"
        )
    targets = config.separator.targets
    clashes = [(a, b) for a in targets for b in targets if a != b and b.startswith(a)]
    if clashes:
        a, b = clashes[0]
        raise ConversionError(
            f"{source}: targets {a!r} and {b!r}: openunmix finds a target's weights as '<target>*.pth', so "
            f"{a}*.pth would also match {b}.pth; rename one of them (unmix-convert --target, or the file's stem)"
        )
    bad = [t for t in targets if not t or t.startswith(".") or "/" in t or os.sep in t]
    if bad:
        raise ConversionError(f"{source}: target name(s) {bad} cannot be file names in an openunmix model folder")


def export_path(fmt: str, out: str | os.PathLike) -> Path:
    """The output of ``--export fmt -o OUT``: the folder ``OUT`` (``openunmix``) or ``OUT`` with the suffix
    ``.th`` added when it lacks it (``demucs``)."""
    path = Path(out).absolute()
    if fmt == "demucs" and path.suffix != ".th":
        path = path.with_name(path.name + ".th")
    return path


# --- the openunmix model folder ----------------------------------------------------------------------------------


def _plain_rate(rate: float) -> float | int:
    return int(rate) if float(rate).is_integer() else float(rate)


def separator_json(config: UMXSeparatorConfig) -> dict[str, Any]:
    """``separator.json``: the keys openunmix 1.3.0's ``load_separator`` reads."""
    sep = config.separator
    return {
        "nb_channels": config.model.nb_channels,
        "nfft": sep.stft.n_fft,
        "nhop": sep.stft.n_hop,
        "sample_rate": _plain_rate(sep.sample_rate),
    }


def _bandwidth(config: UMXSeparatorConfig) -> float | int:
    """A ``--bandwidth`` that gives the network's ``max_bin`` (upstream's 16000 Hz when it does)."""
    sep, crop = config.separator, config.model.crop_bins
    if bandwidth_to_max_bin(sep.sample_rate, sep.stft.n_fft, _OPENUNMIX_BANDWIDTH) == crop:
        return _OPENUNMIX_BANDWIDTH
    freqs = np.linspace(0, float(sep.sample_rate) / 2, sep.stft.nb_bins, endpoint=True)
    return float(freqs[crop - 1])


def openunmix_args(config: UMXSeparatorConfig, target: str) -> dict[str, Any]:
    """The ``"args"`` of ``<target>.json``: what ``load_target_models`` reads (``nfft``, ``nb_channels``,
    ``hidden_size``) and what ``scripts/train.py`` records beside them about the network and its STFT."""
    model, sep = config.model, config.separator
    return {
        "target": target,
        "nfft": sep.stft.n_fft,
        "nhop": sep.stft.n_hop,
        "nb_channels": model.nb_channels,
        "hidden_size": model.hidden_size,
        "bandwidth": _bandwidth(config),
        "unidirectional": model.unidirectional,
    }


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=4, sort_keys=True) + "\n"


def _write_openunmix(folder: Path, weights: Mapping[str, np.ndarray], config: UMXSeparatorConfig, info: dict) -> None:
    torch = require_torch("openunmix")
    from umx_torch.weights import state_dict_from_canonical

    targets = config.separator.targets
    nested = per_target(weights, targets, "separator weights")
    (folder / "separator.json").write_text(_json_text(separator_json(config)))
    for target in targets:
        state = state_dict_from_canonical(nested[target], config.model)  # checked against the inventory
        torch.save(state, folder / f"{target}.pth")
        log = {"args": openunmix_args(config, target), "unmix_ports": info}
        (folder / f"{target}.json").write_text(_json_text(log))


# --- the demucs package --------------------------------------------------------------------------------------------


class _GlobalRef:
    """A global recorded by name in a pickle (``GLOBAL module name``), without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Pickler(pickle._Pickler):  # the Python pickler: its save() can write a GLOBAL opcode by name
    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _GlobalRef):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
            return
        super().save(obj, save_persistent_id)


_PICKLE_MODULE = types.ModuleType("unmix_export_pickle")
_PICKLE_MODULE.Pickler = _Pickler  # type: ignore[attr-defined]


def demucs_package(weights: Mapping[str, np.ndarray], config: DemucsConfig) -> dict[str, Any]:
    """The package ``demucs.utils.save_model`` writes (tensors through :mod:`umx_torch.weights`)."""
    require_torch("demucs")
    from umx_torch.weights import state_dict_from_canonical

    kwargs = constructor_kwargs(config)
    kwargs["sources"] = list(config.sources)  # as demucs's own training passes them
    return {
        "klass": _GlobalRef(*DEMUCS_CLASS),
        "args": (),
        "kwargs": kwargs,
        "state": state_dict_from_canonical(weights, config),
        "training_args": argparse.Namespace(diffq=0.0, qat=None, q_min_size=1.0),
    }


def _write_demucs(path: str, weights: Mapping[str, np.ndarray], config: DemucsConfig) -> None:
    torch = require_torch("demucs")
    torch.save(demucs_package(weights, config), path, pickle_module=_PICKLE_MODULE, pickle_protocol=2)


# --- writing -------------------------------------------------------------------------------------------------------


def _refuse(out: Path, fmt: str, force: bool, sources: Sequence[Path]) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise OutputExistsError(f"{out} exists; pass --force to replace it")
    real = out.resolve()
    for source in sources:
        s = Path(source).resolve()
        if s == real or real in s.parents:
            what = "is" if s == real else "holds"
            raise ConversionError(f"{out} {what} the source {source}: not replaced; write the export elsewhere (-o)")
    if fmt == "demucs":
        if out.is_dir():
            raise ConversionError(f"{out} is a folder, not a demucs package; give a .th file name (-o NAME.th)")
        return
    if not out.is_dir():
        raise ConversionError(f"{out} exists and is not a folder; give a folder for the openunmix model (-o)")
    content = sorted(p.name for p in out.iterdir())
    if content and "separator.json" not in content:
        shown = ", ".join(content[:5]) + (", ..." if len(content) > 5 else "")
        raise ConversionError(
            f"{out} is not an openunmix model folder (no separator.json; it holds {shown}): not replaced, even with "
            f"--force; choose another folder (-o) or remove it"
        )


def _replace_folder(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``; an existing ``out`` is set aside first and removed once the move is done."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export(
    fmt: str,
    out: str | os.PathLike,
    weights: Mapping[str, np.ndarray],
    config: UMXSeparatorConfig | DemucsConfig,
    info: Mapping[str, Any] | None = None,
    force: bool = False,
    source: str = "the model",
    sources: Sequence[Path] = (),
) -> list[Path]:
    """Write ``weights`` in upstream's layout ``fmt`` at ``out`` (see :func:`export_path`); returns the files.

    ``info``: recorded in each ``<target>.json`` (``"unmix_ports"``: where the weights came from); ``source``:
    how errors name the input; ``sources``: paths the output must not replace.

    Raises:
        ConversionError: ``config`` cannot be written as ``fmt`` (:func:`check_exportable`), torch is missing, or
            the output cannot be replaced.
        OutputExistsError: the output exists and ``force`` is false.
    """
    check_exportable(config, fmt, source)
    require_torch(fmt)
    path = export_path(fmt, out)
    _refuse(path, fmt, force, sources)
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        if fmt == "demucs":
            atomic_write(path, lambda tmp: _write_demucs(tmp, weights, config), suffix=".th")
            done = True
            return [path]
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".staging"))
        try:
            _write_openunmix(staging, weights, config, dict(info or {}))
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 -> a folder's usual mode
            _replace_folder(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        done = True
        return sorted(path.iterdir(), key=lambda p: (p.name != "separator.json", p.name))
    finally:
        if not done:
            for p in created:  # innermost first
                try:
                    p.rmdir()
                except OSError:
                    break


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def upstream_command(fmt: str, out: Path, config: UMXSeparatorConfig | DemucsConfig) -> list[str]:
    """How upstream's own command separates with the export (lines for the summary)."""
    if fmt == "demucs":
        return [
            f"python -m demucs.separate --models {out.parent} -n {out.stem} TRACK   (demucs 2.0.3; with torch >= 2.6 "
            "set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, as for demucs's own packages)"
        ]
    sep = config.separator
    w = sep.wiener
    residual = w.residual or (len(sep.targets) == 1 and w.niter > 0)
    options = [f"--niter {w.niter}", *(["--residual residual"] if residual else [])]
    if w.wiener_win_len is not None and w.wiener_win_len != 300:
        options.append(f"--wiener-win-len {w.wiener_win_len}")
    lines = [f"umx --model {out} --targets {' '.join(sep.targets)} {' '.join(options)} TRACK   (openunmix 1.3.0)"]
    if residual and not w.residual:
        lines.append("--residual NAME: openunmix refuses EM (niter > 0) with one target unless a residual is added")
    flags = {
        "wiener_win_len=None": w.wiener_win_len is None,
        f"softmask={w.softmask}": w.softmask,
        f"atan2={w.atan2!r}": w.atan2 != "upstream",
    }
    unlike = [k for k, v in flags.items() if v]
    if unlike:
        lines.append(f"umx has no option for this model's {', '.join(unlike)}: upstream's defaults apply there")
    return lines
