"""The NNabla port (``umx_nnabla``) as a :class:`~unmix.parity.adapters.Port`, float32 (NNabla environment only).

NNabla's CPU extension has no float64 kernels (``umx_nnabla._context``), so the port runs in float32 only. Every
function takes and returns NumPy arrays and runs the port's own code: the NumPy-FFT transforms, ``complex_norm`` /
the networks / the resampler as NNabla graphs, the NumPy Wiener filter, the whole separator and ``apply_model``
(the port's defaults; the other implementations, ``F.stft`` / ``F.istft`` graphs, ``F.lstm`` and the Wiener
graph, are compared in ``parity_tests/nnabla/test_graph_impls.py``). HTDemucs (``umx_nnabla.htdemucs``,
``umx_nnabla.htdemucs_apply``): the traced forward (NumPy spectrograms around the network's graph) and demucs 4's
``apply_model`` on the model or its bag, the shifts drawn by ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nnabla as nn
import numpy as np

import umx_nnabla
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from umx_nnabla import filtering, from_canonical, transforms
from umx_nnabla import htdemucs as ht_model
from umx_nnabla import htdemucs_apply as ht_apply
from unmix.parity.adapters import DeviceUnavailable, Port, port_of

__all__ = ["check_device", "port", "run_on", "trace_arrays"]


def check_device(device: str) -> nn.Context:
    """The extension context of ``device``.

    Raises:
        DeviceUnavailable: ``gpu`` without ``nnabla-ext-cuda``.
    """
    try:
        return umx_nnabla.device_context(device)
    except RuntimeError as e:
        raise DeviceUnavailable(str(e)) from None


@contextlib.contextmanager
def run_on(device: str) -> Iterator[None]:
    """Run inside ``device``'s extension context (:func:`check_device`)."""
    with nn.context_scope(check_device(device)):
        yield


def trace_arrays(trace: dict[str, nn.Variable]) -> dict[str, np.ndarray]:
    """The UMX trace in the reference's layouts: every key ``(nb_frames * nb_samples, features)`` but ``lstm``
    ``(nb_frames, nb_samples, features)``; the port's Variables are frame-major ``(nb_frames, nb_samples, ...)``."""
    out = {}
    for key, var in trace.items():
        value = var.d.copy()
        out[key] = value if key == "lstm" else value.reshape(value.shape[0] * value.shape[1], -1)
    return out


def _stft(x: np.ndarray, cfg: STFTConfig, dtype: str, device: str, window: np.ndarray | None = None) -> np.ndarray:
    return transforms.stft(x.astype(dtype), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, window)


def _istft(
    X: np.ndarray, cfg: STFTConfig, length: int, dtype: str, device: str, window: np.ndarray | None = None
) -> np.ndarray:
    return transforms.istft(X, cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, length, window)


def _complex_norm(X: np.ndarray, mono: bool, dtype: str, device: str) -> np.ndarray:
    with run_on(device):
        re, im = nn.Variable.from_numpy_array(X.real), nn.Variable.from_numpy_array(X.imag)
        out = transforms.complex_norm(re, im, mono=mono)
        out.forward()
        return out.d.copy()


def _umx(weights, config: UMXConfig, x: np.ndarray, dtype: str, device: str):
    with run_on(device):
        model = from_canonical(config, weights)
        trace: dict[str, nn.Variable] = {}
        out = model(nn.Variable.from_numpy_array(x), trace=trace)
        out.forward(clear_buffer=True)
        return out.d.copy(), trace_arrays(trace)


def _wiener(v, mix, niter, softmask, residual, dtype: str, device: str) -> np.ndarray:
    return filtering.wiener(v, mix, niter, softmask, residual)


def _separator(weights, config: UMXSeparatorConfig, audio: np.ndarray, dtype: str, device: str) -> np.ndarray:
    with run_on(device):
        return from_canonical(config, weights)(audio)


def _resample(x: np.ndarray, old: int, new: int, dtype: str, device: str) -> np.ndarray:
    with run_on(device):
        y = umx_nnabla.resample_frac(nn.Variable.from_numpy_array(x), old, new)
        y.forward()
        return y.d.copy()


def _demucs(weights, config: DemucsConfig, mix: np.ndarray, dtype: str, device: str):
    with run_on(device):
        model = from_canonical(config, weights)
        trace: dict[str, nn.Variable] = {}
        out = model(nn.Variable.from_numpy_array(mix), trace=trace)
        out.forward(clear_buffer=True)
        return out.d.copy(), {k: v.d.copy() for k, v in trace.items()}


def _apply_model(weights, config: DemucsConfig, mix: np.ndarray, split, overlap, transition_power, segment_length,
                 dtype, device) -> np.ndarray:  # fmt: skip
    with run_on(device):
        model = from_canonical(config, weights)
        return umx_nnabla.apply_model(
            model, mix, split=split, overlap=overlap, transition_power=transition_power, segment_length=segment_length
        )


def _htdemucs(weights, config: HTDemucsConfig, mix: np.ndarray, dtype: str, device: str, stats=None):
    with run_on(device):
        model = from_canonical(config, weights, device=device, dtype=dtype)
        given = None if stats is None else {k: np.asarray(v, dtype) for k, v in stats.items()}
        out, trace = ht_model.forward(model, mix, stats=given, traced=True)
        return out, {k: v for k, v in trace.items() if k != "output"}


def _htdemucs_apply(weights, config: HTDemucsConfig | BagConfig, mix: np.ndarray, shifts, split, overlap,
                    transition_power, segment, seed, dtype: str, device: str, stats=None):  # fmt: skip
    if stats is not None:
        raise ValueError("the NNabla port computes its own input statistics")
    with run_on(device):
        if isinstance(config, BagConfig):
            flat = {f"models.{i}.{k}": v for i, w in enumerate(weights) for k, v in w.items()}
            model = from_canonical(config, flat, device=device, dtype=dtype)
        else:
            model = from_canonical(config, weights[0], device=device, dtype=dtype)
        return ht_apply.apply_model(model, mix, shifts, split, overlap, transition_power, segment, seed), None


def port(device: str = "cpu") -> Port:
    """The adapter; raises :class:`~unmix.parity.adapters.DeviceUnavailable` for ``gpu`` without
    ``nnabla-ext-cuda``."""
    check_device(device)
    return port_of("nnabla", globals(), dtypes=umx_nnabla.DTYPES, device=device)
