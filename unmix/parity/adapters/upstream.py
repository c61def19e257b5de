"""The upstream oracles (openunmix 1.3.0, demucs 2.0.3, run by PyTorch) built from canonical weights, and as a
:class:`~unmix.parity.adapters.Port`: upstream's own code, stage by stage, on NumPy arrays. Its HTDemucs stages
run demucs 4.1.0 in its own process (:mod:`unmix.parity.adapters.upstream4`).

openunmix imports torchaudio at package import but never uses it for the model, the filter or the transforms;
no torchaudio build works beside torch 2.13, so an empty ``torchaudio`` module is inserted first.

Stage captures use upstream's modules unchanged: forward hooks on the ``OpenUnmix`` layers named by
``core_spec.reference.umx.UMX_TRACE_KEYS`` and on ``Demucs``'s encoder / LSTM / decoder, and a wrapper around the
two ``julius.resample_frac`` calls of ``demucs.model`` (a function, not a module: no hook). The fixtures
(``parity_tests/make_fixtures.py``) are written through the same functions.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

if "torchaudio" not in sys.modules:
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")

import torch

from core_spec.configs import DemucsConfig, STFTConfig, UMXConfig, UMXSeparatorConfig
from unmix.parity.adapters import Port, port_of
from unmix.parity.adapters.torch import TORCH_DTYPES, np_of, torch_device
from unmix.parity.adapters.upstream4 import htdemucs as _htdemucs  # noqa: F401 (a stage, found by port_of)
from unmix.parity.adapters.upstream4 import htdemucs_apply as _htdemucs_apply  # noqa: F401 (the same)

__all__ = [
    "default_dtype",
    "demucs_model",
    "demucs_traced",
    "port",
    "recorded_resampling",
    "to_torch_state",
    "torch",
    "umx_model",
    "umx_separator",
    "umx_traced",
    "versions",
]


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import demucs
    import julius
    import openunmix  # noqa: F401

    return {
        "torch": torch.__version__,
        "openunmix": version("openunmix"),
        "demucs": version("demucs"),
        "julius": getattr(julius, "__version__", version("julius")),
        "numpy": np.__version__,
        "demucs_module": demucs.__file__.rsplit("/", 2)[-2],
    }


def to_torch_state(weights: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}


def umx_model(config: UMXConfig, weights: Mapping[str, np.ndarray], dtype: torch.dtype = torch.float64):
    """``openunmix.model.OpenUnmix`` with ``weights`` loaded (strict), in eval mode, cast to ``dtype``."""
    from openunmix.model import OpenUnmix

    model = OpenUnmix(
        nb_bins=config.nb_bins,
        nb_channels=config.nb_channels,
        hidden_size=config.hidden_size,
        nb_layers=config.nb_layers,
        unidirectional=config.unidirectional,
        max_bin=config.max_bin,
    )
    state = to_torch_state(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"upstream OpenUnmix: missing {missing}, unexpected {unexpected}")
    return model.eval().to(dtype)


def umx_separator(
    config: UMXSeparatorConfig,
    weights: Mapping[str, Mapping[str, np.ndarray]],
    dtype: torch.dtype = torch.float64,
):
    """``openunmix.model.Separator`` with one upstream ``OpenUnmix`` per target."""
    from openunmix.model import Separator

    sep = config.separator
    if sep.wiener.atan2 != "upstream":
        raise ValueError("the upstream separator only has the upstream atan2")
    models = {name: umx_model(config.model, weights[name], dtype) for name in sep.targets}
    separator = Separator(
        target_models=models,
        niter=sep.wiener.niter,
        softmask=sep.wiener.softmask,
        residual=sep.wiener.residual,
        sample_rate=sep.sample_rate,
        n_fft=sep.stft.n_fft,
        n_hop=sep.stft.n_hop,
        nb_channels=config.model.nb_channels,
        wiener_win_len=sep.wiener.wiener_win_len,
        filterbank="torch",
    )
    return separator.eval().to(dtype)


def umx_traced(model: Any, x: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Upstream ``OpenUnmix`` forward with every stage of ``UMX_TRACE_KEYS`` recorded by hooks:
    ``(output, {key: array})``."""
    from core_spec.reference.umx import UMX_TRACE_KEYS

    captured: dict[str, np.ndarray] = {}

    def grab(key: str, kind: str):
        def hook(module, args, output=None):
            tensor = args[0] if kind == "input" else output
            if isinstance(tensor, tuple):
                tensor = tensor[0]
            captured[key] = np_of(tensor).copy()

        return hook

    handles = []
    for key in UMX_TRACE_KEYS:
        name, _, kind = key.partition(".")
        module = getattr(model, name)
        if kind == "input":
            handles.append(module.register_forward_pre_hook(grab(key, "input")))
        else:
            handles.append(module.register_forward_hook(grab(key, "output")))
    try:
        with torch.no_grad():
            out = np_of(model(x))
    finally:
        for h in handles:
            h.remove()
    return out, captured


def demucs_model(config: DemucsConfig, weights: Mapping[str, np.ndarray] | None, dtype: torch.dtype = torch.float64):
    """``demucs.model.Demucs`` of demucs 2.0.3 with ``weights`` loaded (strict), eval mode, ``dtype``."""
    from demucs.model import Demucs

    model = Demucs(
        sources=list(config.sources),
        audio_channels=config.audio_channels,
        channels=config.channels,
        depth=config.depth,
        rewrite=config.rewrite,
        glu=config.glu,
        rescale=config.rescale,
        resample=config.resample,
        kernel_size=config.kernel_size,
        stride=config.stride,
        growth=config.growth,
        lstm_layers=config.lstm_layers,
        context=config.context,
        normalize=config.normalize,
        samplerate=config.samplerate,
        segment_length=config.segment_length,
    )
    if weights is not None:
        model.load_state_dict(to_torch_state(weights), strict=True)
    return model.eval().to(dtype)


@contextlib.contextmanager
def recorded_resampling(record: dict[str, Any]) -> Iterator[None]:
    """Wrap the ``julius.resample_frac`` calls of ``demucs.model`` (a function, not a module: no hook)."""
    import demucs.model
    import julius

    def resample_frac(x, old_sr, new_sr, *args, **kwargs):
        y = julius.resample_frac(x, old_sr, new_sr, *args, **kwargs)
        record["resample.up" if new_sr > old_sr else "resample.down"] = np_of(y).copy()
        return y

    original = demucs.model.julius
    demucs.model.julius = types.SimpleNamespace(resample_frac=resample_frac)
    try:
        yield
    finally:
        demucs.model.julius = original


def demucs_traced(model: Any, mix: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Upstream ``Demucs`` forward with every stage of ``demucs_trace_keys`` recorded: ``(record, output)``."""
    record: dict[str, np.ndarray] = {}
    modules = {f"encoder.{i}": m for i, m in enumerate(model.encoder)}
    modules.update({f"decoder.{j}": m for j, m in enumerate(model.decoder)})
    if model.lstm is not None:
        modules.update({"lstm": model.lstm, "lstm.lstm": model.lstm.lstm})

    def hook(name: str):
        def fn(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output  # nn.LSTM returns (output, (h, c))
            record[name] = np_of(out).copy()

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        with torch.no_grad(), recorded_resampling(record):
            out = np_of(model(mix))
    finally:
        for h in handles:
            h.remove()
    return record, out


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` while inside (upstream's ``apply_model`` allocates its overlap-add
    buffers in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# --- the adapter ------------------------------------------------------------------------------------------------


def _t(x: np.ndarray, dtype: str, device: str) -> torch.Tensor:
    """A real tensor; complex input becomes upstream's trailing ``(re, im)`` axis."""
    x = np.asarray(x)
    if np.iscomplexobj(x):
        x = np.stack([x.real, x.imag], axis=-1)
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch_device(device), TORCH_DTYPES[dtype])


def _complex(x: torch.Tensor) -> np.ndarray:
    a = np_of(x)
    return a[..., 0] + 1j * a[..., 1]


def _filterbanks(cfg: STFTConfig, dtype: str, device: str, window: np.ndarray | None = None):
    """openunmix's encoder and decoder; ``window`` replaces their shared window (upstream's own by default)."""
    from openunmix.transforms import make_filterbanks

    encoder, decoder = make_filterbanks(n_fft=cfg.n_fft, n_hop=cfg.n_hop, center=cfg.center)
    encoder, decoder = (m.to(torch_device(device), TORCH_DTYPES[dtype]) for m in (encoder, decoder))
    if window is not None:
        encoder.window = decoder.window = torch.nn.Parameter(_t(window, dtype, device), requires_grad=False)
    return encoder, decoder


@torch.no_grad()
def _stft(x, cfg: STFTConfig, dtype, device, window=None):
    encoder, _ = _filterbanks(cfg, dtype, device, window)
    return _complex(encoder(_t(x, dtype, device)))


@torch.no_grad()
def _istft(X, cfg: STFTConfig, length, dtype, device, window=None):
    _, decoder = _filterbanks(cfg, dtype, device, window)
    return np_of(decoder(_t(X, dtype, device), length=length))


@torch.no_grad()
def _complex_norm(X, mono, dtype, device):
    from openunmix.transforms import ComplexNorm

    return np_of(ComplexNorm(mono=mono)(_t(X, dtype, device)))


def _umx(weights, config: UMXConfig, x, dtype, device):
    model = umx_model(config, weights, TORCH_DTYPES[dtype]).to(torch_device(device))
    return umx_traced(model, _t(x, dtype, device))


@torch.no_grad()
def _wiener(v, mix, niter, softmask, residual, dtype, device):
    from openunmix.filtering import wiener

    out = wiener(_t(v, dtype, device), _t(mix, dtype, device), niter, softmask=softmask, residual=residual)
    return np_of(out[..., 0, :]) + 1j * np_of(out[..., 1, :])


@torch.no_grad()
def _separator(weights, config: UMXSeparatorConfig, audio, dtype, device):
    separator = umx_separator(config, weights, TORCH_DTYPES[dtype]).to(torch_device(device))
    return np_of(separator(_t(audio, dtype, device)))


@torch.no_grad()
def _resample(x, old, new, dtype, device):
    import julius

    return np_of(julius.resample_frac(_t(x, dtype, device), old, new))


def _demucs(weights, config: DemucsConfig, mix, dtype, device):
    model = demucs_model(config, weights, TORCH_DTYPES[dtype]).to(torch_device(device))
    record, out = demucs_traced(model, _t(mix, dtype, device))
    return out, record


@torch.no_grad()
def _apply_model(weights, config: DemucsConfig, mix, split, overlap, transition_power, segment_length, dtype, device):
    from demucs.utils import apply_model

    if segment_length != config.segment_length:
        raise ValueError(f"upstream apply_model splits at the model's segment_length {config.segment_length}")
    model = demucs_model(config, weights, TORCH_DTYPES[dtype]).to(torch_device(device))
    with default_dtype(TORCH_DTYPES[dtype]):
        out = apply_model(
            model, _t(mix, dtype, device), shifts=0, split=split, overlap=overlap, transition_power=transition_power
        )
    return np_of(out)


def port(device: str = "cpu") -> Port:
    """Upstream as an adapter; raises :class:`~unmix.parity.adapters.DeviceUnavailable` for ``gpu`` without CUDA.

    ``stft``/``istft`` are openunmix's ``TorchSTFT``/``TorchISTFT`` (their window is ``torch.hann_window`` built in
    float32 even in a float64 run: compare float64 with the reference given that window).
    """
    torch_device(device)
    return port_of("upstream", globals(), device=device)
