"""The position and frequency embeddings of HTDemucs (demucs 4.x) and its 1x1 channel resamplers, in the NNabla port.

The spec is :mod:`core_spec.reference.htdemucs_embed` (its docstring has the formulas):

- :func:`create_sin_embedding`: the time tokens' 1-D embedding ``(length, 1, dim)``, cos then sin (not interleaved),
  exponent divisor ``dim/2 - 1``;
- :func:`create_2d_sin_embedding`: the frequency tokens' 2-D embedding ``(1, d_model, height, width)``, interleaved
  sin / cos of the width position in the first half of the channels, of the height position in the second;
- :func:`scaled_embedding` / :class:`ScaledEmbedding`: ``freq_emb``, rows ``0 .. nb_freqs-1`` of the stored table
  times ``scale``;
- :func:`channel_conv1x1`: ``channel_upsampler`` / ``channel_downsampler`` (and ``_t``), a 1x1 ``Conv1d`` as
  ``F.convolution`` with upstream's ``(C_out, C_in, 1)`` weight.

The two sinusoidal embeddings are constants of the graph, computed in NumPy in float32 the way upstream computes them
by default (each operation rounded to float32 where torch rounds; the spec's ``dtype=np.float32`` path): upstream
computes them in float32 even in a float64 model, and NNabla runs in float32 anyway.

Parameters (upstream's names and layouts, ``.`` written ``/``): ``freq_emb/embedding/weight (num_embeddings, dim)``,
``channel_upsampler/weight (C_out, C_in, 1)``, ``channel_upsampler/bias (C_out,)``.
"""

from __future__ import annotations

import nnabla as nn
import nnabla.functions as F
import numpy as np
from nnabla.initializer import NormalInitializer, UniformInitializer

from core_spec.reference import htdemucs_embed as ref

__all__ = [
    "ScaledEmbedding",
    "channel_conv1x1",
    "create_2d_sin_embedding",
    "create_sin_embedding",
    "scaled_embedding",
    "torch_uniform",
]


def _parameter(name: str, shape: tuple[int, ...], init: object) -> nn.Variable:
    var = nn.parameter.get_parameter_or_create(name, shape, init, True)
    if tuple(var.shape) != tuple(shape):
        raise ValueError(f"parameter {name!r}: expected shape {tuple(shape)}, have {tuple(var.shape)}")
    return var


def create_sin_embedding(length: int, dim: int, shift: int = 0, max_period: float = 10000) -> np.ndarray:
    """The 1-D sinusoidal embedding of the time tokens, float32 ``(length, 1, dim)``: channel ``i < dim/2`` is
    ``cos(p / max_period ** (i / (dim/2 - 1)))``, channel ``dim/2 + i`` the ``sin`` of the same phase,
    ``p = shift + position``."""
    return ref.create_sin_embedding(length, dim, shift, max_period, dtype=np.float32)


def create_2d_sin_embedding(d_model: int, height: int, width: int, max_period: float = 10000) -> np.ndarray:
    """The 2-D sinusoidal embedding of the frequency tokens, float32 ``(1, d_model, height, width)``."""
    return ref.create_2d_sin_embedding(d_model, height, width, max_period, dtype=np.float32)


def scaled_embedding(weight: nn.Variable, scale: float, nb_freqs: int) -> nn.Variable:
    """``ScaledEmbedding``'s forward on the indices ``0 .. nb_freqs-1``: ``weight[:nb_freqs] * scale``,
    ``(nb_freqs, dim)``."""
    rows, dim = weight.shape
    if not 0 < nb_freqs <= rows:
        raise ValueError(f"scaled_embedding: {nb_freqs} rows asked of a table of {rows}")
    table = weight if nb_freqs == rows else F.slice(weight, (0, 0), (nb_freqs, dim))
    return table * float(scale)


def channel_conv1x1(x: nn.Variable, chout: int, name: str) -> nn.Variable:
    """``torch.nn.Conv1d(chin, chout, 1)`` named ``name`` on ``x (B, chin, L)`` -> ``(B, chout, L)``; parameters
    ``name/weight (chout, chin, 1)`` and ``name/bias``."""
    chin = x.shape[1]
    with nn.parameter_scope(name):
        w = _parameter("weight", (chout, chin, 1), torch_uniform(chin))
        b = _parameter("bias", (chout,), torch_uniform(chin))
    return F.convolution(x, w, b)


class ScaledEmbedding:
    """``ScaledEmbedding`` of demucs 4.x (``freq_emb``): parameter ``<name>/embedding/weight (num_embeddings, dim)``,
    the stored table (upstream keeps it divided by ``scale``; the forward multiplies it back)."""

    def __init__(self, num_embeddings: int, dim: int, scale: float = 10.0, name: str = "freq_emb"):
        self.num_embeddings = num_embeddings
        self.dim = dim
        self.scale = float(scale)
        self.name = name

    def __call__(self, nb_freqs: int) -> nn.Variable:
        """The rows ``0 .. nb_freqs - 1`` times ``scale``: ``(nb_freqs, dim)``."""
        with nn.parameter_scope(f"{self.name}/embedding"):
            init = NormalInitializer(1.0 / self.scale)  # upstream: N(0, 1) (smoothed), then / scale
            weight = _parameter("weight", (self.num_embeddings, self.dim), init)
        return scaled_embedding(weight, self.scale, nb_freqs)


def torch_uniform(fan_in: int) -> UniformInitializer:
    """PyTorch's default init of a Linear / Conv weight and bias (kaiming uniform, ``a = sqrt 5``): uniform in
    ``+-1 / sqrt(fan_in)``."""
    bound = 1.0 / np.sqrt(fan_in)
    return UniformInitializer((-bound, bound))
