"""The hybrid U-Net layers of HTDemucs (demucs 4.x ``HEncLayer`` / ``HDecLayer``, the ``DConv`` residual branch and
its ``LayerScale``) as PyTorch modules with upstream's state-dict names.

The spec is :mod:`core_spec.reference.htdemucs_layers`: its docstring draws both layers and the DConv, and its
:class:`~core_spec.reference.htdemucs_layers.HLayer` (built by ``encoder_layers`` / ``decoder_layers`` from a
config, as upstream's constructor builds the lists) describes each layer; a module here is built from that
description. Frequency layers use ``Conv2d`` / ``ConvTranspose2d`` with kernels ``(K, 1)`` on ``(B, C, F, T)``,
time layers ``Conv1d`` / ``ConvTranspose1d`` on ``(B, C, L)``; norms are ``GroupNorm(norm_groups)`` from
``norm_starts`` on, ``nn.Identity`` before; GELU is exact (erf).

Module order within a layer is upstream's, so that ``state_dict()`` lists the names in upstream's order:
encoder ``conv, norm1, rewrite, norm2, dconv``; decoder ``conv_tr, norm2, rewrite, norm1, dconv``; DConv
``layers.{d}.{0..6}`` = conv, norm, GELU, 1x1 conv, norm, GLU, LayerScale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_spec.reference.htdemucs_layers import DCONV_KERNEL, HLayer

__all__ = ["DConv", "HDecLayer", "HEncLayer", "LayerScale"]


class LayerScale(nn.Module):
    """``LayerScale`` on channels-first ``(B, C, T)``: ``scale[:, None] * x``; the state dict holds ``scale``
    ``(C,)``, initialised to ``init``."""

    def __init__(self, channels: int, init: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T)`` -> ``(B, C, T)``."""
        return self.scale[:, None] * x


class DConv(nn.Module):
    """The DConv residual branch: ``|depth|`` residual layers ``x = x + layers[d](x)`` on ``(B, C, T)``, each

    ``Conv1d(C, H, 3, dilation 2**d) -> GroupNorm(1, H) -> GELU -> Conv1d(H, 2C, 1) -> GroupNorm(1, 2C) -> GLU
    -> LayerScale(C)`` with ``H = int(C / compress)``; no dilation when ``depth < 0``.
    """

    def __init__(self, channels: int, compress: float = 4, depth: int = 2, init: float = 1e-4) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList()
        for d in range(abs(depth)):
            dilation = 2**d if depth > 0 else 1
            padding = dilation * (DCONV_KERNEL // 2)
            self.layers.append(
                nn.Sequential(
                    nn.Conv1d(channels, hidden, DCONV_KERNEL, dilation=dilation, padding=padding),
                    nn.GroupNorm(1, hidden),
                    nn.GELU(),
                    nn.Conv1d(hidden, 2 * channels, 1),
                    nn.GroupNorm(1, 2 * channels),
                    nn.GLU(1),
                    LayerScale(channels, init),
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T)`` -> ``(B, C, T)``."""
        for layer in self.layers:
            x = x + layer(x)
        return x


def _norm(layer: HLayer, channels: int) -> nn.Module:
    return nn.GroupNorm(layer.norm_groups, channels) if layer.norm else nn.Identity()


def _dconv(layer: HLayer) -> DConv:
    for option in ("dconv_lstm", "dconv_attn"):
        if getattr(layer, option):
            raise ValueError(f"{layer.prefix}: {option} (DConv BLSTM / LocalState) is not implemented for HTDemucs")
    return DConv(layer.dconv_channels, layer.dconv_comp, layer.dconv_depth, layer.dconv_init)


def _dconv_rows(dconv: DConv, y: Tensor, freq: bool) -> Tensor:
    """DConv on ``(B, C, T)``, or per frequency row on ``(B, C, F, T)`` (batch ``B F``: GroupNorm per row)."""
    if not freq:
        return dconv(y)
    B, C, Fr, T = y.shape
    rows = y.permute(0, 2, 1, 3).reshape(B * Fr, C, T)
    return dconv(rows).view(B, Fr, C, T).permute(0, 2, 1, 3)


class HEncLayer(nn.Module):
    """One encoder layer (``HEncLayer``), built from its :class:`HLayer` description::

        time only: zero-pad L on the right to a multiple of the stride
        y = conv(x)                 [empty: return y]
        y = gelu(norm1(y + inject))
        y = dconv(y)                (frequency: per row)
        z = glu(norm2(rewrite(y)))

    ``x``: frequency ``(B, Cin, F, T)`` -> ``(B, Cout, F / S, T)``; time ``(B, Cin, L)`` -> ``(B, Cout, ceil(L / S))``.
    """

    def __init__(self, layer: HLayer) -> None:
        super().__init__()
        if layer.is_decoder:
            raise ValueError(f"HEncLayer: {layer.prefix} describes a decoder layer")
        self.freq, self.empty, self.stride = layer.freq, layer.empty, layer.stride
        conv = nn.Conv2d if layer.freq else nn.Conv1d
        if layer.freq:
            self.conv = conv(layer.chin, layer.chout, (layer.kernel_size, 1), (layer.stride, 1), (layer.pad, 0))
        else:
            self.conv = conv(layer.chin, layer.chout, layer.kernel_size, layer.stride, layer.pad)
        if layer.empty:
            return
        self.norm1 = _norm(layer, layer.chout)
        self.rewrite: nn.Module | None = None
        if layer.rewrite:
            k = 1 + 2 * layer.context
            self.rewrite = conv(layer.chout, 2 * layer.chout, k, 1, layer.context)
            self.norm2 = _norm(layer, 2 * layer.chout)
        self.dconv = _dconv(layer) if layer.dconv else None

    def forward(self, x: Tensor, inject: Tensor | None = None) -> Tensor:
        """Encode ``x``; ``inject`` ``(B, Cout, T')``: the time branch's ``empty`` layer output, added after the
        conv."""
        if not self.freq and x.dim() == 4:
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        if not self.freq and x.shape[-1] % self.stride:
            x = F.pad(x, (0, self.stride - x.shape[-1] % self.stride))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            if inject.shape[-1] != y.shape[-1]:
                raise ValueError(f"HEncLayer: inject {tuple(inject.shape)} does not match {tuple(y.shape)}")
            y = y + (inject[:, :, None] if inject.dim() == 3 and y.dim() == 4 else inject)
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_rows(self.dconv, y, self.freq)
        if self.rewrite is None:
            return y
        return F.glu(self.norm2(self.rewrite(y)), dim=1)


class HDecLayer(nn.Module):
    """One decoder layer (``HDecLayer``), built from its :class:`HLayer` description::

        y = x + skip                [empty: y = x, no skip]
        y = glu(norm1(rewrite(y)))
        y = dconv(y)                (frequency: per row)                -> pre
        z = norm2(conv_tr(y))
        crop: frequency z[:, :, pad:-pad]; time z[..., pad:pad + length]
        z = gelu(z)                 (not on the outermost, ``last``)

    ``forward(x, skip, length)`` returns ``(z, pre)``.
    """

    def __init__(self, layer: HLayer) -> None:
        super().__init__()
        if not layer.is_decoder:
            raise ValueError(f"HDecLayer: {layer.prefix} describes an encoder layer")
        self.freq, self.empty, self.last = layer.freq, layer.empty, layer.last
        self.pad, self.chin = layer.pad, layer.chin
        if layer.freq:
            self.conv_tr = nn.ConvTranspose2d(layer.chin, layer.chout, (layer.kernel_size, 1), (layer.stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(layer.chin, layer.chout, layer.kernel_size, layer.stride)
        self.norm2 = _norm(layer, layer.chout)
        if layer.empty:
            return
        self.rewrite: nn.Module | None = None
        if layer.rewrite:
            conv = nn.Conv2d if layer.freq else nn.Conv1d
            self.rewrite = conv(layer.chin, 2 * layer.chin, 1 + 2 * layer.context, 1, layer.context)
            self.norm1 = _norm(layer, 2 * layer.chin)
        self.dconv = _dconv(layer) if layer.dconv else None

    def forward(self, x: Tensor, skip: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
        """Decode ``x`` (the shape of ``skip``; frequency ``(B, Cin, F, T)``, time ``(B, Cin, L)``).

        Returns:
            ``(z, pre)``: ``z`` frequency ``(B, Cout, F * S - 2 pad, T)``, time ``(B, Cout, length)``; ``pre`` the
            input of ``conv_tr``.
        """
        if self.freq and x.dim() == 3:
            x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
        if self.empty:
            if skip is not None:
                raise ValueError("HDecLayer: an empty layer takes no skip")
            y = x
        else:
            y = x + skip
            if self.rewrite is not None:
                y = F.glu(self.norm1(self.rewrite(y)), dim=1)
            if self.dconv is not None:
                y = _dconv_rows(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[:, :, self.pad : -self.pad, :]
        else:
            z = z[..., self.pad : self.pad + length]
            if z.shape[-1] != length:
                raise ValueError(f"HDecLayer: length {length} is longer than the {z.shape[-1]} steps available")
        if not self.last:
            z = F.gelu(z)
        return z, y
