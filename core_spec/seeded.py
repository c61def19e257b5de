"""Seeded random weights at exactly the inventory shapes, with realistic scales.

The parity suite cannot download the pretrained files, so every test runs on weights made here: the same on every
platform (NumPy's ``default_rng`` with PCG64, one stream per parameter name, so a parameter does not change when
another is added), float32, canonical (upstream PyTorch) names and layouts.

Scales imitate PyTorch's initialisation and trained statistics:

- linear / conv / LSTM weights: uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (PyTorch's default), so
  activations stay in the range where float32 behaves as it does with real weights;
- BatchNorm: ``weight`` near 1, ``bias`` near 0, ``running_mean`` near 0, ``running_var`` positive in
  ``[0.5, 1.5]``;
- UMX ``input_mean`` = minus a plausible magnitude mean, ``input_scale`` near 1, ``output_scale`` / ``output_mean``
  near 1 (their init is ones).
"""

from __future__ import annotations

import zlib

import numpy as np

from .configs import DemucsConfig, UMXConfig
from .params import parameter_inventory

__all__ = ["random_audio", "random_weights"]


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _transposed_prefixes(config: UMXConfig | DemucsConfig) -> set[str]:
    """Names (without ``.weight``) of the transposed convolutions: the last parametrised slot of each decoder."""
    if not isinstance(config, DemucsConfig):
        return set()
    slot = 2 if config.rewrite else 0
    return {f"decoder.{j}.{slot}" for j in range(config.depth)}


def _bound(name: str, shapes: dict[str, tuple[int, ...]], transposed: set[str]) -> float:
    """PyTorch's default init bound ``1 / sqrt(fan_in)`` for a weight or bias (a bias uses its weight's)."""
    prefix, leaf = name.rsplit(".", 1)
    if leaf.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
        return 1.0 / np.sqrt(shapes[name][0] // 4)  # nn.LSTM: every tensor in +-1/sqrt(hidden_size)
    weight = shapes[f"{prefix}.weight"]
    if prefix in transposed:
        fan_in = weight[1] * weight[2]  # ConvTranspose1d weight (in, out, k): fan_in is out * k
    else:
        fan_in = int(np.prod(weight[1:]))
    return 1.0 / np.sqrt(fan_in)


def random_weights(config: UMXConfig | DemucsConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random float32 weights, one per inventory entry, in inventory order.

    Args:
        config: the model config whose inventory to fill.
        seed: any non-negative integer.

    Returns:
        ``{upstream state-dict name: float32 array of the inventory shape}``.
    """
    out: dict[str, np.ndarray] = {}
    shapes = dict(parameter_inventory(config))
    transposed = _transposed_prefixes(config)
    for name, shape in shapes.items():
        rng = _rng(seed, name)
        leaf = name.rsplit(".", 1)[-1]
        is_bn = name.startswith("bn")
        if name == "input_mean":
            value = -rng.uniform(0.0, 1.0, shape)
        elif name in ("input_scale", "output_scale", "output_mean"):
            value = rng.uniform(0.75, 1.25, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif is_bn and leaf == "weight":
            value = rng.uniform(0.8, 1.2, shape)
        elif is_bn and leaf == "bias":
            value = rng.normal(0.0, 0.1, shape)
        else:
            bound = _bound(name, shapes, transposed)
            value = rng.uniform(-bound, bound, shape)
        out[name] = value.astype(np.float32)
    return out


def random_audio(nb_timesteps: int, nb_channels: int = 2, seed: int = 0, nb_samples: int | None = None) -> np.ndarray:
    """Seeded noise with a music-like level (std 0.1), float64.

    Shape ``(nb_channels, nb_timesteps)``, or ``(nb_samples, nb_channels, nb_timesteps)`` when ``nb_samples`` is
    given.
    """
    rng = np.random.default_rng([seed, 0xA0D10])
    shape = (nb_channels, nb_timesteps) if nb_samples is None else (nb_samples, nb_channels, nb_timesteps)
    return 0.1 * rng.standard_normal(shape)
