"""Each implementation as plain functions on NumPy arrays, one per stage: the one stage-capture mechanism that the
parity suite (``parity_tests/harness.py``) and ``unmix-parity`` both call.

An adapter is a :class:`Port`: every function takes NumPy inputs, runs one stage of the implementation's own code
in ``dtype`` on ``device`` and returns NumPy arrays (complex where the stage is complex). The modules beside this
one build them: :mod:`.reference` (the float64 NumPy spec), :mod:`.torch`, :mod:`.tf`, :mod:`.jax`,
:mod:`.nnabla` (the four ports) and :mod:`.upstream` (openunmix 1.3.0 and demucs 2.0.3 run by PyTorch: the oracle).
This module imports NumPy only; :func:`load` imports an adapter module, and with it its framework, when asked.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from core_spec.frameworks import quiet_import

__all__ = ["ADAPTERS", "STAGE_FUNCTIONS", "DeviceUnavailable", "Port", "load", "port_of"]

Array = np.ndarray

# adapter name -> module under unmix.parity.adapters
ADAPTERS = ("reference", "torch", "tf", "jax", "nnabla", "upstream")

STAGE_FUNCTIONS = (
    "stft",
    "istft",
    "complex_norm",
    "umx",
    "wiener",
    "separator",
    "resample",
    "demucs",
    "apply_model",
    "htdemucs",
    "htdemucs_apply",
)


class DeviceUnavailable(RuntimeError):
    """The implementation cannot run on the requested device here (no CUDA, no ``nnabla-ext-cuda``, ...)."""


@dataclasses.dataclass
class Port:
    """One implementation, stage by stage. Every function returns NumPy arrays (complex where the stage is complex).

    - ``stft(x (B, C, L), cfg, dtype, device, window=None) -> (B, C, F, T) complex``; ``window``: an ``(n_fft,)``
      array in ``dtype`` (upstream's float32-built window, from the fixtures) instead of the periodic Hann window
    - ``istft(X (B, C, F, T) complex, cfg, length, dtype, device, window=None) -> (B, C, length)``
    - ``complex_norm(X complex, mono, dtype, device) -> (B, C|1, F, T)``
    - ``umx(weights, config, x (B, C, F, T), dtype, device) -> (output (B, C, F, T), trace dict)``; the trace holds
      the keys of ``core_spec.reference.umx.UMX_TRACE_KEYS`` in the reference's layouts, in the order the forward
      recorded them
    - ``wiener(v (T, F, C|1, S), mix (T, F, C) complex, niter, softmask, residual, dtype, device) -> complex``
    - ``separator(weights_by_target, config, audio (B, 2, L), dtype, device) -> (B, S, 2, L)``
    - ``resample(x (..., L), old, new, dtype, device) -> (..., L')``
    - ``demucs(weights, config, mix (B, C, L), dtype, device) -> (output (B, S, C, L'), trace dict)``; the trace holds
      the keys of ``core_spec.reference.demucs.demucs_trace_keys(config)``, in the order the forward recorded them
    - ``apply_model(weights, config, mix (C, L), split, overlap, transition_power, segment_length, dtype,
      device) -> (S, C, L)``
    - ``htdemucs(weights, config, mix (B, C, L), dtype, device, stats=None) -> (output (B, S, C, L), trace dict)``:
      an HTDemucs (``HTDemucsConfig``) forward; the trace holds the keys of
      ``core_spec.reference.htdemucs.htdemucs_trace_keys(config)`` in the spec's layouts; ``stats``: the input
      statistics to use (``mean``, ``std``, ``mean_t``, ``std_t``, ``(B,)`` each; upstream cannot take them and
      returns its own in the trace as ``stats.<name>``)
    - ``htdemucs_apply(weights_per_model, config, mix (C, L), shifts, split, overlap, transition_power, segment,
      seed, dtype, device, stats=None) -> (stems (S, C, L), per-call statistics or None)``: demucs 4's
      ``apply_model`` on an ``HTDemucsConfig`` or a ``BagConfig`` (one weights mapping per model), the shifts drawn
      by ``numpy.random.default_rng(seed)`` as the spec draws them; ``stats``: the input statistics of every
      network call in order (the reference injects them; upstream returns its own instead of ``None``)

    A stage may be ``None`` only while the implementation does not have it; callers fail (never skip) naming it,
    except the HTDemucs stages of a port that has no HTDemucs yet (reported as not available, not as a failure).

    ``fft_signs_differ``: the implementation's FFT gives the rounding-level imaginary parts of bins that lie on the
    real axis in exact arithmetic other signs than NumPy's (the spec's FFT). Upstream's atan2 (the default
    ``WienerConfig.atan2``) jumps by 2 x 8.7e-8 rad across the negative real axis, so such a port's float64
    separator differs from the spec's by up to ~3e-8 of its peak, far above the float64 row; the parity suite
    then compares its float64 separator with ``atan2="exact"`` on both sides (continuous at the axis).
    """

    name: str
    dtypes: tuple[str, ...] = ("float32", "float64")
    device: str = "cpu"
    fft_signs_differ: bool = False
    stft: Callable[..., Array] | None = None
    istft: Callable[..., Array] | None = None
    complex_norm: Callable[..., Array] | None = None
    umx: Callable[..., tuple[Array, dict[str, Array]]] | None = None
    wiener: Callable[..., Array] | None = None
    separator: Callable[..., Array] | None = None
    resample: Callable[..., Array] | None = None
    demucs: Callable[..., tuple[Array, dict[str, Array]]] | None = None
    apply_model: Callable[..., Array] | None = None
    htdemucs: Callable[..., tuple[Array, dict[str, Array]]] | None = None
    htdemucs_apply: Callable[..., tuple[Array, Any]] | None = None


def port_of(name: str, namespace: dict[str, Any], **fields: Any) -> Port:
    """The :class:`Port` of an adapter module whose stage functions are named ``_<stage>`` (``_stft``, ``_umx``,
    ``_apply_model``, ...: :data:`STAGE_FUNCTIONS`), found in ``namespace`` (the module's ``globals()``);
    ``fields``: the other :class:`Port` fields (``device``, ``dtypes``, ``fft_signs_differ``)."""
    stages = {stage: namespace[f"_{stage}"] for stage in STAGE_FUNCTIONS if f"_{stage}" in namespace}
    return Port(name=name, **stages, **fields)


def load(name: str, device: str = "cpu") -> Port:
    """The adapter ``name`` (one of :data:`ADAPTERS`) on ``device``; imports its framework.

    Raises:
        ValueError: an unknown name.
        ImportError: the framework (or, for ``upstream``, torch/openunmix/demucs) is not installed here.
        DeviceUnavailable: ``device`` is not usable by that framework here.
    """
    if name not in ADAPTERS:
        raise ValueError(f"unknown implementation {name!r}; known: {', '.join(ADAPTERS)}")
    with quiet_import():  # the framework's start-up log lines
        module = importlib.import_module(f"{__name__}.{name}")
    return module.port(device)
