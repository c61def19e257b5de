"""The JAX port (``umx_jax``) as a :class:`~unmix.parity.adapters.Port`, float32 and float64.

Every function takes and returns NumPy arrays and runs the port inside ``umx_jax.dtype_scope`` (x64 only for
float64, never globally) with ``jax.default_matmul_precision("highest")`` (no TF32 on a GPU) and the device as
JAX's default. The networks and the separator run compiled (``nnx.jit`` / the separator's own ``jax.jit``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import jax
import numpy as np
from flax import nnx

import umx_jax
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from umx_jax import apply_model as jax_apply_model
from umx_jax import filtering, from_canonical, resample, transforms
from umx_jax._scope import as_device, dtype_scope
from unmix.parity.adapters import DeviceUnavailable, Port, port_of

__all__ = ["PRECISION", "port", "recorded_order", "run_in"]

PRECISION = "highest"


@contextlib.contextmanager
def run_in(dtype: str, device: str) -> Iterator[None]:
    """dtype scope (x64 for float64), matmul precision "highest", ``device`` as JAX's default device."""
    with dtype_scope(dtype, PRECISION), jax.default_device(as_device(device)):
        yield


def _np(a: jax.Array) -> np.ndarray:
    return np.asarray(a)


def _stft(x: np.ndarray, cfg: STFTConfig, dtype: str, device: str, window: np.ndarray | None = None) -> np.ndarray:
    with run_in(dtype, device):
        fn = jax.jit(transforms.stft, static_argnums=(1, 2, 3, 4))
        return _np(fn(x, cfg.n_fft, cfg.n_hop, cfg.center, False, window))


def _istft(
    X: np.ndarray, cfg: STFTConfig, length: int, dtype: str, device: str, window: np.ndarray | None = None
) -> np.ndarray:
    with run_in(dtype, device):
        fn = jax.jit(transforms.istft, static_argnums=(1, 2, 3, 4, 5))
        return _np(fn(X, cfg.n_fft, cfg.n_hop, cfg.center, False, length, window))


def _complex_norm(X: np.ndarray, mono: bool, dtype: str, device: str) -> np.ndarray:
    with run_in(dtype, device):
        return _np(transforms.complex_norm(X, mono=mono))


def recorded_order(model: nnx.Module, x: jax.Array) -> tuple[str, ...]:
    """The trace keys in the order ``model``'s forward records them. A jitted call returns its trace dict sorted
    by key (JAX flattens a dict in key order), so the order is read from an abstract evaluation (no computation)."""
    order: list[str] = []

    def forward(model: nnx.Module, x: jax.Array) -> jax.Array:
        trace: dict[str, jax.Array] = {}
        out = model(x, trace)
        order.extend(trace)
        return out

    nnx.eval_shape(forward, model, x)
    return tuple(order)


@partial(nnx.jit, graph_updates=False)
def _umx_traced(model: umx_jax.OpenUnmix, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    trace: dict[str, jax.Array] = {}
    return model(x, trace), trace


def _umx(weights, config: UMXConfig, x: np.ndarray, dtype: str, device: str):
    with run_in(dtype, device):
        model = from_canonical(config, weights, dtype=dtype, device=device)
        out, trace = _umx_traced(model, x)
        return _np(out), {k: _np(trace[k]) for k in recorded_order(model, x)}


def _wiener(v, mix, niter, softmask, residual, dtype: str, device: str) -> np.ndarray:
    with run_in(dtype, device):
        fn = jax.jit(filtering.wiener, static_argnums=(2, 3, 4))
        return _np(fn(v, mix, niter, softmask, residual))


def _separator(weights, config: UMXSeparatorConfig, audio: np.ndarray, dtype: str, device: str) -> np.ndarray:
    with run_in(dtype, device):
        separator = from_canonical(config, weights, dtype=dtype, device=device, precision=PRECISION)
        return _np(separator(audio))


def _resample(x: np.ndarray, old: int, new: int, dtype: str, device: str) -> np.ndarray:
    with run_in(dtype, device):
        return _np(jax.jit(resample.resample_frac, static_argnums=(1, 2))(x, old, new))


@partial(nnx.jit, graph_updates=False)
def _demucs_traced(model: umx_jax.Demucs, mix: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    trace: dict[str, jax.Array] = {}
    return model(mix, trace), trace


def _demucs(weights, config: DemucsConfig, mix: np.ndarray, dtype: str, device: str):
    with run_in(dtype, device):
        model = from_canonical(config, weights, dtype=dtype, device=device)
        out, trace = _demucs_traced(model, mix)
        return _np(out), {k: _np(trace[k]) for k in recorded_order(model, mix)}


def _apply_model(weights, config: DemucsConfig, mix: np.ndarray, split, overlap, transition_power, segment_length,
                 dtype, device) -> np.ndarray:  # fmt: skip
    with run_in(dtype, device):
        model = from_canonical(config, weights, dtype=dtype, device=device)
        out = jax_apply_model(
            model,
            mix,
            split=split,
            overlap=overlap,
            transition_power=transition_power,
            segment_length=segment_length,
        )
        return _np(out)


try:  # HTDemucs in the JAX port (issue 25)
    from umx_jax import htdemucs as ht_model
    from umx_jax import htdemucs_apply as ht_apply
except ImportError:  # a port without it: the HTDemucs stages are "not available yet"
    ht_model = ht_apply = None


def _htdemucs_stage(weights, config: HTDemucsConfig, mix: np.ndarray, dtype: str, device: str, stats=None):
    with run_in(dtype, device):
        model = from_canonical(config, weights, dtype=dtype, device=device)
        given = None if stats is None else {k: np.asarray(v, dtype) for k, v in stats.items()}
        out, trace = ht_model.forward(model, mix, stats=given, traced=True)
        return _np(out), {k: _np(v) for k, v in trace.items()}


def _htdemucs_apply_stage(weights, config: HTDemucsConfig | BagConfig, mix: np.ndarray, shifts, split, overlap,
                          transition_power, segment, seed, dtype: str, device: str, stats=None):  # fmt: skip
    if stats is not None:
        raise ValueError("the JAX port computes its own input statistics")
    with run_in(dtype, device):
        if isinstance(config, BagConfig):
            flat = {f"models.{i}.{k}": v for i, w in enumerate(weights) for k, v in w.items()}
            model = from_canonical(config, flat, dtype=dtype, device=device)
        else:
            model = from_canonical(config, weights[0], dtype=dtype, device=device)
        out = ht_apply.apply_model(model, mix, shifts, split, overlap, transition_power, segment, seed, PRECISION)
        return _np(out), None


if ht_model is not None:
    _htdemucs, _htdemucs_apply = _htdemucs_stage, _htdemucs_apply_stage


def check_device(device: str) -> None:
    """Raises :class:`~unmix.parity.adapters.DeviceUnavailable` for ``gpu`` where JAX has no GPU backend."""
    if device == "gpu":
        try:
            jax.devices("gpu")
        except RuntimeError as e:
            raise DeviceUnavailable(f"--device gpu: JAX has no GPU backend here ({e})") from None


def port(device: str = "cpu") -> Port:
    """The adapter; raises :class:`~unmix.parity.adapters.DeviceUnavailable` for ``gpu`` without a GPU backend."""
    check_device(device)
    return port_of("jax", globals(), device=device)
