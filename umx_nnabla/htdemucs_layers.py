"""The hybrid U-Net layers of HTDemucs (demucs 4.x ``HEncLayer`` / ``HDecLayer`` and the ``DConv`` residual branch
with its ``LayerScale``) as NNabla graphs, eval and training mode alike (no dropout, no batch statistics).

The spec is :mod:`core_spec.reference.htdemucs_layers` (its docstring has the layer recipes); each layer here is
built from the spec's static description (:class:`core_spec.reference.htdemucs_layers.HLayer`, from
``encoder_layers`` / ``decoder_layers``). Layouts are upstream's, **channel-first**: a frequency layer takes
``(B, C, F, T)``, a time layer ``(B, C, L)``; a frequency layer's DConv, which upstream runs per frequency row, runs
on ``(B F, C, T)``.

Each layer builds its graph under the parameter scope of its upstream module path (``encoder/0``) with the
parameters under upstream's names and layouts (``conv/weight``, ``norm1/bias``, ``dconv/layers/0/6/scale``):

==============================================  ==================================================================
upstream                                        here
==============================================  ==================================================================
``Conv2d(chin, chout, (K, 1), (S, 1), (K//4, 0))``  ``F.convolution``, ``W (chout, chin, K, 1)``
``Conv1d(chin, chout, K, S, K//4)``              ``F.convolution``, ``W (chout, chin, K)``
``ConvTranspose2d(chin, chout, (K, 1), (S, 1))``  ``F.deconvolution``, ``W (chin, chout, K, 1)`` (the same layout)
``ConvTranspose1d(chin, chout, K, S)``           ``F.deconvolution``, ``W (chin, chout, K)``
``GroupNorm(groups, C)`` / ``Identity``          :func:`group_norm` (two-pass statistics, eps 1e-5) / nothing
``DConv.layers[d]`` (``nn.Sequential``, 7 slots)  :class:`DConv`: conv, norm, GELU, conv, norm, GLU,
                                                 :class:`LayerScale` under the slots ``0 .. 6``
==============================================  ==================================================================

GELU is exact (:func:`umx_nnabla.layers.gelu`, from ``F.erf``): NNabla's ``F.gelu`` is the tanh approximation
(``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; measured: 4.7e-4 from the erf GELU, 4.8e-7 from the tanh
formula). The norms' statistics are :func:`umx_nnabla.layers.standardise`'s (tree sums: NNabla's own GroupNorm loses
40 dB on the time branch's 86 000-step rows), the per-channel affines depthwise 1x1 convolutions.
"""

from __future__ import annotations

import itertools
import math

import nnabla as nn
import nnabla.functions as F
from nnabla.initializer import ConstantInitializer

from core_spec.reference.htdemucs_layers import DCONV_KERNEL, HLayer

from .htdemucs_embed import torch_uniform
from .layers import channel_affine, gelu, parameter, product, reshape, standardise

__all__ = ["DConv", "HDecLayer", "HEncLayer", "LayerScale", "gelu", "group_norm"]


def _glu(x: nn.Variable) -> nn.Variable:
    """:func:`umx_nnabla.layers.glu` over the channel axis 1 (first half times the sigmoid of the second)."""
    half = x.shape[1] // 2
    rest = tuple(x.shape[2:])
    a = F.slice(x, (0,) * x.ndim, (x.shape[0], half) + rest)
    b = F.slice(x, (0, half) + (0,) * len(rest), (x.shape[0], 2 * half) + rest)
    return product(a, F.sigmoid(b))


def _conv(
    x: nn.Variable,
    chout: int,
    kernel: tuple[int, ...],
    name: str,
    stride: tuple[int, ...] | None = None,
    pad: tuple[int, ...] | None = None,
    dilation: tuple[int, ...] | None = None,
) -> nn.Variable:
    """``torch.nn.Conv{1,2}d(x.shape[1], chout, kernel, stride, pad, dilation)`` named ``name``: ``name/weight
    (chout, chin, *kernel)``.

    A kernel of several taps runs as one 1x1 convolution per tap (the strided slice of the padded input that tap
    reads), the taps summed pairwise, the bias added with the last. NNabla's CPU convolution accumulates over
    channels x taps in one float32 pass: a kernel of 3 over 96 channels came out at 130.3 dB against float64 where
    torch's is at 137.5 (a kernel of 1: 134.9 against 135.1), and the time branch's encoders lost 7-10 dB a layer
    more than torch's at the released shapes."""
    n = len(kernel)
    stride, pad, dilation = stride or (1,) * n, pad or (0,) * n, dilation or (1,) * n
    chin = x.shape[1]
    fan_in = chin * math.prod(kernel)
    with nn.parameter_scope(name):
        w = parameter("weight", (chout, chin, *kernel), torch_uniform(fan_in))
        b = parameter("bias", (chout,), torch_uniform(fan_in))
    if math.prod(kernel) == 1:
        return F.convolution(x, w, b, pad=pad, stride=stride, dilation=dilation)
    if any(pad):
        x = F.pad(x, tuple(p for p in pad for _ in (0, 1)))
    spatial = x.shape[2:]
    out = [(size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(spatial, kernel, stride, dilation, strict=True)]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    parts = []
    for i, tap in enumerate(taps):
        start = [t * d for t, d in zip(tap, dilation, strict=True)]
        stop = [a + (o - 1) * s + 1 for a, o, s in zip(start, out, stride, strict=True)]
        rows = F.slice(x, (0, 0, *start), (x.shape[0], chin, *stop), (1, 1, *stride))
        w_tap = F.slice(w, (0, 0, *tap), (chout, chin, *(t + 1 for t in tap)))
        parts.append(F.convolution(rows, w_tap, b if i == len(taps) - 1 else None))
    while len(parts) > 1:  # pairwise: every output a sum of log2(taps) levels
        parts = [parts[j] + parts[j + 1] if j + 1 < len(parts) else parts[j] for j in range(0, len(parts), 2)]
    return parts[0]


def _conv_tr(x: nn.Variable, chout: int, kernel: tuple[int, ...], stride: tuple[int, ...], name: str) -> nn.Variable:
    """``torch.nn.ConvTranspose{1,2}d(x.shape[1], chout, kernel, stride)`` named ``name``:
    ``name/weight (chin, chout, *kernel)``, output ``(L - 1) S + K`` per strided axis."""
    chin = x.shape[1]
    fan_in = chout * math.prod(kernel)  # torch computes a transposed conv's fan-in from weight.size(1)
    with nn.parameter_scope(name):
        w = parameter("weight", (chin, chout, *kernel), torch_uniform(fan_in))
        b = parameter("bias", (chout,), torch_uniform(fan_in))
    return F.deconvolution(x, w, b, stride=stride)


class LayerScale:
    """``LayerScale`` (channel-last off, as DConv uses it): ``scale[:, None] * x`` for ``x (B, C, T)``; parameter
    ``<name>/scale (C,)``, initialised to ``init``."""

    def __init__(self, channels: int, init: float, name: str):
        self.channels = channels
        self.init = float(init)
        self.name = name

    def __call__(self, x: nn.Variable) -> nn.Variable:
        with nn.parameter_scope(self.name):
            scale = parameter("scale", (self.channels,), ConstantInitializer(self.init))
        return channel_affine(x, scale)


class DConv:
    """The DConv residual branch of ``layer`` on ``x (B, C, T)`` -> ``(B, C, T)``; for each residual layer ``d``
    (dilation ``2**d``, or 1 when ``dconv_depth < 0``), parameters under ``dconv/layers/<d>/<slot>``::

        x = x + scale * glu(gn(conv1x1(gelu(gn(conv3(x, dilation))))), channels)      gn = GroupNorm(1)
    """

    def __init__(self, layer: HLayer):
        for option in ("dconv_lstm", "dconv_attn"):
            if getattr(layer, option):
                raise ValueError(f"{layer.prefix}: {option} (DConv BLSTM / LocalState) is not implemented")
        self.layer = layer

    def __call__(self, x: nn.Variable) -> nn.Variable:
        layer = self.layer
        channels, hidden = layer.dconv_channels, layer.dconv_hidden
        if x.ndim != 3 or x.shape[1] != channels:
            raise ValueError(f"dconv of {layer.prefix}: expected (B, {channels}, T), got {x.shape}")
        for d in range(abs(layer.dconv_depth)):
            dilation = 2**d if layer.dconv_depth > 0 else 1
            with nn.parameter_scope(f"dconv/layers/{d}"):
                pad = dilation * (DCONV_KERNEL // 2)
                y = _conv(x, hidden, (DCONV_KERNEL,), "0", pad=(pad,), dilation=(dilation,))
                y = gelu(group_norm(y, 1, "1"))
                y = _glu(group_norm(_conv(y, 2 * channels, (1,), "3"), 1, "4"))
                x = x + LayerScale(channels, layer.dconv_init, "6")(y)
        return x


def _dconv_rows(dconv: DConv, y: nn.Variable, freq: bool) -> nn.Variable:
    """DConv on ``(B, C, T)``, or per frequency row on ``(B, C, F, T)`` (batch ``B F``: statistics per row)."""
    if not freq:
        return dconv(y)
    b, c, f, t = y.shape
    rows = reshape(F.transpose(y, (0, 2, 1, 3)), (b * f, c, t))
    return F.transpose(reshape(dconv(rows), (b, f, c, t)), (0, 2, 1, 3))


def _norm(x: nn.Variable, layer: HLayer, name: str) -> nn.Variable:
    """GroupNorm(``norm_groups``) named ``name`` when the layer has norms, else the identity."""
    return group_norm(x, layer.norm_groups, name) if layer.norm else x


def _rewrite(x: nn.Variable, layer: HLayer, channels: int) -> nn.Variable:
    """The rewrite convolution to ``channels``, ``"same"`` size: kernel ``1 + 2 context`` (``(k, k)`` in
    frequency)."""
    k, c = 1 + 2 * layer.context, layer.context
    if layer.freq:
        return _conv(x, channels, (k, k), "rewrite", pad=(c, c))
    return _conv(x, channels, (k,), "rewrite", pad=(c,))


def _slice_last(x: nn.Variable, start: int, stop: int) -> nn.Variable:
    return F.slice(x, (0,) * (x.ndim - 1) + (start,), tuple(x.shape[:-1]) + (stop,))


class HEncLayer:
    """One encoder layer (``encoder.<i>`` / ``tencoder.<i>``) of ``layer``, built under the scope of its prefix.

    ``__call__(x, inject=None)``: frequency ``(B, Cin, F, T)`` -> ``(B, Cout, F', T)``; time ``(B, Cin, L)`` ->
    ``(B, Cout, ceil(L / S))`` (zero-padded on the right to a multiple of the stride first).
    """

    def __init__(self, layer: HLayer):
        if layer.is_decoder:
            raise ValueError(f"HEncLayer: {layer.prefix} is a decoder layer")
        self.layer = layer
        self.dconv = DConv(layer) if layer.dconv and not layer.empty else None

    @property
    def scope(self) -> str:
        return self.layer.prefix.rstrip(".").replace(".", "/")

    def __call__(self, x: nn.Variable, inject: nn.Variable | None = None) -> nn.Variable:
        layer = self.layer
        if not layer.freq and x.ndim == 4:
            x = reshape(x, (x.shape[0], -1, x.shape[-1]))
        if x.ndim != (4 if layer.freq else 3) or x.shape[1] != layer.chin:
            raise ValueError(f"HEncLayer {layer.prefix}: expected (B, {layer.chin}, ...), got {x.shape}")
        with nn.parameter_scope(self.scope):
            if layer.freq:
                k, s, p = (layer.kernel_size, 1), (layer.stride, 1), (layer.pad, 0)
                y = _conv(x, layer.chout, k, "conv", stride=s, pad=p)
            else:
                remainder = x.shape[-1] % layer.stride
                if remainder:
                    x = F.pad(x, (0, layer.stride - remainder))
                y = _conv(x, layer.chout, (layer.kernel_size,), "conv", stride=(layer.stride,), pad=(layer.pad,))
            if layer.empty:
                return y
            if inject is not None:
                if inject.shape[-1] != y.shape[-1]:
                    raise ValueError(
                        f"HEncLayer {layer.prefix}: inject has {inject.shape[-1]} steps, not {y.shape[-1]}"
                    )
                if inject.ndim == 3 and y.ndim == 4:
                    inject = reshape(inject, (inject.shape[0], inject.shape[1], 1, inject.shape[2]))
                y = y + inject
            y = gelu(_norm(y, layer, "norm1"))
            if self.dconv is not None:
                y = _dconv_rows(self.dconv, y, layer.freq)
            if not layer.rewrite:
                return y
            return _glu(_norm(_rewrite(y, layer, 2 * layer.chout), layer, "norm2"))


class HDecLayer:
    """One decoder layer (``decoder.<j>`` / ``tdecoder.<j>``) of ``layer``, built under the scope of its prefix.

    ``__call__(x, skip, length)`` -> ``(z, pre)``: frequency ``(B, Cin, F, T)`` -> ``(B, Cout, F S, T)`` (``pad``
    cropped at each end); time ``(B, Cin, L)`` -> ``(B, Cout, length)``; ``pre`` is the transposed convolution's
    input.
    """

    def __init__(self, layer: HLayer):
        if not layer.is_decoder:
            raise ValueError(f"HDecLayer: {layer.prefix} is an encoder layer")
        self.layer = layer
        self.dconv = DConv(layer) if layer.dconv and not layer.empty else None

    @property
    def scope(self) -> str:
        return self.layer.prefix.rstrip(".").replace(".", "/")

    def __call__(self, x: nn.Variable, skip: nn.Variable | None, length: int) -> tuple[nn.Variable, nn.Variable]:
        layer = self.layer
        if layer.freq and x.ndim == 3:
            x = reshape(x, (x.shape[0], layer.chin, -1, x.shape[-1]))
        if x.ndim != (4 if layer.freq else 3) or x.shape[1] != layer.chin:
            raise ValueError(f"HDecLayer {layer.prefix}: expected (B, {layer.chin}, ...), got {x.shape}")
        with nn.parameter_scope(self.scope):
            if layer.empty:
                if skip is not None:
                    raise ValueError(f"HDecLayer {layer.prefix}: an empty decoder layer takes no skip")
                y = x
            else:
                if skip is None or tuple(skip.shape) != tuple(x.shape):
                    raise ValueError(
                        f"HDecLayer {layer.prefix}: skip {None if skip is None else skip.shape} != {x.shape}"
                    )
                y = x + skip
                if layer.rewrite:
                    y = _glu(_norm(_rewrite(y, layer, 2 * layer.chin), layer, "norm1"))
                if self.dconv is not None:
                    y = _dconv_rows(self.dconv, y, layer.freq)
            if layer.freq:
                z = _conv_tr(y, layer.chout, (layer.kernel_size, 1), (layer.stride, 1), "conv_tr")
                z = _norm(z, layer, "norm2")
                if layer.pad:
                    b, c, f, t = z.shape
                    z = F.slice(z, (0, 0, layer.pad, 0), (b, c, f - layer.pad, t))
            else:
                z = _norm(_conv_tr(y, layer.chout, (layer.kernel_size,), (layer.stride,), "conv_tr"), layer, "norm2")
                if layer.pad + length > z.shape[-1]:
                    raise ValueError(f"HDecLayer {layer.prefix}: length {length} is longer than the steps available")
                z = _slice_last(z, layer.pad, layer.pad + length)
        if not layer.last:
            z = gelu(z)
        return z, y


def group_norm(x: nn.Variable, groups: int, name: str) -> nn.Variable:
    """``torch.nn.GroupNorm(groups, C)`` named ``name`` on ``x (B, C, ...)``: statistics per item and group of
    ``C / groups`` contiguous channels over every other axis, biased variance, eps 1e-5 (:func:`standardise`);
    per-channel affine. Parameters ``name/weight``, ``name/bias`` ``(C,)``."""
    channels = x.shape[1]
    with nn.parameter_scope(name):
        weight = parameter("weight", (channels,), ConstantInitializer(1.0))
        bias = parameter("bias", (channels,), ConstantInitializer(0.0))
    grouped = reshape(x, (x.shape[0], groups, -1))
    return channel_affine(reshape(standardise(grouped, (2,)), tuple(x.shape)), weight, bias)
