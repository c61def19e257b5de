"""The parameter-mapping tables: canonical (upstream) name and shape -> each framework's variable, shape, transform.

Nothing here restates a port's rules: the table is read off the port's own code. In the port's environment,
:func:`probe` calls the port's ``from_canonical(config, weights)`` (its public entry point) with *numbered*
canonical weights and reads the variables of the model it built (torch ``state_dict()``, Keras ``model.weights``,
Flax ``nnx.state``, NNabla ``get_parameters``); each element's value says which canonical element it came from, so
the transform (transpose, kernel permutation, reshape, stacking into a slice, folded LSTM biases) is recovered from
what the port actually did. Three loads tell sums apart from copies: every tensor numbered but the ``bias_hh`` ones,
only the ``bias_hh`` ones, and both (a variable equal to the sum of the first two holds a folded bias).

The numbering needs exact integers in float32 (below 2**24), so it runs on a *twin* of each model: the same
structure (layers, directions, depth, rewrite, GLU, names), small sizes. A second load of the real config (zeros)
gives the real variable shapes, and the twin's relations are scaled to them (a slice's bounds solved from the real
shapes, then checked). The tables list every tensor of ``umxhq`` (one target), Demucs v2 (``demucs``) and HTDemucs
(``htdemucs``). A port that does not have a model's module (:data:`MODULES`) is recorded as such, not probed.

Which environment: ``.venv`` runs torch, TensorFlow and JAX; NNabla lives in ``.venv-nnabla``
(:mod:`core_spec.frameworks`). Each port is probed in a subprocess of its own environment
(``python -m book.mapping --port umx_nnabla --out FILE``), which writes JSON; :func:`tables` caches it under
``build/book`` keyed by a hash of the sources it depends on, so a build recomputes a table only after a change.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import DemucsConfig, HTDemucsConfig, UMXConfig, demucs_preset, htdemucs_preset, umx_preset
from core_spec.params import parameter_inventory

from . import ROOT

__all__ = ["MODELS", "MODULES", "MappingError", "has_model", "probe", "tables", "twin"]

Config = UMXConfig | DemucsConfig | HTDemucsConfig


def _htdemucs() -> HTDemucsConfig:
    config = htdemucs_preset("htdemucs")
    assert isinstance(config, HTDemucsConfig)
    return config


MODELS: dict[str, Callable[[], Config]] = {
    "umxhq": lambda: umx_preset("umxhq").model,
    "demucs": lambda: demucs_preset("demucs"),
    "htdemucs": _htdemucs,
}
"""The models of the tables: ``umxhq`` (one target's network; a separator prefixes every name with
``target_models.<target>.``), Demucs v2 and HTDemucs as released (a bag prefixes every name with
``models.<i>.``)."""

MODULES: dict[str, str] = {"umxhq": "umx", "demucs": "demucs", "htdemucs": "htdemucs"}
"""The port module that defines each model: a port without it does not have the model (yet)."""

CACHE = Path("build") / "book"
"""Where the probes' JSON is kept, relative to the repository root (``build/`` is ignored by git)."""

VERSION = 2  # of the JSON written by probe(); part of the cache key


class MappingError(RuntimeError):
    """A port's mapping could not be read (probe failed, or a relation the table cannot express)."""


_PARTS = ("main", "hh", "both")


def twin(config: Config, which: int = 1) -> Config:
    """The same network with small sizes (``which`` 1 or 2: two different ones): every parameter name of ``config``
    and every structural choice kept, sizes distinct from each other and from the structural constants (4 gates,
    2 directions, kernel 8, context 3) so that no two axes are confused.

    HTDemucs keeps its depth, layers, sources, STFT size (so the frequency embedding's 512 rows) and heads; its
    channels (16 or 24: multiples of ``norm_groups``, and at least 2 DConv channels, ``channels / dconv_comp``: an
    axis of length 1 would hide a permutation) and transformer width (40 or 56, when ``bottom_channels`` is set:
    multiples of the 8 heads) shrink."""
    nb_bins, hidden, max_bin, channels = {1: (11, 10, 7, 3), 2: (13, 14, 9, 5)}[which]
    if isinstance(config, UMXConfig):
        return dataclasses.replace(
            config, nb_bins=nb_bins, hidden_size=hidden, max_bin=None if config.max_bin is None else max_bin
        )
    if isinstance(config, HTDemucsConfig):
        channels, bottom = {1: (16, 40), 2: (24, 56)}[which]
        return dataclasses.replace(
            config,
            channels=channels,
            channels_time=None if config.channels_time is None else channels + 4,
            bottom_channels=bottom if config.bottom_channels else 0,
        )
    return dataclasses.replace(config, channels=channels)


def has_model(root: Path, port: str, model: str) -> bool:
    """Whether ``port`` (a folder under ``root``) has the module of ``model`` (:data:`MODULES`)."""
    return (Path(root) / port / f"{MODULES[model]}.py").is_file()


# --- in the port's environment ------------------------------------------------------------------------------------


def _keras_attributes(model: Any) -> dict[int, str]:
    """``id(variable) -> a.b.0.kernel``: where each Keras variable of ``model`` is reached through the public
    attributes of its layers (and the lists and dicts that hold layers; a private ``_kernel`` holding a variable
    is read as ``kernel``), first path found."""
    import keras

    found: dict[int, str] = {}
    seen: set[int] = set()

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, keras.Variable):
            found.setdefault(id(obj), path)
            return
        if id(obj) in seen:
            return
        if isinstance(obj, keras.layers.Layer):
            seen.add(id(obj))
            for name, value in vars(obj).items():
                if name.startswith("_") and isinstance(value, keras.Variable):
                    name = name.lstrip("_")  # Dense's kernel is the property over _kernel
                elif name.startswith("_"):
                    continue
                walk(value, f"{path}.{name}" if path else name)
        elif isinstance(obj, list | tuple):
            seen.add(id(obj))
            for index, value in enumerate(obj):
                walk(value, f"{path}.{index}")
        elif isinstance(obj, Mapping):
            seen.add(id(obj))
            for key, value in obj.items():
                walk(value, f"{path}.{key}")

    walk(model, "")
    return found


def _variables(port: str, model: Any) -> dict[str, np.ndarray]:
    """The framework's own variables of ``model``, by the framework's name for them. Keras's ``Variable.path`` is
    that name unless two variables share it (HTDemucs's sublayers are named as upstream's modules, ``conv``,
    ``rewrite``, in every layer); then every variable of the model is named by its attribute path instead
    (``encoder.0.conv.kernel``: ``model.encoder[0].conv.kernel``)."""
    if port == "umx_torch":
        return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if port == "umx_tf":
        paths = [v.path for v in model.weights]
        if len(set(paths)) == len(paths):
            return {v.path: np.asarray(v.numpy()) for v in model.weights}
        names = _keras_attributes(model)
        missing = [v.path for v in model.weights if id(v) not in names]
        if missing or len({names[id(v)] for v in model.weights}) != len(paths):
            raise MappingError(f"Keras variables without a unique attribute path: {missing[:5]}")
        return {names[id(v)]: np.asarray(v.numpy()) for v in model.weights}
    if port == "umx_jax":
        from flax import nnx

        def flat(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
            if isinstance(tree, Mapping):
                out: dict[str, np.ndarray] = {}
                for key, value in tree.items():
                    out.update(flat(value, f"{prefix}{key}."))
                return out
            return {prefix[:-1]: np.asarray(tree)}

        return flat(nnx.to_pure_dict(nnx.state(model)))
    if port == "umx_nnabla":
        return {k: np.array(v.d) for k, v in model.get_parameters(grad_only=False).items()}
    raise ValueError(f"unknown port {port!r}")


def _numbered(inventory: Sequence[tuple[str, tuple[int, ...]]], part: str) -> dict[str, np.ndarray]:
    """Canonical weights numbered 1, 2, ... through the whole inventory; ``part``: ``"main"`` numbers all but the
    ``bias_hh`` tensors (zeros), ``"hh"`` only those, ``"both"`` everything."""
    out, start = {}, 1
    for name, shape in inventory:
        size = int(np.prod(shape, dtype=np.int64))
        hh = "bias_hh_l" in name
        keep = part == "both" or (part == "hh") == hh
        values = np.arange(start, start + size, dtype=np.float32) if keep else np.zeros(size, np.float32)
        out[name] = values.reshape(shape)
        start += size
    if start >= 2**24:
        raise MappingError(f"the twin has {start} values, more than float32 numbers exactly")
    return out


def _build(port: str, config: Config, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    package = importlib.import_module(port)
    if port == "umx_tf":  # Keras numbers its auto-named layers per session: start each build from the same names
        import keras

        keras.backend.clear_session()
    return _variables(port, package.from_canonical(config, dict(weights)))


def _decode(value: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(tensor id, flat index)`` of every element (id -1 where the value is 0), or None if not numbered."""
    v = np.asarray(value, np.float64)
    if not np.all(np.isfinite(v)) or np.any(v != np.round(v)) or v.min(initial=0) < 0 or v.max(initial=0) > offsets[-1]:
        return None
    k = v.astype(np.int64) - 1  # the element's place in the numbering, -1 for a zero
    tensor = np.searchsorted(offsets, k, side="right") - 1
    tensor[k < 0] = -1
    flat = np.where(k >= 0, k - offsets[np.clip(tensor, 0, None)], -1)
    return tensor, flat


def _match(index: np.ndarray, block: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...], bool] | None:
    """How ``index`` (a canonical tensor's flat indices, in its shape) became ``block``: ``(perm, flipped axes,
    reshaped)``, the plainest that matches (no reshape before a reshape, the identity first), or None."""
    ndim = index.ndim
    for reshape in (False, True):
        for perm in itertools.permutations(range(ndim)):
            moved = index.transpose(perm)
            for n in range(ndim + 1):
                for flips in itertools.combinations(range(ndim), n):
                    cand = np.flip(moved, flips) if flips else moved
                    if reshape:
                        if cand.size != block.size:
                            continue
                        cand = cand.reshape(block.shape)
                    elif cand.shape != block.shape:
                        continue
                    if np.array_equal(cand, block):
                        return perm, flips, reshape
    return None


def _relations(
    variables: Mapping[str, Mapping[str, np.ndarray]], inventory: Sequence[tuple[str, tuple[int, ...]]]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Canonical name -> where it went (twin sizes), and the framework variables no canonical tensor feeds."""
    names = [n for n, _ in inventory]
    shapes = dict(inventory)
    sizes = [int(np.prod(s, dtype=np.int64)) for _, s in inventory]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    found: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    unfed: list[str] = []
    for var, main in variables["main"].items():
        main = np.asarray(main)
        hh, both = variables["hh"][var], variables["both"][var]
        if not np.issubdtype(np.asarray(main).dtype, np.floating):
            unfed.append(var)
            continue
        dm, dh = _decode(main, offsets), _decode(hh, offsets)
        additive = np.array_equal(np.asarray(both, np.float64), np.add(main, hh, dtype=np.float64))
        if dm is None or dh is None or not additive:
            unfed.append(var)
            continue
        if (dm[0] < 0).all() and (dh[0] < 0).all():
            unfed.append(var)
            continue
        summed = (dm[0] >= 0) & (dh[0] >= 0)
        pieces = len(set(dm[0][dm[0] >= 0].tolist()) | set(dh[0][dh[0] >= 0].tolist()))
        for (tensor_ids, flat), other in ((dm, dh[0]), (dh, dm[0])):
            for t in sorted(set(tensor_ids[tensor_ids >= 0].tolist())):
                name = names[t]
                mask = tensor_ids == t
                where = np.nonzero(mask)
                box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
                if int(mask[box].sum()) != mask[box].size or mask[box].size != sizes[t]:
                    raise MappingError(f"{var}: {name} is scattered, not one block")
                axes = []
                for axis, s in enumerate(box):
                    extent = s.stop - s.start
                    dim = main.shape[axis]
                    if extent == 1 and (dim > 1 or pieces > 1):  # one place of a stack (of one, maybe)
                        axes.append(("index", s.start))
                    elif extent == dim:
                        axes.append(("full",))
                    else:
                        axes.append(("range", s.start, s.stop))
                block = flat[box].reshape([s.stop - s.start for a, s in zip(axes, box) if a[0] != "index"])
                index = np.arange(sizes[t]).reshape(shapes[name])
                layout = _match(index, block)
                if layout is None:
                    raise MappingError(f"{var}: {name} is rearranged in a way the table cannot name")
                partners = sorted({names[u] for u in other[mask & summed].tolist()})
                found[name].append(
                    {
                        "variable": var,
                        "twin_shape": list(np.shape(main)),
                        "axes": axes,
                        "perm": list(layout[0]),
                        "flips": list(layout[1]),
                        "reshape": layout[2],
                        "sum_with": partners,
                    }
                )
    return found, unfed


def _twin_block(rel: dict[str, Any]) -> list[int]:
    """The block's shape in the numbered twin (the variable's axes that are not a stacking index)."""
    return [
        a[2] - a[1] if a[0] == "range" else rel["twin_shape"][axis]
        for axis, a in enumerate(rel["axes"])
        if a[0] != "index"
    ]


Shape = tuple[int, ...]


def _block(rel: dict[str, Any], c1: Shape, c2: Shape, v2: Shape, c: Shape) -> list[int]:
    """The block's shape where the canonical tensor has shape ``c``.

    A permuted block is the permuted shape. A reshaped one is fitted on the two twins: each of its dimensions is a
    constant (the same in both) or a canonical dimension over a fixed ratio (``4H -> H``, the gate split).
    """
    if not rel["reshape"]:
        return [c[p] for p in rel["perm"]]
    b1 = _twin_block(rel)
    b2: list[int | None] = [
        None if a[0] == "range" else v2[axis] for axis, a in enumerate(rel["axes"]) if a[0] != "index"
    ]
    unknown = [i for i, x in enumerate(b2) if x is None]
    if len(unknown) > 1:
        raise MappingError(f"{rel['variable']}: a reshaped block cut along two axes")
    if unknown:
        known = int(np.prod([x for x in b2 if x is not None]))
        b2[unknown[0]] = int(np.prod(c2)) // known
    out = []
    for x1, x2 in zip(b1, b2):
        if x1 == x2:
            out.append(x1)
            continue
        fits = {c[j] * x1 // c1[j] for j in range(len(c1)) if c1[j] * x2 == c2[j] * x1 and c[j] * x1 % c1[j] == 0}
        if len(fits) != 1:
            raise MappingError(f"{rel['variable']}: cannot scale the reshape {tuple(b1)} of {c1} to {c}")
        out.append(fits.pop())
    if int(np.prod(out)) != int(np.prod(c)):
        raise MappingError(f"{rel['variable']}: a block {tuple(out)} cannot hold {c}")
    return out


def _assemble(group: list[tuple[dict[str, Any], list[int]]]) -> tuple[Shape, list[dict[int, tuple[int, int]]]]:
    """A variable's shape from its blocks (relations with their block shapes at one size), and each block's
    ``{axis: (start, stop)}`` along the axes it is cut: along an axis, the twin's intervals in order, each as long
    as the blocks that fill it."""
    twin_shape = group[0][0]["twin_shape"]
    shape: list[int] = []
    ranges: list[dict[int, tuple[int, int]]] = [{} for _ in group]
    var = group[0][0]["variable"]
    for axis in range(len(twin_shape)):
        kinds = {rel["axes"][axis][0] for rel, _ in group}
        lengths: dict[tuple[int, int] | None, int] = {}
        for rel, block in group:
            a = rel["axes"][axis]
            if a[0] == "index":
                continue
            length = block[sum(1 for b in rel["axes"][:axis] if b[0] != "index")]
            key = (a[1], a[2]) if a[0] == "range" else None
            if lengths.setdefault(key, length) != length:
                raise MappingError(f"{var}: blocks of different lengths along axis {axis}")
        if kinds == {"index"}:
            shape.append(twin_shape[axis])
        elif kinds == {"full"}:
            shape.append(lengths[None])
        elif kinds == {"range"}:
            starts, pos = {}, 0
            for key in sorted(k for k in lengths if k is not None):
                starts[key] = (pos, pos + lengths[key])
                pos += lengths[key]
            shape.append(pos)
            for i, (rel, _) in enumerate(group):
                a = rel["axes"][axis]
                ranges[i][axis] = starts[(a[1], a[2])]
        else:
            raise MappingError(f"{var}: axis {axis} is {sorted(kinds)} across its blocks")
    return tuple(shape), ranges


def _where(rel: dict[str, Any], ranges: Mapping[int, tuple[int, int]]) -> str:
    parts = []
    for axis, a in enumerate(rel["axes"]):
        if a[0] == "index":
            parts.append(str(a[1]))
        elif a[0] == "full":
            parts.append(":")
        else:
            parts.append("{}:{}".format(*ranges[axis]))
    while parts and parts[-1] == ":":
        parts.pop()
    return f"[{', '.join(parts)}]" if parts else ""


def _transform(rel: dict[str, Any], block: list[int], ndim: int) -> str:
    steps = []
    perm = tuple(rel["perm"])
    if perm != tuple(range(ndim)):
        steps.append("transpose" if ndim == 2 else f"transpose {perm}")
    if rel["flips"]:
        steps.append("flip axis " + ", ".join(map(str, rel["flips"])))
    if rel["reshape"]:
        steps.append(f"reshape to {tuple(block)}")
    if rel["sum_with"]:
        steps.append("plus " + ", ".join(rel["sum_with"]) + " (one folded bias)")
    return "; ".join(steps) if steps else "same layout"


Build = Callable[[str, Config, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def probe(port: str, build: Build = _build, has: Callable[[str, str], bool] | None = None) -> dict[str, Any]:
    """The mapping tables of ``port`` (run where ``port`` is importable), JSON-ready: per model, one row per
    canonical tensor (name, shape, and every framework variable it goes to: name, shape, the slice it fills, the
    transform) and the framework variables no canonical tensor feeds; a model the port does not have is
    ``{"absent": why}``.

    ``build(port, config, canonical weights)`` returns the framework's variables of the model it builds (by default
    the port's ``from_canonical``; a test passes a NumPy stand-in with known rules). ``has(port, model)`` says
    whether the port has the model (by default :func:`has_model` in this checkout for the port's own ``build``,
    every model for a stand-in).
    """

    def shapes(config: Config) -> dict[str, tuple[int, ...]]:
        weights = {n: np.zeros(s, np.float32) for n, s in parameter_inventory(config)}
        return {k: tuple(np.shape(v)) for k, v in build(port, config, weights).items()}

    if has is None:  # the port's own loader: its modules in this checkout; a stand-in has every model
        has = (lambda port, model: has_model(ROOT, port, model)) if build is _build else (lambda port, model: True)
    out: dict[str, Any] = {"version": VERSION, "port": port, "models": {}}
    for model, make in MODELS.items():
        if not has(port, model):
            out["models"][model] = {"absent": f"{port} has no {MODULES[model]} module yet ({port}/{MODULES[model]}.py)"}
            continue
        config = make()
        one, two = twin(config, 1), twin(config, 2)
        inv1, inv2, inv = parameter_inventory(one), parameter_inventory(two), parameter_inventory(config)
        if not [n for n, _ in inv1] == [n for n, _ in inv2] == [n for n, _ in inv]:
            raise MappingError(f"{model}: the twins' parameter names differ from the real model's")
        c1, c2 = dict(inv1), dict(inv2)
        found, unfed = _relations({part: build(port, one, _numbered(inv1, part)) for part in _PARTS}, inv1)
        v2 = shapes(two)
        groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for name, rels in found.items():
            for rel in rels:
                groups.setdefault(rel["variable"], []).append((name, rel))
        missing = sorted(set(groups) - set(v2))
        if missing:
            raise MappingError(f"{model}: variables {missing} exist in one twin only")
        targets: dict[str, list[dict[str, Any]]] = {n: [] for n, _ in inv}
        for var, members in groups.items():
            check, _ = _assemble([(rel, _block(rel, c1[n], c2[n], v2[var], c2[n])) for n, rel in members])
            if check != v2[var]:
                raise MappingError(f"{model}: {var} is {v2[var]} in the second twin, its blocks make {check}")
            blocks = [_block(rel, c1[n], c2[n], v2[var], tuple(dict(inv)[n])) for n, rel in members]
            shape, ranges = _assemble([(rel, b) for (_, rel), b in zip(members, blocks)])
            for (name, rel), block, cut in zip(members, blocks, ranges):
                targets[name].append(
                    {
                        "variable": var,
                        "shape": list(shape),
                        "where": _where(rel, cut),
                        "transform": _transform(rel, block, len(dict(inv)[name])),
                    }
                )
        rows = [{"canonical": n, "shape": list(s), "targets": targets[n]} for n, s in inv]
        out["models"][model] = {"rows": rows, "unfed": unfed}
    return out


# --- in the docs build ----------------------------------------------------------------------------------------------


def _sources(root: Path, port: str) -> list[Path]:
    files = sorted((root / port).glob("*.py")) + sorted((root / "core_spec").rglob("*.py"))
    return [*files, root / "book" / "mapping.py"]


def cache_key(root: Path, port: str) -> str:
    """A hash of what a port's table depends on: its package, ``core_spec`` and this module."""
    digest = hashlib.sha256(f"{VERSION}:{port}".encode())
    for path in _sources(root, port):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _command(root: Path, port: str, out: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    env["CUDA_VISIBLE_DEVICES"] = ""
    if port == "umx_nnabla":
        from unmix.environments import nnabla_python

        python = str(nnabla_python())
    else:
        python = sys.executable
    return [python, "-m", "book.mapping", "--port", port, "--out", str(out)], env


def tables(
    root: Path = ROOT,
    ports: Sequence[str] = ("umx_torch", "umx_tf", "umx_jax", "umx_nnabla"),
    say: Callable[[str], None] = print,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``(port -> its probe's JSON, port -> why its probe failed)``, from the cache or probed now (two subprocesses
    at a time; a failed probe's message holds the last lines of its output)."""
    root = Path(root)
    cache = root / CACHE
    cache.mkdir(parents=True, exist_ok=True)
    paths = {port: cache / f"mapping-{port}-{cache_key(root, port)}.json" for port in ports}
    todo = [port for port, path in paths.items() if not path.is_file()]
    running: list[tuple[str, subprocess.Popen[str], float]] = []
    errors: dict[str, str] = {}
    while todo or running:
        while todo and len(running) < 2:
            port = todo.pop(0)
            try:
                command, env = _command(root, port, paths[port])
            except (OSError, RuntimeError) as e:
                errors[port] = str(e)
                continue
            say(f"book: reading {port}'s weight mapping in {command[0]}")
            proc = subprocess.Popen(
                command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            running.append((port, proc, time.monotonic()))
        if not running:
            continue
        port, proc, started = running.pop(0)
        output, _ = proc.communicate()
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-6:])
            errors[port] = f"the probe (python -m book.mapping --port {port}) exited with {proc.returncode}: {tail}"
        else:
            say(f"book: {port}'s mapping read in {time.monotonic() - started:.1f} s")
    for port, path in paths.items():
        for stale in cache.glob(f"mapping-{port}-*.json"):
            if stale != path and port not in errors:
                stale.unlink()
    found = {port: json.loads(path.read_text()) for port, path in paths.items() if port not in errors}
    return found, errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m book.mapping", description=__doc__.splitlines()[0])
    parser.add_argument("--port", required=True, help="umx_torch, umx_tf, umx_jax or umx_nnabla")
    parser.add_argument("--out", required=True, type=Path, help="the JSON file to write")
    args = parser.parse_args(argv)
    text = json.dumps(probe(args.port), indent=1) + "\n"
    tmp = args.out.with_name(args.out.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
