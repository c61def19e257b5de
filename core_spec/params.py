"""The parameter inventory: for any config, the exact upstream state-dict names and shapes a weight file holds.

The canonical names and layouts are the upstream PyTorch ones (``fc1.weight (512, 2974)``,
``lstm.weight_ih_l0``, ``encoder.0.0.weight``, ...). Every converter and loader checks a weight dict against
:func:`parameter_inventory` with :func:`check_weights`, which names every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .configs import DemucsConfig, UMXConfig

__all__ = [
    "UMX_IGNORED_ON_LOAD",
    "Inventory",
    "WeightsMismatchError",
    "check_weights",
    "fold_lstm_bias",
    "is_ignored_on_load",
    "lstm_bias_halves",
    "nb_parameters",
    "parameter_inventory",
]

Inventory = list[tuple[str, tuple[int, ...]]]

# Keys the 2019 ``umx``/``umxhq`` files carry (their v1.0 model held its own STFT) and BatchNorm's step counters:
# dropped on load, never written.
UMX_IGNORED_ON_LOAD = ("sample_rate", "stft.window", "transform.0.window")


def is_ignored_on_load(name: str) -> bool:
    """True for keys that loaders drop silently: 2019 UMX legacy buffers and ``*.num_batches_tracked``."""
    return name in UMX_IGNORED_ON_LOAD or name.endswith("num_batches_tracked")


def _lstm(prefix: str, input_size: int, hidden: int, layers: int, directions: int) -> Inventory:
    out: Inventory = []
    for layer in range(layers):
        layer_in = input_size if layer == 0 else hidden * directions
        for suffix in ("", "_reverse")[:directions]:
            out += [
                (f"{prefix}weight_ih_l{layer}{suffix}", (4 * hidden, layer_in)),
                (f"{prefix}weight_hh_l{layer}{suffix}", (4 * hidden, hidden)),
                (f"{prefix}bias_ih_l{layer}{suffix}", (4 * hidden,)),
                (f"{prefix}bias_hh_l{layer}{suffix}", (4 * hidden,)),
            ]
    return out


def _batch_norm(prefix: str, n: int) -> Inventory:
    return [(f"{prefix}.{p}", (n,)) for p in ("weight", "bias", "running_mean", "running_var")]


def _umx_inventory(c: UMXConfig) -> Inventory:
    h, crop, bins, ch = c.hidden_size, c.crop_bins, c.nb_bins, c.nb_channels
    return [
        ("input_mean", (crop,)),
        ("input_scale", (crop,)),
        ("output_scale", (bins,)),
        ("output_mean", (bins,)),
        ("fc1.weight", (h, ch * crop)),
        *_batch_norm("bn1", h),
        *_lstm("lstm.", h, c.lstm_hidden_size, c.nb_layers, c.nb_directions),
        ("fc2.weight", (h, 2 * h)),
        *_batch_norm("bn2", h),
        ("fc3.weight", (ch * bins, h)),
        *_batch_norm("bn3", ch * bins),
    ]


def _demucs_inventory(c: DemucsConfig) -> Inventory:
    # Sequential slots of demucs 2.0.x: encoder [conv k/s, ReLU, (1x1 conv, GLU|ReLU)];
    # decoder [(conv context, GLU|ReLU), transposed conv k/s, (ReLU except outermost)].
    scale = 2 if c.glu else 1
    enc: Inventory = []
    dec: Inventory = []
    layers = c.layer_channels()
    k = c.kernel_size
    for index, (chin, ch) in enumerate(layers):
        enc += [(f"encoder.{index}.0.weight", (ch, chin, k)), (f"encoder.{index}.0.bias", (ch,))]
        if c.rewrite:
            enc += [(f"encoder.{index}.2.weight", (scale * ch, ch, 1)), (f"encoder.{index}.2.bias", (scale * ch,))]
    for j, (chin, ch) in enumerate(reversed(layers)):
        index = c.depth - 1 - j
        out = len(c.sources) * c.audio_channels if index == 0 else chin
        slot = 0
        if c.rewrite:
            dec += [
                (f"decoder.{j}.0.weight", (scale * ch, ch, c.context)),
                (f"decoder.{j}.0.bias", (scale * ch,)),
            ]
            slot = 2
        dec += [(f"decoder.{j}.{slot}.weight", (ch, out, k)), (f"decoder.{j}.{slot}.bias", (out,))]
    inv = enc + dec
    if c.lstm_layers:
        dim = layers[-1][1]
        inv += _lstm("lstm.lstm.", dim, dim, c.lstm_layers, 2)
        inv += [("lstm.linear.weight", (dim, 2 * dim)), ("lstm.linear.bias", (dim,))]
    return inv


def parameter_inventory(config: UMXConfig | DemucsConfig) -> Inventory:
    """Ordered ``(name, shape)`` of every parameter and buffer the upstream model's ``state_dict()`` holds.

    ``num_batches_tracked`` counters are left out (see :func:`is_ignored_on_load`). The order is the upstream
    ``state_dict()`` order for UMX (own parameters, then children); for Demucs it is grouped encoder, decoder,
    LSTM. Loaders must map by name, not by order.
    """
    if isinstance(config, UMXConfig):
        return _umx_inventory(config)
    if isinstance(config, DemucsConfig):
        return _demucs_inventory(config)
    raise TypeError(f"no inventory for {type(config).__name__}")


def nb_parameters(config: UMXConfig | DemucsConfig) -> int:
    """Total number of values in the inventory (including BatchNorm running statistics)."""
    total = 0
    for _, shape in parameter_inventory(config):
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


@dataclass
class WeightsMismatchError(ValueError):
    """A weight dict does not match the inventory of its config."""

    missing: list[tuple[str, tuple[int, ...]]]
    unexpected: list[tuple[str, tuple[int, ...]]]
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    source: str = "weights"

    def __str__(self) -> str:
        lines = [f"{self.source} do not match the model config:"]
        for name, shape in self.missing:
            lines.append(f"  missing     {name}: expected shape {shape}")
        for name, shape in self.unexpected:
            lines.append(f"  unexpected  {name}: shape {shape}")
        for name, expected, actual in self.misshaped:
            lines.append(f"  mis-shaped  {name}: expected {expected}, got {actual}")
        return "\n".join(lines)


def check_weights(
    weights: Mapping[str, Any], config: UMXConfig | DemucsConfig, source: str = "weights"
) -> dict[str, Any]:
    """Check ``weights`` (name -> array-like with ``.shape``) against the inventory of ``config``.

    Returns the dict without ignored keys (:func:`is_ignored_on_load`), in inventory order. Raises
    :class:`WeightsMismatchError` naming every missing, unexpected and mis-shaped key.
    """
    expected = dict(parameter_inventory(config))
    kept = {k: v for k, v in weights.items() if not is_ignored_on_load(k)}
    missing = [(k, s) for k, s in expected.items() if k not in kept]
    unexpected = [(k, tuple(v.shape)) for k, v in kept.items() if k not in expected]
    misshaped = [
        (k, expected[k], tuple(v.shape)) for k, v in kept.items() if k in expected and tuple(v.shape) != expected[k]
    ]
    if missing or unexpected or misshaped:
        raise WeightsMismatchError(missing, unexpected, misshaped, source)
    return {k: kept[k] for k in expected}


def fold_lstm_bias(bias_ih: Any, bias_hh: Any, dtype: Any = np.float32) -> np.ndarray:
    """The one bias of frameworks whose LSTM has one (Keras, Flax, NNabla): upstream's ``bias_ih + bias_hh``,
    summed in float64 and rounded once to ``dtype``."""
    return (np.asarray(bias_ih, np.float64) + np.asarray(bias_hh, np.float64)).astype(dtype)


def lstm_bias_halves(folded: np.ndarray, bias_ih: Any, bias_hh: Any) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's two LSTM biases for a folded bias: ``(bias_ih, bias_hh)`` when they fold to it
    (:func:`fold_lstm_bias`: they are the halves it was made of), else ``(folded, 0)`` (the same network)."""
    folded = np.asarray(folded)
    if np.array_equal(fold_lstm_bias(bias_ih, bias_hh, folded.dtype), folded):
        return np.asarray(bias_ih), np.asarray(bias_hh)
    return folded, np.zeros_like(folded)
