"""Open-Unmix, one target, eval mode, float64: the executable spec of ``openunmix.model.OpenUnmix.forward``.

The network works frame-major, ``(nb_frames, nb_samples, ...)``. Flatten orders are those of upstream: the input
features of ``fc1`` are ``c * max_bin + f`` and the outputs of ``fc3`` are ``c * nb_bins + f``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..configs import UMXConfig
from ..trace import Recorder
from .layers import batch_norm, linear, lstm

__all__ = ["UMX_TRACE_KEYS", "open_unmix"]

# Intermediate outputs :func:`open_unmix` records in ``trace``, named after the upstream module they are the input
# or the output of (so that forward hooks on the upstream model capture the same tensors). All are frame-major and
# flattened to ``(nb_frames * nb_samples, features)``, except ``lstm``: ``(nb_frames, nb_samples, hidden_size)``.
UMX_TRACE_KEYS = ("fc1.input", "fc1", "bn1", "lstm", "fc2.input", "fc2", "bn2", "fc3.input", "fc3", "bn3")


def open_unmix(
    weights: Mapping[str, np.ndarray],
    config: UMXConfig,
    x: np.ndarray,
    trace: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Estimate one target's magnitude spectrogram.

    Args:
        weights: canonical (upstream state-dict) weights of one target.
        config: the network config.
        x: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        trace: if given, filled with the intermediate outputs named in :data:`UMX_TRACE_KEYS`.

    Returns:
        the target magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``: a non-negative mask times the
        uncropped mixture magnitude.
    """
    w = weights
    x = np.asarray(x, dtype=np.float64)
    nb_samples, nb_channels, nb_bins, nb_frames = x.shape
    if nb_channels != config.nb_channels or nb_bins != config.nb_bins:
        raise ValueError(
            f"OpenUnmix expects (nb_samples, {config.nb_channels}, {config.nb_bins}, nb_frames), got {x.shape}"
        )
    keep = Recorder(trace, UMX_TRACE_KEYS)
    h = config.hidden_size

    x = x.transpose(3, 0, 1, 2)  # (T, B, C, F)
    mix = x.copy()  # the uncropped magnitude, masked at the end
    x = x[..., : config.crop_bins]
    x = (x + w["input_mean"]) * w["input_scale"]

    x = keep("fc1.input", x.reshape(nb_frames * nb_samples, -1))  # features in (c, f) order: c * max_bin + f
    x = keep("fc1", linear(x, w["fc1.weight"]))  # (T*B, H), no bias
    x = keep("bn1", batch_norm(x, w, "bn1"))
    x = np.tanh(x).reshape(nb_frames, nb_samples, h)

    y = keep("lstm", lstm(x, w, "lstm.", config.nb_layers, bidirectional=not config.unidirectional))
    x = keep("fc2.input", np.concatenate([x, y], axis=-1).reshape(-1, 2 * h))  # skip connection: (T*B, 2H)

    x = keep("fc2", linear(x, w["fc2.weight"]))
    x = keep("bn2", batch_norm(x, w, "bn2"))
    x = keep("fc3.input", np.maximum(x, 0.0))
    x = keep("fc3", linear(x, w["fc3.weight"]))  # (T*B, C*F): features in (c, f) order
    x = keep("bn3", batch_norm(x, w, "bn3"))

    x = x.reshape(nb_frames, nb_samples, nb_channels, nb_bins)
    x = x * w["output_scale"] + w["output_mean"]
    mask = np.maximum(x, 0.0)
    return (mask * mix).transpose(1, 2, 3, 0)
