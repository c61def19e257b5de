"""The upstream oracles (openunmix 1.3.0, demucs 2.0.3) built from canonical weights. Needs torch: main env only.

openunmix imports torchaudio at package import but never uses it for the model, the filter or the transforms;
no torchaudio build works beside torch 2.13, so an empty ``torchaudio`` module is inserted first.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping

import numpy as np

if "torchaudio" not in sys.modules:
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")

import torch

from core_spec.configs import DemucsConfig, UMXConfig, UMXSeparatorConfig

__all__ = ["demucs_model", "to_torch_state", "torch", "umx_model", "umx_separator", "versions"]


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
