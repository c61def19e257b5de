"""The shared stage tests (``parity_tests.harness``) run on the PyTorch port, float32 and float64, on ``--device``.

Every adapter function takes and returns NumPy arrays and runs the port in inference mode (``torch.no_grad``).

One shared test is replaced here: ``test_port_separator`` in float64. Upstream's atan2 adds pi rounded to float32,
so the phase it gives a bin lying on the negative real axis jumps by 2 x 8.7e-8 rad with the sign of a
rounding-level imaginary part. Such bins are not rare: every bin of the first frame is real in exact arithmetic
(a reflect-padded, centred frame times a symmetric window is even), half of them negative. Two FFTs (NumPy's and
torch's) disagree on those signs, which moves the float64 separator output by up to ~3e-8 of its peak
(tolerance 1e-9). The replacement compares float64 with ``atan2="exact"`` on both sides (continuous at the
axis), and float32 exactly as the shared test does; ``test_separator.py`` compares float64 with the upstream
atan2 against upstream's own output, on upstream's STFT window.
"""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.configs import DemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from core_spec.reference.separator import separate as ref_separate
from core_spec.tolerances import check
from parity_tests.fixtures import load
from parity_tests.fixtures_umx import SEPARATOR_CASES, separator_weights
from parity_tests.harness import *  # noqa: F403  (the shared stage tests)
from parity_tests.harness import Port
from parity_tests.torch.helpers import TORCH_DTYPES, np_of, torch, torch_device
from umx_torch import Demucs, OpenUnmix, Separator, apply_model, load_weights, resample_frac, wiener
from umx_torch.transforms import complex_norm, istft, stft


def _t(x: np.ndarray, dtype: str, device: str) -> torch.Tensor:
    real = TORCH_DTYPES[dtype]
    return torch.from_numpy(np.ascontiguousarray(x)).to(
        torch_device(device), real.to_complex() if np.iscomplexobj(x) else real
    )


@torch.no_grad()
def _stft(x, cfg: STFTConfig, dtype, device):
    return np_of(stft(_t(x, dtype, device), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized))


@torch.no_grad()
def _istft(X, cfg: STFTConfig, length, dtype, device):
    return np_of(istft(_t(X, dtype, device), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, length))


@torch.no_grad()
def _complex_norm(X, mono, dtype, device):
    return np_of(complex_norm(_t(X, dtype, device), mono))


@torch.no_grad()
def _umx(weights, config: UMXConfig, x, dtype, device):
    model = OpenUnmix.from_config(config, torch_device(device), TORCH_DTYPES[dtype])
    load_weights(model, weights)
    trace: dict[str, torch.Tensor] = {}
    out = model(_t(x, dtype, device), trace=trace)
    return np_of(out), {k: np_of(v) for k, v in trace.items()}


@torch.no_grad()
def _wiener(v, mix, niter, softmask, residual, dtype, device):
    return np_of(wiener(_t(v, dtype, device), _t(mix, dtype, device), niter, softmask=softmask, residual=residual))


@torch.no_grad()
def _separator(weights, config: UMXSeparatorConfig, audio, dtype, device):
    separator = Separator.from_config(config, weights, torch_device(device), TORCH_DTYPES[dtype])
    return np_of(separator(_t(audio, dtype, device)))


@torch.no_grad()
def _resample(x, old, new, dtype, device):
    return np_of(resample_frac(_t(x, dtype, device), old, new))


def _demucs_model(weights, config: DemucsConfig, dtype, device) -> Demucs:
    model = Demucs.from_config(config, torch_device(device), TORCH_DTYPES[dtype])
    load_weights(model, weights)
    return model


@torch.no_grad()
def _demucs(weights, config: DemucsConfig, mix, dtype, device):
    trace: dict[str, torch.Tensor] = {}
    out = _demucs_model(weights, config, dtype, device)(_t(mix, dtype, device), trace=trace)
    return np_of(out), {k: np_of(v) for k, v in trace.items()}


def _apply_model(weights, config: DemucsConfig, mix, split, overlap, transition_power, segment_length, dtype, device):
    model = _demucs_model(weights, config, dtype, device)
    out = apply_model(
        model,
        _t(mix, dtype, device),
        split=split,
        overlap=overlap,
        transition_power=transition_power,
        segment_length=segment_length,
    )
    return np_of(out)


@pytest.fixture(scope="module")
def port(device: str) -> Port:
    torch_device(device)  # skips without CUDA; TF32 off
    return Port(
        name="torch",
        device=device,
        stft=_stft,
        istft=_istft,
        complex_norm=_complex_norm,
        umx=_umx,
        wiener=_wiener,
        separator=_separator,
        resample=_resample,
        demucs=_demucs,
        apply_model=_apply_model,
    )


@pytest.mark.parametrize("name", sorted(SEPARATOR_CASES))
def test_port_separator(port: Port, name: str) -> None:  # replaces the shared test (module docstring)
    import dataclasses

    fx, _ = load("umx_separator")
    config, _ = SEPARATOR_CASES[name]
    weights = separator_weights(config)
    audio = fx[f"{name}.audio"]
    out = _separator(weights, config, audio.astype("float32"), "float32", port.device)
    check(
        out,
        ref_separate(audio, weights, config),
        "separator",
        "float32",
        port.device,
        what=f"torch separator {name} vs reference",
    )
    check(
        out,
        fx[f"{name}.out.float32"],
        "separator",
        "float32",
        port.device,
        what=f"torch separator {name} vs upstream float32",
    )
    exact = dataclasses.replace(
        config,
        separator=dataclasses.replace(
            config.separator, wiener=dataclasses.replace(config.separator.wiener, atan2="exact")
        ),
    )
    out = _separator(weights, exact, audio, "float64", port.device)
    expected = ref_separate(audio, weights, exact)
    check(out, expected, "separator", "float64", port.device, what=f"torch separator {name} exact atan2 vs reference")
