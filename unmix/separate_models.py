"""The model side of ``unmix-separate``: find what ``--model`` names, build it in a port, run it on one track.

``--model`` may name (tried in this order):

1. a canonical file: ``<stem>.safetensors`` (+ ``<stem>.json``), as ``unmix-convert`` and ``unmix-train`` write;
2. a native file of the chosen port (``umx_<fw>.native_paths``: ``.pth`` / ``.weights.h5`` / ``.msgpack`` /
   ``.h5``, each with a ``.json`` carrying the port's format tag);
3. an upstream file or folder that ``unmix-convert`` reads (``vocals-b62c91ce.pth``, an openunmix model folder,
   ``demucs-e07c671f.th``, a demucs package; demucs 4.x: an HTDemucs package ``955717e8-8726e21a.th``, a hub file
   ``<sig>.safetensors`` (tried when the file is not a canonical one), a bag yaml or a folder holding one):
   converted by :func:`weights_convert.sources.read_upstream`, and the canonical result kept in the per-user cache
   by the file's SHA-256 (:func:`unmix.caches.cached_upstream`; not with ``--no-cache``), so the next run reads a
   canonical file; nothing is written beside the source (a bag yaml's key covers the files beside it, where its
   members are).

Model kinds (:attr:`LoadedModel.kind`): ``"umx"`` (an Open-Unmix separator), ``"demucs"`` (Demucs v2) and
``"htdemucs"`` (HTDemucs of demucs 4.x: one model, ``htdemucs`` / ``htdemucs_6s``, or a bag, ``htdemucs_ft``),
separated by the port's ``htdemucs_apply.separate_track`` (demucs 4.1.0's ``Separator.separate_tensor``); a port
without that module says that HTDemucs is not available in it yet.

What ``unmix-train`` writes is accepted too (:func:`resolve_models`): a folder holding canonical files (a run
folder, tried between 1 and 2 when no ``<folder>.safetensors`` sits beside it): its one-target Open-Unmix networks
(``vocals.safetensors``, ... with a ``UMXConfig``) joined into one separator by :mod:`unmix.targets`, else its one
model file (``demucs.safetensors`` of a Demucs run); a one-target file (canonical or native); and several of these
(``--model`` repeated: run folders, one-target files or folders of them), whose targets are joined in the order
given. Like openunmix's ``umx``, a separator of one target refuses the Wiener filter's EM (``niter > 0``) unless
the residual is added (:func:`check_em`).

The port is imported here, lazily (``umx_<fw>``), and only its public entry points are used: ``from_canonical``
(with ``device``/``dtype`` and, for Open-Unmix, the Wiener settings), ``Separator.separate``, ``separate_track``
and, for HTDemucs, ``umx_<fw>.htdemucs_apply.separate_track``. TensorFlow and NNabla place their work by a scope
around the calls (``umx_tf.weights.device_scope``, ``umx_nnabla.on_device``); PyTorch and JAX by the device the
model was built on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.canonical import canonical_paths, load_canonical
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig, UMXSeparatorConfig
from core_spec.frameworks import framework as framework_of
from core_spec.reference.htdemucs_apply import bag_models
from core_spec.reference.transforms import min_length
from unmix.exported_graphs import ExportedGraphs, exportable
from unmix.lean_import import without_optional
from unmix.targets import TargetError, TargetFile, canonical_files, collect_targets, join_separator

__all__ = ["HTDEMUCS_PORTS", "LoadedModel", "ModelError", "check_em", "htdemucs_max_segment", "load_model",
           "model_name", "resolve_models", "resolve_weights", "shown", "to_numpy", "with_wiener_options"]  # fmt: skip


# the ports with an htdemucs_apply module (named by the message that refuses HTDemucs elsewhere)
HTDEMUCS_PORTS = ("torch", "tf", "jax", "nnabla")


class ModelError(ValueError):
    """``--model`` cannot be used: not found, unreadable, or not a separation model (the message says which)."""


@dataclass
class LoadedModel:
    """A model built in a port, with what the command needs to know about it.

    ``sources``: output names in order (UMX: the targets, then ``"residual"`` if enabled; Demucs: its sources).
    ``min_samples``: the shortest track it separates. ``max_segment``: HTDemucs only, the longest ``--segment``
    (seconds): the training segment, for a bag the smallest of its HTDemucs models' (``max_allowed_segment``).
    ``apply``: HTDemucs only, the port's ``htdemucs_apply`` module.
    """

    framework: str
    kind: str  # "umx", "demucs" or "htdemucs"
    name: str
    origin: str  # "canonical", "native" or "upstream"
    config: UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig
    sources: tuple[str, ...]
    rate: int
    min_samples: int
    device: str
    dtype: str
    model: Any = field(repr=False)
    port: Any = field(repr=False)
    max_segment: Fraction | None = None
    apply: Any = field(default=None, repr=False)
    exported: Any = field(default=None, repr=False)  # unmix.exported_graphs.ExportedGraphs (TF, JAX)
    build: Callable[[], Any] | None = field(default=None, repr=False)  # builds `model` when it is first needed

    def built(self) -> Any:
        """The port's model, built now if it was deferred (TensorFlow's and JAX's exported graphs need none)."""
        if self.model is None and self.build is not None:
            self.model = self.build()
        return self.model

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Where the port's calls must run: TensorFlow's ``tf.device``, NNabla's context; nothing elsewhere."""
        if self.framework == "tf":
            with self.port.weights.device_scope(self.device):
                yield
        elif self.framework == "nnabla":
            with self.port.on_device(self.device):
                yield
        else:
            yield

    def separate(self, audio: np.ndarray, demucs: Mapping[str, Any] | None = None) -> np.ndarray:
        """Separate one track ``(nb_channels, nb_timesteps)`` at :attr:`rate`: ``(nb_sources, 2, nb_timesteps)``
        (Open-Unmix: ``Separator.separate``; Demucs: ``separate_track`` with ``demucs`` options; HTDemucs: the
        port's ``htdemucs_apply.separate_track`` with ``demucs`` options). Float32, except HTDemucs, which returns
        the stems in the model's dtype (float64 with ``--dtype float64``)."""
        batch = np.asarray(audio, dtype=np.float32)[None]  # 3-D: no guessing of the layout
        if self.kind == "htdemucs":
            with self.scope():
                return to_numpy(self.apply.separate_track(self.model, batch[0], **dict(demucs or {})))

        def run() -> Any:
            with self.scope():
                if self.kind == "umx" and self.exported is not None:
                    return self.exported.separate(batch)
                if self.kind == "umx":
                    return self.built().separate(batch)
                options = dict(demucs or {})
                # the exported network runs one graph per chunk shape: without shifts (each shift is a length)
                exported = self.exported is not None and not options.get("shifts")
                model = self.exported.network() if exported else self.built()
                return self.port.separate_track(model, batch, **options)

        if self.framework != "nnabla":
            return to_numpy(run())[0].astype(np.float32, copy=False)

        def run_and_free() -> np.ndarray:
            try:
                return np.array(to_numpy(run())[0], dtype=np.float32)  # a copy: no view keeps the graph alive
            finally:
                graphs = getattr(self.model, "graphs", None)
                if graphs is not None:
                    graphs.clear()  # freed here, on the large stack, not later on the main thread's

        return _with_large_stack(run_and_free)


# NNabla 1.39 frees a graph recursively: the port's Open-Unmix graph, with its LSTMs unrolled over every frame,
# overflows the main thread's 8 MiB stack from about 45 s of audio (SIGSEGV when the graph is freed: 30 s passes,
# 60 s crashes after the separation, and passes with `ulimit -s unlimited`). Its separations therefore run, and
# their graphs are freed, in a thread whose stack is reserved large (address space only: pages are used as the
# recursion reaches them).
NNABLA_STACK_BYTES = 1 << 30


def _with_large_stack(run: Callable[[], Any]) -> Any:
    """``run()`` in a thread with a :data:`NNABLA_STACK_BYTES` stack; its result, or its exception re-raised."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = run()
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    previous = threading.stack_size(NNABLA_STACK_BYTES)
    try:
        thread = threading.Thread(target=target, name="nnabla-separation", daemon=True)  # Ctrl-C need not wait
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def to_numpy(x: Any) -> np.ndarray:
    """A port's output (torch tensor on any device, ``tf.Tensor``, JAX array, NumPy) as a NumPy array."""
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # tf.Tensor
        return x.numpy()
    return np.asarray(x)


def _import_port(key: str) -> Any:
    fw = framework_of(key)
    lean = without_optional() if key == "tf" else contextlib.nullcontext()  # TF's unused imports: unmix.lean_import
    try:
        with lean:
            return importlib.import_module(fw.package)
    except ModuleNotFoundError as e:
        raise ModelError(
            f"--framework {key}: the {fw.label} port needs {e.name!r}, which is not installed here ({fw.install})"
        ) from None


def _native_format(port: Any, path: Path) -> bool:
    """``path`` names a native file of ``port``: its data file exists and its JSON carries the port's format."""
    try:
        data, header = port.native_paths(path)
    except Exception:
        return False
    if not (data.exists() and header.exists()):
        return False
    try:
        return json.loads(header.read_text()).get("format") == port.weights.FORMAT
    except (ValueError, OSError, AttributeError):
        return False


def _model_name(path: Path) -> str:
    return path.name if path.is_dir() else path.name.split(".", 1)[0]


def resolve_weights(
    path: str | Path, port: Any | None = None, cache: Path | None = None
) -> tuple[dict[str, np.ndarray], Any, str, str]:
    """``(canonical weights, config, model name, origin)`` of what ``path`` names (see the module docstring).

    ``cache``: the cache folder (:func:`unmix.caches.cache_root`; ``None``: none) where an upstream file's
    conversion is kept, by its SHA-256 (:func:`unmix.caches.cached_upstream`): a second run reads a canonical file.

    Raises:
        ModelError: nothing usable at ``path`` (the message lists what was looked for), or the file cannot be read.
    """
    path = Path(path)
    st_path, _ = canonical_paths(path)
    try:
        if st_path.exists():
            try:
                weights, config, _ = load_canonical(st_path)
            except (ValueError, KeyError, OSError) as e:
                hub = _hub_file(st_path, cache)  # demucs 4.1.0's hub layout is a .safetensors too
                if hub is None:
                    raise e from None
                return hub
            return weights, config, st_path.name[: -len(".safetensors")], "canonical"
        if port is not None and _native_format(port, path):
            weights, config = port.load_native(path)
            return weights, config, _model_name(port.native_paths(path)[0]), "native"
    except (ValueError, KeyError, OSError) as e:
        raise ModelError(f"--model {path}: cannot read it ({type(e).__name__}: {e})") from None
    if not path.exists():
        raise ModelError(
            f"--model {path}: not found (looked for a canonical {st_path.name} + .json, a native file of the "
            f"chosen port, and an upstream .pth/.th file, openunmix model folder or demucs 4 bag yaml/folder)"
        )
    try:
        weights, config = _convert_upstream(path, cache)
    except (ValueError, OSError) as e:
        raise ModelError(f"--model {path}: not a model unmix-convert can read ({type(e).__name__}: {e})") from None
    return weights, config, _model_name(path), "upstream"


def _convert_upstream(path: Path, cache: Path | None) -> tuple[dict[str, np.ndarray], Any]:
    """An upstream file or folder converted, through the cache (see the module docstring)."""
    from unmix.caches import cached_upstream
    from weights_convert.sources import read_upstream

    weights, config, _ = cached_upstream(path, cache, read_upstream)
    return weights, config


def _hub_file(path: Path, cache: Path | None) -> tuple[dict[str, np.ndarray], Any, str, str] | None:
    """A ``.safetensors`` that is not a canonical file, read as demucs 4.1.0's hub layout; ``None`` if it is not
    one either."""
    try:
        weights, config = _convert_upstream(path, cache)
    except (ValueError, OSError):
        return None
    return weights, config, _model_name(path), "upstream"


ModelPaths = str | os.PathLike | Sequence[str | os.PathLike]


def _as_paths(paths: ModelPaths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def shown(paths: ModelPaths) -> str:
    """The ``--model`` options as given (``a --model b`` for several), for messages that start ``--model ``."""
    return " --model ".join(str(p) for p in _as_paths(paths))


def _stem_file_exists(path: Path) -> bool:
    try:
        return canonical_paths(path)[0].exists()
    except ValueError:  # a name that makes no stem ('.')
        return False


def model_name(paths: ModelPaths) -> str:
    """The name of the output folder (``separated/<name>/...``) for several ``--model``: each one's name (a
    folder's name, a file's stem) joined by ``+`` (``run_vocals+run_drums``)."""
    names = []
    for path in _as_paths(paths):
        if path.is_dir():
            names.append(path.resolve().name)
        else:
            names.append(canonical_paths(path)[0].name[: -len(".safetensors")])
    return "+".join(names)


def _join(targets: list[TargetFile], where: str) -> tuple[dict[str, np.ndarray], UMXSeparatorConfig]:
    try:
        return join_separator(targets)
    except TargetError as e:
        raise ModelError(f"--model {where}: {e}") from None


def _native_target_name(name: str) -> str:
    """``vocals-jax`` -> ``vocals``: the target of a native one-target file (``<target>-<framework>``)."""
    from core_spec.frameworks import FRAMEWORKS

    for key in FRAMEWORKS:
        if name.endswith(f"-{key}") and len(name) > len(key) + 1:
            return name[: -len(key) - 1]
    return name


def _from_folder(
    folder: Path, found: list[tuple[Path, Any]], cache: Path | None = None
) -> tuple[dict[str, np.ndarray], Any, str, str]:
    """A folder of canonical files: its one-target networks joined, else its one model."""
    name = folder.resolve().name
    if any(isinstance(config, UMXConfig) for _, config in found):
        try:
            targets = collect_targets([folder])
        except TargetError as e:
            raise ModelError(f"--model {folder}: {e}") from None
        return (*_join(targets, str(folder)), name, "canonical")
    if len(found) > 1:
        held = ", ".join(f"{p.name} ({type(c).__name__})" for p, c in found)
        raise ModelError(f"--model {folder}: holds several models ({held}); pass one of the files")
    weights, config, _, origin = resolve_weights(found[0][0], cache=cache)
    return weights, config, name, origin


def resolve_models(
    paths: ModelPaths, port: Any | None = None, cache: Path | None = None
) -> tuple[dict[str, np.ndarray], Any, str, str]:
    """``(canonical weights, config, model name, origin)`` of what one or several ``--model`` name.

    One path: a folder of canonical files (an ``unmix-train`` run folder; only when no ``<folder>.safetensors``
    sits beside it): its one-target networks joined into a separator (:mod:`unmix.targets`), else its one model
    (``demucs.safetensors``); otherwise :func:`resolve_weights`, a one-target network (canonical or native)
    becoming a separator of that target. The name is the folder's name or the file's stem. Several paths: run
    folders, one-target files or folders of them, joined in the order given (:func:`unmix.targets.collect_targets`);
    the name is theirs joined by ``+`` (:func:`model_name`). ``cache``: see :func:`resolve_weights`.

    Raises:
        ModelError: see :func:`resolve_weights`; for targets, a file that is not a target, the same target twice,
            targets of different networks (each message names the files).
    """
    paths = _as_paths(paths)
    if not paths:
        raise ModelError("--model: no model given")
    if len(paths) > 1:
        try:
            targets = collect_targets(paths)
        except TargetError as e:
            raise ModelError(f"--model {shown(paths)}: {e}") from None
        return (*_join(targets, shown(paths)), model_name(paths), "canonical")
    path = paths[0]
    if path.is_dir() and not _stem_file_exists(path):
        try:
            found = canonical_files(path)
        except TargetError as e:
            raise ModelError(f"--model {path}: {e}") from None
        if found:
            return _from_folder(path, found, cache)
    weights, config, name, origin = resolve_weights(path, port, cache)
    if isinstance(config, UMXConfig):
        target = name if origin == "canonical" else _native_target_name(name)
        joined = _join([TargetFile(target, path, config, weights)], str(path))
        return (*joined, name, origin)
    return weights, config, name, origin


def check_em(config: UMXSeparatorConfig, options: Mapping[str, Any], where: str) -> None:
    """Refuse the Wiener filter's EM (``niter > 0``) on a separator of one target without the residual, as
    openunmix's ``umx`` ("Cannot use EM if only one target is estimated"), before anything runs.

    ``options``: the settings that replace the file's (``niter``, ``residual``); ``where``: the ``--model`` text.
    """
    wiener = config.separator.wiener
    niter = options.get("niter", wiener.niter)
    residual = options.get("residual", wiener.residual)
    targets = tuple(config.separator.targets)
    if len(targets) == 1 and niter > 0 and not residual:
        raise ModelError(
            f"--model {where}: one Open-Unmix target ({targets[0]!r}), and the Wiener filter's EM (--niter {niter}) "
            f"needs two sources or more (openunmix's umx: 'Cannot use EM if only one target is estimated'); pass "
            f"--residual (adds the stem 'residual' = mixture - {targets[0]}), or --niter 0 (no EM), or a second "
            f"target (--model again: another run folder or <target>.safetensors)"
        )


def load_model(
    path: ModelPaths,
    framework: str,
    device: str = "cpu",
    dtype: str = "float32",
    umx_options: Mapping[str, Any] | None = None,
    cache: Path | None = None,
    exported: Path | None = None,
    exported_writable: bool = True,
    warn: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Build the model ``path`` names (one path, or several whose Open-Unmix targets are joined: see
    :func:`resolve_models`) in ``umx_<framework>`` on ``device`` in ``dtype``.

    Args:
        umx_options: Open-Unmix separator settings replacing the file's (``niter``, ``wiener_win_len``,
            ``softmask``, ``residual``); :attr:`LoadedModel.config` has them applied.
        cache: the cache folder for conversions of upstream files (:func:`resolve_weights`); ``None``: none.
        exported: on the CPU, an Open-Unmix separator or a Demucs v2 in TensorFlow or JAX
            (:func:`unmix.exported_graphs.exportable`): the folder of exported graphs
            (:mod:`unmix.exported_graphs`), with ``exported_writable`` and ``warn`` for its entries; the port's
            model is then built only if a shape has no entry yet (or Demucs runs with shifts). ``None``: the
            model, built here.

    Raises:
        ModelError: see :func:`resolve_models`; EM on one target without the residual (:func:`check_em`).
    """
    port = _import_port(framework)
    weights, config, name, origin = resolve_models(path, port, cache)
    if not isinstance(config, (UMXSeparatorConfig, DemucsConfig, HTDemucsConfig, BagConfig)):
        raise ModelError(f"--model {shown(path)}: holds a {type(config).__name__}, not a separation model")
    if isinstance(config, UMXSeparatorConfig):
        kind = "umx"
    else:
        kind = "demucs" if isinstance(config, DemucsConfig) else "htdemucs"
    options = dict(umx_options or {}) if kind == "umx" else {}
    if kind == "umx":
        check_em(config, options, shown(path))
    if kind == "umx":
        config = with_wiener_options(config, options)
    loaded = LoadedModel(framework, kind, name, origin, config, (), 0, 0, device, dtype, None, port)
    if kind == "htdemucs":
        loaded.apply = _htdemucs_apply(framework, shown(path))

    def build(canonical: Mapping[str, Any]) -> Any:
        try:
            with loaded.scope():  # TF and NNabla: entering it fails for a device they lack
                return port.from_canonical(config, canonical, device=device, dtype=dtype, **options)
        except (RuntimeError, ValueError) as e:  # no such device here, a dtype the port lacks
            raise ModelError(f"--framework {framework}: {e}") from None

    if exported is not None and exportable(framework, device, kind):
        # the graphs hold the canonical weights until they have converted them, then only their own tensors (no
        # second copy of the model's weights: 1 GB for Demucs channels 64); a model built later reads them again
        loaded.exported = ExportedGraphs(framework, exported, config, dtype, loaded.built, exported_writable,
                                         warn or (lambda message: None), weights,
                                         reload=lambda: resolve_models(path, port, cache)[0])  # fmt: skip
        loaded.build = lambda: build(loaded.exported.canonical())
    else:
        loaded.model = build(weights)
    del weights
    if kind == "umx":
        sep = config.separator
        loaded.sources = tuple(sep.targets) + (("residual",) if sep.wiener.residual else ())
        loaded.rate = int(config.separator.sample_rate)
        loaded.min_samples = min_length(config.separator.stft.n_fft, config.separator.stft.center)
    else:
        loaded.sources = tuple(config.sources)
        loaded.rate = int(config.samplerate)
        loaded.min_samples = 2  # the normalisation's unbiased standard deviation needs two samples
    if kind == "htdemucs":
        loaded.max_segment = htdemucs_max_segment(config)
    return loaded


def with_wiener_options(config: UMXSeparatorConfig, options: Mapping[str, Any]) -> UMXSeparatorConfig:
    """``config`` with the command's Wiener settings (``niter``, ``wiener_win_len``, ``softmask``, ``residual``)
    in place of the file's: the config of the separator the port builds with them."""
    if not options:
        return config
    wiener = dataclasses.replace(config.separator.wiener, **options)
    return dataclasses.replace(config, separator=dataclasses.replace(config.separator, wiener=wiener))


def htdemucs_max_segment(config: HTDemucsConfig | BagConfig) -> Fraction:
    """The longest segment (seconds) demucs 4.1.0's command accepts for this model: its training segment; for a
    bag, the smallest segment of its models as they run (a bag's own ``segment`` replacing the longer ones:
    ``BagOfModels.max_allowed_segment``)."""
    models, _ = bag_models(config)
    return min(m.segment_fraction for m in models)


def _htdemucs_apply(framework: str, where: str) -> Any:
    """The port's ``htdemucs_apply`` module (``separate_track`` for HTDemucs and bags).

    Raises:
        ModelError: the port has no HTDemucs yet.
    """
    fw = framework_of(framework)
    try:
        module = importlib.import_module(f"{fw.package}.htdemucs_apply")
    except ModuleNotFoundError as e:
        if e.name != f"{fw.package}.htdemucs_apply":
            raise
        module = None
    if module is None or not hasattr(module, "separate_track"):
        others = ", ".join(k for k in HTDEMUCS_PORTS if k != framework)
        raise ModelError(
            f"--model {where} is an HTDemucs (demucs 4) model: HTDemucs is not available in {fw.label} yet "
            f"(--framework {others} runs it)"
        )
    return module
