"""Demucs v2, eval mode, float64: the executable spec of ``demucs.model.Demucs.forward`` of demucs 2.0.3.

The network works on waveforms, channel-first: ``(nb_samples, nb_channels, nb_timesteps)``. It never pads: a
caller pads the mixture to :func:`core_spec.shapes.valid_length` and centre-trims the output (``apply_model``
does both). With ``context > 1`` the output is shorter than the input (see :func:`core_spec.shapes.output_length`).

Layer ``i`` of the encoder (``i = 0`` outermost) and layer ``j`` of the decoder (``j = 0`` deepest), with
``(chin, ch) = config.layer_channels()[i]``::

    encoder.i = Conv1d(chin, ch, kernel_size, stride) -> ReLU -> [Conv1d(ch, 2ch, 1) -> GLU]        (rewrite)
    decoder.j = [Conv1d(ch, 2ch, context) -> GLU] -> ConvTranspose1d(ch, out, kernel_size, stride) -> ReLU
                                                                   (no ReLU on the outermost, j = depth - 1)

``glu=False`` puts a ReLU where the GLUs are (and the 1x1 / context convolutions keep ``ch`` channels);
``rewrite=False`` drops the bracketed convolutions. The outermost decoder has ``len(sources) * audio_channels``
outputs, ordered ``source * audio_channels + channel``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..configs import DemucsConfig
from ..shapes import center_trim
from ..trace import Recorder
from .layers import conv1d, conv_transpose1d, glu, linear, lstm
from .resample import resample_frac

__all__ = ["DEMUCS_NORM_EPS", "demucs", "demucs_trace_keys"]

# ``x = (mix - mean) / (DEMUCS_NORM_EPS + std)``, executed even when ``normalize=False`` (then mean 0, std 1).
DEMUCS_NORM_EPS = 1e-5


def demucs_trace_keys(config: DemucsConfig) -> tuple[str, ...]:
    """The intermediate outputs :func:`demucs` records, in order of computation.

    Each is named after the upstream module (or ``julius`` call) whose output it is, so that forward hooks on the
    upstream model capture the same tensors:

    - ``resample.up``: ``(B, C, 2 L)`` the normalised mixture upsampled x2 (only with ``resample``);
    - ``encoder.i``: ``(B, ch_i, L_i)``;
    - ``lstm.lstm``: ``(T, B, 2 ch)``, the raw bidirectional LSTM states (frame-major), and ``lstm``:
      ``(B, ch, T)`` after the linear layer (only with ``lstm_layers > 0``);
    - ``decoder.j``: ``(B, out_j, L'_j)``, the decoder output (its input is the previous output plus the
      centre-trimmed skip);
    - ``resample.down``: ``(B, S * C, L_out)`` downsampled x2, before de-normalisation (only with ``resample``).
    """
    keys = ["resample.up"] if config.resample else []
    keys += [f"encoder.{i}" for i in range(config.depth)]
    keys += ["lstm.lstm", "lstm"] if config.lstm_layers else []
    keys += [f"decoder.{j}" for j in range(config.depth)]
    keys += ["resample.down"] if config.resample else []
    return tuple(keys)


def _activation(x: np.ndarray, config: DemucsConfig) -> np.ndarray:
    """The activation after the 1x1 (encoder) and ``context`` (decoder) convolutions: GLU or ReLU."""
    return glu(x, axis=1) if config.glu else np.maximum(x, 0.0)


def _conv(x: np.ndarray, w: Mapping[str, np.ndarray], name: str, stride: int = 1) -> np.ndarray:
    kernel = w[f"{name}.weight"].shape[-1]
    if x.shape[-1] < kernel:
        raise ValueError(
            f"{name}: input of {x.shape[-1]} steps is shorter than the kernel ({kernel}); pad the mixture to "
            "core_spec.shapes.valid_length() first (apply_model does)"
        )
    return conv1d(x, w[f"{name}.weight"], w[f"{name}.bias"], stride)


def encoder_layer(w: Mapping[str, np.ndarray], config: DemucsConfig, index: int, x: np.ndarray) -> np.ndarray:
    """``encoder.{index}``: ``(B, chin, L)`` -> ``(B, ch, (L - kernel_size) // stride + 1)``."""
    x = np.maximum(_conv(x, w, f"encoder.{index}.0", config.stride), 0.0)
    if config.rewrite:
        x = _activation(_conv(x, w, f"encoder.{index}.2"), config)
    return x


def decoder_layer(w: Mapping[str, np.ndarray], config: DemucsConfig, index: int, x: np.ndarray) -> np.ndarray:
    """``decoder.{index}``: ``(B, ch, L)`` -> ``(B, out, (L - context) * stride + kernel_size)`` (``context``
    only with ``rewrite``)."""
    slot = 0
    if config.rewrite:
        x = _activation(_conv(x, w, f"decoder.{index}.0"), config)
        slot = 2
    x = conv_transpose1d(x, w[f"decoder.{index}.{slot}.weight"], w[f"decoder.{index}.{slot}.bias"], config.stride)
    if index < config.depth - 1:
        x = np.maximum(x, 0.0)
    return x


def blstm(w: Mapping[str, np.ndarray], config: DemucsConfig, x: np.ndarray, keep: Recorder) -> np.ndarray:
    """``lstm`` (demucs's ``BLSTM``): ``(B, ch, T)`` -> bidirectional LSTM over T -> linear ``2 ch -> ch`` ->
    ``(B, ch, T)``."""
    x = x.transpose(2, 0, 1)  # (T, B, ch)
    x = keep("lstm.lstm", lstm(x, w, "lstm.lstm.", config.lstm_layers, bidirectional=True))  # (T, B, 2 ch)
    x = linear(x, w["lstm.linear.weight"], w["lstm.linear.bias"])
    return x.transpose(1, 2, 0)


def _resample(x: np.ndarray, old: int, new: int, kernels: np.ndarray | None) -> np.ndarray:
    """``julius.resample_frac(x, old, new)`` over the last axis, one row at a time (bounds the memory of the
    reference resampler's window matrix on long signals)."""
    rows = x.reshape(-1, x.shape[-1])
    out = np.stack([resample_frac(row, old, new, kernels=kernels) for row in rows])
    return out.reshape(x.shape[:-1] + out.shape[-1:])


def demucs(
    weights: Mapping[str, np.ndarray],
    config: DemucsConfig,
    mix: np.ndarray,
    trace: dict[str, np.ndarray] | None = None,
    resample_kernels: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Estimate the sources of a batch of mixtures.

    Args:
        weights: canonical (upstream state-dict) weights.
        config: the model config.
        mix: ``(nb_samples, audio_channels, nb_timesteps)``, normally of length ``valid_length(L, config)``.
        trace: if given, filled with the intermediate outputs named by :func:`demucs_trace_keys`.
        resample_kernels: ``{"up": (2, taps), "down": (1, taps)}`` filters for the two resamplings instead of the
            spec's float64 ones (the parity suite injects julius's float32-computed kernels here).

    Returns:
        ``(nb_samples, nb_sources, audio_channels, output_length(nb_timesteps, config))``.
    """
    w = weights
    x = np.asarray(mix, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != config.audio_channels:
        raise ValueError(f"Demucs expects (nb_samples, {config.audio_channels}, nb_timesteps), got {x.shape}")
    keep = Recorder(trace, demucs_trace_keys(config))
    kernels = resample_kernels or {}

    if config.normalize:
        mono = x.mean(axis=1, keepdims=True)  # (B, 1, L)
        mean = mono.mean(axis=-1, keepdims=True)  # (B, 1, 1)
        std = mono.std(axis=-1, ddof=1, keepdims=True)  # unbiased, as torch.std
    else:
        mean, std = np.zeros((1, 1, 1)), np.ones((1, 1, 1))
    x = (x - mean) / (DEMUCS_NORM_EPS + std)  # executed even when normalize=False: x / 1.00001

    if config.resample:
        x = keep("resample.up", _resample(x, 1, 2, kernels.get("up")))

    saved = []
    for index in range(config.depth):
        x = keep(f"encoder.{index}", encoder_layer(w, config, index, x))
        saved.append(x)

    if config.lstm_layers:
        x = keep("lstm", blstm(w, config, x, keep))

    for index in range(config.depth):
        skip = center_trim(saved.pop(), x.shape[-1])  # a decoder never outgrows its encoder: delta >= 0
        x = keep(f"decoder.{index}", decoder_layer(w, config, index, x + skip))

    if config.resample:
        x = keep("resample.down", _resample(x, 2, 1, kernels.get("down")))

    x = x * std + mean
    return x.reshape(x.shape[0], len(config.sources), config.audio_channels, x.shape[-1])
