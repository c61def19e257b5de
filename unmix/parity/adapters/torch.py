"""The PyTorch port (``umx_torch``) as a :class:`~unmix.parity.adapters.Port`, float32 and float64.

Every function takes and returns NumPy arrays and runs the port in inference mode (``torch.no_grad``); ``gpu`` is
the first CUDA device with TF32 off (matmul and cuDNN).
"""

from __future__ import annotations

import numpy as np
import torch

from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from umx_torch import Demucs, OpenUnmix, Separator, apply_model, load_weights, resample_frac, wiener
from umx_torch import htdemucs_apply as ht_apply
from umx_torch.htdemucs import HTDemucs
from umx_torch.transforms import complex_norm, istft, stft
from unmix.parity.adapters import DeviceUnavailable, Port, port_of

__all__ = ["TORCH_DTYPES", "np_of", "port", "torch_device"]

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def torch_device(device: str) -> torch.device:
    """The torch device of ``"cpu"`` / ``"gpu"``; CUDA runs with TF32 off.

    Raises:
        DeviceUnavailable: ``"gpu"`` where PyTorch sees no CUDA device.
    """
    if device == "gpu":
        if not torch.cuda.is_available():
            raise DeviceUnavailable("--device gpu needs CUDA (torch.cuda.is_available() is False)")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return torch.device("cuda")
    return torch.device("cpu")


def np_of(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu").numpy()


def _t(x: np.ndarray, dtype: str, device: str) -> torch.Tensor:
    real = TORCH_DTYPES[dtype]
    return torch.from_numpy(np.ascontiguousarray(x)).to(
        torch_device(device), real.to_complex() if np.iscomplexobj(x) else real
    )


def _window(window, dtype, device):
    return None if window is None else _t(window, dtype, device)


@torch.no_grad()
def _stft(x, cfg: STFTConfig, dtype, device, window=None):
    window = _window(window, dtype, device)
    return np_of(stft(_t(x, dtype, device), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, window))


@torch.no_grad()
def _istft(X, cfg: STFTConfig, length, dtype, device, window=None):
    window = _window(window, dtype, device)
    return np_of(istft(_t(X, dtype, device), cfg.n_fft, cfg.n_hop, cfg.center, cfg.normalized, length, window))


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


def _htdemucs_model(weights, config: HTDemucsConfig, dtype, device) -> HTDemucs:
    model = HTDemucs.from_config(config, torch_device(device), TORCH_DTYPES[dtype])
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()})
    return model


@torch.no_grad()
def _htdemucs(weights, config: HTDemucsConfig, mix, dtype, device, stats=None):
    model = _htdemucs_model(weights, config, dtype, device)
    trace: dict[str, torch.Tensor] = {}
    given = None if stats is None else {k: _t(np.asarray(v), dtype, device) for k, v in stats.items()}
    out = model(_t(mix, dtype, device), trace=trace, stats=given)
    return np_of(out), {k: np_of(v) for k, v in trace.items()}


def _htdemucs_apply(weights, config: HTDemucsConfig | BagConfig, mix, shifts, split, overlap, transition_power,
                    segment, seed, dtype, device, stats=None):  # fmt: skip
    if stats is not None:
        raise ValueError("the torch port computes its own input statistics")
    if isinstance(config, BagConfig):
        models = [_htdemucs_model(w, m, dtype, device) for w, m in zip(weights, config.models, strict=True)]
        model: HTDemucs | ht_apply.BagOfModels = ht_apply.BagOfModels(models, config.weights, config.segment).eval()
    else:
        model = _htdemucs_model(weights[0], config, dtype, device)
    out = ht_apply.apply_model(model, _t(mix, dtype, device), shifts, split, overlap, transition_power, segment, seed)
    return np_of(out), None


def port(device: str = "cpu") -> Port:
    """The adapter; raises :class:`~unmix.parity.adapters.DeviceUnavailable` for ``gpu`` without CUDA.

    ``fft_signs_differ``: torch's FFT (pocketfft or MKL on the CPU, cuFFT) gives rounding-level imaginary parts of
    real-axis bins other signs than NumPy's (:class:`~unmix.parity.adapters.Port`).
    """
    torch_device(device)
    return port_of("torch", globals(), device=device, fft_signs_differ=True)
