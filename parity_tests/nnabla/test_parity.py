"""The shared stage tests (``parity_tests.harness``) run on the NNabla port, float32, on ``--device``.

NNabla's CPU extension has no float64 kernels (``umx_nnabla._context``), so the port is tested in float32 only,
against the float64 reference and against upstream's float32 outputs. Every adapter function takes and returns
NumPy arrays and runs the port's own code: the NumPy-FFT transforms, ``complex_norm`` / the networks / the
resampler as NNabla graphs, the NumPy Wiener filter, the whole separator and ``apply_model``. The other
implementations (``F.stft`` / ``F.istft`` graphs, ``F.lstm``, the Wiener graph) are compared in
``test_graph_impls.py``.
"""

from __future__ import annotations

import nnabla as nn
import numpy as np
import pytest

import umx_nnabla
from core_spec.configs import DemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from parity_tests.harness import *  # noqa: F403  (the shared stage tests)
from parity_tests.harness import Port
from umx_nnabla import filtering, transforms
from umx_nnabla.weights import from_canonical

from .helpers import run_on, trace_arrays


def _stft(x: np.ndarray, cfg: STFTConfig, dtype: str, device: str) -> np.ndarray:
    return transforms.stft(x.astype(dtype), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized)


def _istft(X: np.ndarray, cfg: STFTConfig, length: int, dtype: str, device: str) -> np.ndarray:
    return transforms.istft(X, cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, length)


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


def _apply(weights, config: DemucsConfig, mix: np.ndarray, split, overlap, transition_power, segment_length, dtype,
           device) -> np.ndarray:  # fmt: skip
    with run_on(device):
        model = from_canonical(config, weights)
        return umx_nnabla.apply_model(
            model, mix, split=split, overlap=overlap, transition_power=transition_power, segment_length=segment_length
        )


@pytest.fixture(scope="module")
def port(device: str) -> Port:
    try:
        umx_nnabla.device_context(device)
    except RuntimeError as e:  # --device gpu without nnabla-ext-cuda
        pytest.skip(str(e))
    return Port(
        name="nnabla",
        dtypes=umx_nnabla.DTYPES,
        device=device,
        stft=_stft,
        istft=_istft,
        complex_norm=_complex_norm,
        umx=_umx,
        wiener=_wiener,
        separator=_separator,
        resample=_resample,
        demucs=_demucs,
        apply_model=_apply,
    )
