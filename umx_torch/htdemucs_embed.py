"""The position and frequency embeddings of HTDemucs (demucs 4.x) and the 1x1 channel resamplers, in PyTorch.

The spec is :mod:`core_spec.reference.htdemucs_embed`; its docstring describes each embedding. Here:

- :func:`create_sin_embedding` ``(length, 1, dim)`` and :func:`create_2d_sin_embedding` ``(1, d_model, height,
  width)`` are computed with the same torch operations as upstream, in ``dtype`` (upstream: torch's default dtype,
  float32 unless set; the model passes its own dtype, so a float64 model gets the exact formula in float64, as
  upstream run under ``torch.set_default_dtype(torch.float64)``);
- :func:`scaled_embedding` is ``ScaledEmbedding``'s forward on ``0 .. nb_freqs-1``; :class:`ScaledEmbedding`
  holds the stored table as ``embedding.weight`` (upstream's name) and its initialisation;
- :func:`channel_conv1x1` is the 1x1 ``Conv1d`` of the channel up/down samplers (the model holds them as
  ``nn.Conv1d`` modules under upstream's names and calls them on ``(B, C, F*T)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ScaledEmbedding", "channel_conv1x1", "create_2d_sin_embedding", "create_sin_embedding", "scaled_embedding"]


def create_sin_embedding(
    length: int,
    dim: int,
    shift: int = 0,
    max_period: float = 10000,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The 1-D sinusoidal embedding of the time tokens, ``(length, 1, dim)``: channels ``[cos(phase), sin(phase)]``
    with ``phase = (shift + p) / max_period ** (i / (dim/2 - 1))``, ``i < dim/2``.

    Raises:
        ValueError: ``dim`` odd or less than 4.
    """
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"create_sin_embedding: dim must be even and >= 4, got {dim}")
    half = dim // 2
    pos = (shift + torch.arange(length, device=device, dtype=dtype)).view(-1, 1, 1)
    adim = torch.arange(half, device=device, dtype=dtype).view(1, 1, -1)
    phase = pos / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def create_2d_sin_embedding(
    d_model: int,
    height: int,
    width: int,
    max_period: float = 10000,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The 2-D sinusoidal embedding of the frequency tokens, ``(1, d_model, height, width)``: with
    ``d = d_model / 2``, channels ``[0:d:2]`` / ``[1:d:2]`` are ``sin`` / ``cos`` of the width (time) position times
    ``div = exp(-k ln(max_period) / d)``, ``[d::2]`` / ``[d+1::2]`` the same of the height (frequency) position.

    Raises:
        ValueError: ``d_model`` not a multiple of 4.
    """
    if d_model % 4 != 0:
        raise ValueError(f"create_2d_sin_embedding: d_model must be a multiple of 4, got {d_model}")
    d = d_model // 2
    div = torch.exp(torch.arange(0.0, d, 2, dtype=dtype, device=device) * -(math.log(max_period) / d))
    pos_w = torch.arange(0.0, width, dtype=dtype, device=device).unsqueeze(1)  # (width, 1)
    pos_h = torch.arange(0.0, height, dtype=dtype, device=device).unsqueeze(1)  # (height, 1)
    pe = torch.zeros(d_model, height, width, dtype=dtype, device=device)
    pe[0:d:2] = torch.sin(pos_w * div).t()[:, None, :]
    pe[1:d:2] = torch.cos(pos_w * div).t()[:, None, :]
    pe[d::2] = torch.sin(pos_h * div).t()[:, :, None]
    pe[d + 1 :: 2] = torch.cos(pos_h * div).t()[:, :, None]
    return pe[None]


def scaled_embedding(weight: Tensor, scale: float, nb_freqs: int) -> Tensor:
    """``ScaledEmbedding``'s forward on the frequency indices ``0 .. nb_freqs-1``: ``weight[:nb_freqs] * scale``.

    Args:
        weight: the stored table ``(num_embeddings, dim)``.

    Returns:
        ``(nb_freqs, dim)``.

    Raises:
        ValueError: ``nb_freqs`` out of ``[0, num_embeddings]``.
    """
    if weight.dim() != 2 or not 0 <= nb_freqs <= weight.shape[0]:
        raise ValueError(f"scaled_embedding: need a 2-D table with >= {nb_freqs} rows, got {tuple(weight.shape)}")
    return weight[:nb_freqs] * scale


def channel_conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1 convolution over the channel axis 1 of ``x (B, C_in, ...)`` (any trailing axes, unflattened).

    Args:
        weight: ``(C_out, C_in, 1)`` (the checkpoint's) or ``(C_out, C_in)``.

    Returns:
        ``(B, C_out, ...)``.
    """
    if weight.dim() == 2:
        weight = weight[:, :, None]
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return F.conv1d(flat, weight, bias).reshape(x.shape[0], weight.shape[0], *x.shape[2:])


class ScaledEmbedding(nn.Module):
    """The frequency embedding (``demucs.hdemucs.ScaledEmbedding``): an ``nn.Embedding`` table stored divided by
    ``scale`` and multiplied back in the forward (a larger learning rate for it); ``smooth`` initialises the rows as
    a normalised cumulative sum of Gaussian rows (continuous over frequency). The state dict holds
    ``embedding.weight``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, scale: float = 10.0, smooth: bool = False) -> None:
        super().__init__()
        self.scale = scale
        if torch.empty(()).is_meta:  # built to receive weights (a meta device scope): nothing to initialise
            # and no reset_parameters: normal_ on the meta device imports torch._dynamo and sympy (0.5 s, 70 MB)
            self.embedding = nn.Embedding(
                num_embeddings, embedding_dim, _weight=torch.empty(num_embeddings, embedding_dim)
            )
            return
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            weight = self.embedding.weight
            if smooth:
                steps = torch.arange(1, num_embeddings + 1, dtype=weight.dtype, device=weight.device)
                weight.copy_(torch.cumsum(weight, dim=0) / steps.sqrt()[:, None])
            weight.div_(scale)

    def forward(self, indices: Tensor) -> Tensor:
        """``indices`` (any shape, int64) -> ``indices.shape + (embedding_dim,)``, the rows times ``scale``."""
        return self.embedding(indices) * self.scale
