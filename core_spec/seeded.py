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
  near 1 (their init is ones);
- HTDemucs: GroupNorm / LayerNorm ``weight`` near 1 and ``bias`` near 0; the LayerScale ``scale`` vectors (of the
  DConv branches and the transformer's ``gamma_1`` / ``gamma_2``) uniform in ``[0.5, 1.5]``, far from their
  1e-3 / 1e-4 initialisation, which would hide a wrong residual branch; the frequency embedding table normal with
  std 1 / scale (the stored table is ``emb / scale``, so the forward sees unit-variance rows); attention and
  feed-forward weights at PyTorch's default bound.
"""

from __future__ import annotations

import zlib

import numpy as np

from .configs import DemucsConfig, HTDemucsConfig, UMXConfig
from .params import parameter_inventory

__all__ = ["random_audio", "random_weights"]


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _bound(name: str, shapes: dict[str, tuple[int, ...]]) -> float:
    """PyTorch's default init bound ``1 / sqrt(fan_in)`` for a weight or bias (a bias uses its weight's).

    ``fan_in`` is ``prod(weight.shape[1:])`` for every layer kind: ``(out, in, *kernel)`` of a convolution or
    linear layer, and also ``(in, out, *kernel)`` of a transposed convolution (PyTorch computes its fan from
    dimension 1 as well); ``nn.MultiheadAttention``'s ``in_proj_weight`` is ``(3 d, d)``.
    """
    prefix, leaf = name.rsplit(".", 1)
    if leaf.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
        return 1.0 / np.sqrt(shapes[name][0] // 4)  # nn.LSTM: every tensor in +-1/sqrt(hidden_size)
    weight = shapes[f"{prefix}.in_proj_weight"] if leaf.startswith("in_proj") else shapes[f"{prefix}.weight"]
    fan_in = int(np.prod(weight[1:]))
    return 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0  # PyTorch: a bias after zero inputs is initialised to 0


def _is_norm(name: str, config: UMXConfig | DemucsConfig | HTDemucsConfig) -> bool:
    """An HTDemucs GroupNorm / LayerNorm parameter (1-D ``weight`` / ``bias`` that is no conv or linear bias)."""
    if not isinstance(config, HTDemucsConfig):
        return False
    prefix = name.rsplit(".", 1)[0]
    last = prefix.rsplit(".", 1)[-1]
    if last.startswith("norm"):  # norm1/2/3, norm_in(_t), norm_out
        return True
    return ".dconv.layers." in prefix and last in ("1", "4")  # the DConv GroupNorms (Sequential slots 1 and 4)


def random_weights(config: UMXConfig | DemucsConfig | HTDemucsConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random float32 weights, one per inventory entry, in inventory order.

    Args:
        config: the model config whose inventory to fill.
        seed: any non-negative integer.

    Returns:
        ``{upstream state-dict name: float32 array of the inventory shape}``.
    """
    out: dict[str, np.ndarray] = {}
    shapes = dict(parameter_inventory(config))
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
        elif leaf == "scale":  # HTDemucs LayerScale
            value = rng.uniform(0.5, 1.5, shape)
        elif _is_norm(name, config):
            value = rng.uniform(0.8, 1.2, shape) if leaf == "weight" else rng.normal(0.0, 0.1, shape)
        elif name == "freq_emb.embedding.weight":
            value = rng.normal(0.0, 1.0 / config.emb_scale, shape)
        else:
            bound = _bound(name, shapes)
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
