"""The hybrid U-Net layers of HTDemucs (demucs 4.x ``HEncLayer`` / ``HDecLayer`` and the ``DConv`` residual branch
with its ``LayerScale``) as Flax NNX modules, eval mode.

The spec is :mod:`core_spec.reference.htdemucs_layers` (its docstring has the layer recipes); each layer here is
built from the spec's static description (:class:`core_spec.reference.htdemucs_layers.HLayer`, from
``encoder_layers`` / ``decoder_layers``). Layouts are **channels-last**: a frequency layer takes
``(B, F, T, C)``, a time layer ``(B, L, C)`` (the spec's ``(B, C, F, T)`` / ``(B, C, L)`` with the channels moved
last). Hence a frequency layer's DConv, which upstream runs per frequency row, is a reshape
``(B, F, T, C) -> (B F, T, C)`` here.

Upstream's modules and the Flax ones (the weight mapping is :mod:`umx_jax.weights`):

==============================================  ==================================================================
upstream                                        here
==============================================  ==================================================================
``Conv2d(chin, chout, (K, 1), (S, 1), (K//4, 0))``  ``nnx.Conv`` kernel ``(K, 1, chin, chout)`` on ``(B, F, T, C)``
``Conv1d(chin, chout, K, S, K//4)``              ``nnx.Conv`` kernel ``(K, chin, chout)`` on ``(B, L, C)``
``ConvTranspose2d(chin, chout, (K, 1), (S, 1))``  :class:`umx_jax.layers.ConvTranspose1d` along the frequency axis
``ConvTranspose1d(chin, chout, K, S)``           :class:`umx_jax.layers.ConvTranspose1d`
``GroupNorm(groups, C)`` / ``Identity``          ``nnx.GroupNorm`` (eps 1e-5, two-pass variance) / ``None``
``DConv.layers[d]`` (``nn.Sequential``, 7 slots)  ``nnx.Sequential`` of the same 7 slots: conv, norm, GELU, conv,
                                                 norm, GLU, :class:`LayerScale`
==============================================  ==================================================================

GELU is exact (``jax.nn.gelu(approximate=False)``; JAX's default is the tanh approximation).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from core_spec.reference.htdemucs_layers import DCONV_KERNEL, HLayer
from core_spec.reference.layers import NORM_EPS

from .layers import ConvTranspose1d, glu, torch_conv_init

__all__ = ["DConv", "HDecLayer", "HEncLayer", "LayerScale", "gelu", "group_norm"]


def _conv(
    chin: int,
    chout: int,
    kernel: tuple[int, ...],
    *,
    stride: tuple[int, ...] | None = None,
    padding: tuple[int, ...] | None = None,
    dilation: int = 1,
    dtype: Any,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """``torch.nn.Conv1d`` / ``Conv2d`` as an ``nnx.Conv`` on channels-last input, zero ``padding`` on both sides of
    each spatial axis; kernel ``(*kernel, chin, chout)``, PyTorch's init of the kernel, bias zeros."""
    padding = padding or (0,) * len(kernel)
    return nnx.Conv(
        chin,
        chout,
        kernel_size=kernel,
        strides=stride or (1,) * len(kernel),
        padding=[(p, p) for p in padding],
        kernel_dilation=dilation,
        dtype=dtype,
        param_dtype=dtype,
        kernel_init=torch_conv_init if len(kernel) == 1 else _torch_conv2d_init,
        rngs=rngs,
    )


def _torch_conv2d_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch's default init of a ``(kh, kw, in, out)`` kernel: uniform in ``+-1/sqrt(kh kw in)``."""
    bound = 1.0 / (shape[0] * shape[1] * shape[2]) ** 0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LayerScale(nnx.Module):
    """``LayerScale``: a per-channel scale, ``x * scale`` on channels-last ``x (..., C)``. State: ``scale (C,)``."""

    def __init__(self, channels: int, init: float = 0.0, *, dtype: Any):
        self.scale = nnx.Param(jnp.full((channels,), init, dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.scale[...]


class DConv(nnx.Module):
    """The DConv residual branch on ``(N, T, C)``: for each of its ``|depth|`` layers ``d`` (dilation ``2**d``, or
    1 when ``depth < 0``), ``x = x + layers[d](x)`` with ``layers[d]`` =
    ``conv3 (dilated) -> GroupNorm(1) -> GELU -> conv1x1 -> GroupNorm(1) -> GLU -> LayerScale``, ``C // compress``
    hidden channels. State: ``layers.<d>.layers.<slot>`` (upstream's ``layers.<d>.<slot>``, slots 0, 1, 3, 4, 6)."""

    def __init__(self, channels: int, depth: int, compress: float, init: float, *, dtype: Any, rngs: nnx.Rngs):
        hidden = int(channels / compress)
        norm = partial(group_norm, groups=1, dtype=dtype, rngs=rngs)
        conv = partial(_conv, dtype=dtype, rngs=rngs)
        layers = []
        for d in range(abs(depth)):
            dilation = 2**d if depth > 0 else 1
            padding = (dilation * (DCONV_KERNEL // 2),)
            layers.append(
                nnx.Sequential(
                    conv(channels, hidden, (DCONV_KERNEL,), padding=padding, dilation=dilation),
                    norm(hidden),
                    gelu,
                    conv(hidden, 2 * channels, (1,)),
                    norm(2 * channels),
                    glu,
                    LayerScale(channels, init, dtype=dtype),
                )
            )
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, T, C) -> (N, T, C)``."""
        for layer in self.layers:
            x = x + layer(x)
        return x


def _dconv_rows(dconv: DConv, y: jax.Array, freq: bool) -> jax.Array:
    """DConv on ``(B, L, C)``, or per frequency row on ``(B, F, T, C)`` (batch ``B F``: GroupNorm statistics per
    row, as upstream)."""
    if not freq:
        return dconv(y)
    b, f, t, c = y.shape
    return dconv(y.reshape(b * f, t, c)).reshape(b, f, t, c)


def _rewrite(layer: HLayer, channels: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    """The rewrite convolution, ``channels -> 2 channels``, kernel ``1 + 2 context`` (square in frequency),
    ``"same"`` size."""
    r = 1 + 2 * layer.context
    square = (r, r) if layer.freq else (r,)
    return _conv(channels, 2 * channels, square, padding=(layer.context,) * len(square), dtype=dtype, rngs=rngs)


def _dconv(layer: HLayer, channels: int, *, dtype: Any, rngs: nnx.Rngs) -> DConv:
    return DConv(channels, layer.dconv_depth, layer.dconv_comp, layer.dconv_init, dtype=dtype, rngs=rngs)


def _check_layer(layer: HLayer) -> None:
    """Refuse what these modules do not implement: the ``empty`` time layer where the branches merge (a config
    deeper than the released ones), DConv BLSTM / LocalState."""
    if layer.empty or (layer.module in ("encoder", "decoder") and not layer.freq):
        raise NotImplementedError(f"{layer.prefix}: HTDemucs layers below the merge of the branches (depth too large)")
    if layer.dconv_lstm or layer.dconv_attn:
        raise NotImplementedError(f"{layer.prefix}: DConv BLSTM / LocalState is not implemented for HTDemucs")


class HEncLayer(nnx.Module):
    """One encoder layer (``HEncLayer``), described by ``layer`` (its ``freq``, channels, kernel, stride, norms,
    rewrite, DConv)::

        [time: zero-pad L on the right to a multiple of the stride]
        y = conv(x);  y = gelu(norm1(y));  y = dconv(y);  z = glu(norm2(rewrite(y)))

    State: ``conv``, ``norm1`` / ``norm2`` (``None`` before ``norm_starts``), ``rewrite``, ``dconv``.
    """

    def __init__(self, layer: HLayer, *, dtype: Any, rngs: nnx.Rngs):
        _check_layer(layer)
        self.freq = layer.freq
        self.stride = layer.stride
        chout = layer.chout
        if layer.freq:
            kernel, stride, padding = (layer.kernel_size, 1), (layer.stride, 1), (layer.pad, 0)
        else:
            kernel, stride, padding = (layer.kernel_size,), (layer.stride,), (layer.pad,)
        self.conv = _conv(layer.chin, chout, kernel, stride=stride, padding=padding, dtype=dtype, rngs=rngs)
        norm = partial(group_norm, groups=layer.norm_groups, dtype=dtype, rngs=rngs)
        self.norm1 = norm(chout) if layer.norm else None
        self.rewrite = _rewrite(layer, chout, dtype=dtype, rngs=rngs) if layer.rewrite else None
        self.norm2 = norm(2 * chout) if layer.rewrite and layer.norm else None
        self.dconv = _dconv(layer, chout, dtype=dtype, rngs=rngs) if layer.dconv else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Frequency ``(B, F, T, Cin) -> (B, F / S, T, Cout)``; time ``(B, L, Cin) -> (B, ceil(L / S), Cout)``."""
        if not self.freq and x.shape[1] % self.stride:
            x = jnp.pad(x, ((0, 0), (0, self.stride - x.shape[1] % self.stride), (0, 0)))
        y = self.conv(x)
        y = gelu(self.norm1(y) if self.norm1 is not None else y)
        if self.dconv is not None:
            y = _dconv_rows(self.dconv, y, self.freq)
        if self.rewrite is None:
            return y
        z = self.rewrite(y)
        return glu(self.norm2(z) if self.norm2 is not None else z)


class HDecLayer(nnx.Module):
    """One decoder layer (``HDecLayer``), described by ``layer``::

        y = x + skip;  y = glu(norm1(rewrite(y)));  y = dconv(y)          -> pre = y
        z = norm2(conv_tr(y));  crop (frequency: pad at each end; time: [pad, pad + length));  gelu unless last

    State: ``conv_tr`` (kernel ``(K, chin, chout)``, unflipped), ``norm2`` / ``norm1``, ``rewrite``, ``dconv``.
    """

    def __init__(self, layer: HLayer, *, dtype: Any, rngs: nnx.Rngs):
        _check_layer(layer)
        self.freq = layer.freq
        self.pad = layer.pad
        self.last = layer.last
        chin = layer.chin
        self.conv_tr = ConvTranspose1d(chin, layer.chout, layer.kernel_size, layer.stride, dtype=dtype, rngs=rngs)
        norm = partial(group_norm, groups=layer.norm_groups, dtype=dtype, rngs=rngs)
        self.norm2 = norm(layer.chout) if layer.norm else None
        self.rewrite = _rewrite(layer, chin, dtype=dtype, rngs=rngs) if layer.rewrite else None
        self.norm1 = norm(2 * chin) if layer.rewrite and layer.norm else None
        self.dconv = _dconv(layer, chin, dtype=dtype, rngs=rngs) if layer.dconv else None

    def _conv_tr(self, y: jax.Array) -> jax.Array:
        """The transposed convolution along frequency (``(B, F, T, C)``: per time frame) or time (``(B, L, C)``)."""
        if not self.freq:
            return self.conv_tr(y)
        b, f, t, c = y.shape
        rows = jnp.transpose(y, (0, 2, 1, 3)).reshape(b * t, f, c)  # (B T, F, C)
        z = self.conv_tr(rows)
        return jnp.transpose(z.reshape(b, t, z.shape[1], z.shape[2]), (0, 2, 1, 3))

    def __call__(self, x: jax.Array, skip: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
        """``(z, pre)``.

        Args:
            x, skip: frequency ``(B, F, T, Cin)``; time ``(B, L, Cin)`` (the same shape).
            length: time layers: the output length (the mirrored encoder's input length); ignored in frequency.

        Returns:
            ``z``: frequency ``(B, F S, T, Cout)``, time ``(B, length, Cout)``; ``pre``: the input of the transposed
            convolution, shaped like ``x``.
        """
        if skip.shape != x.shape:
            raise ValueError(f"HDecLayer: skip {skip.shape} != x {x.shape}")
        y = x + skip
        if self.rewrite is not None:
            y = self.rewrite(y)
            y = glu(self.norm1(y) if self.norm1 is not None else y)
        if self.dconv is not None:
            y = _dconv_rows(self.dconv, y, self.freq)
        z = self._conv_tr(y)
        if self.norm2 is not None:
            z = self.norm2(z)
        if self.freq:
            if self.pad:
                z = z[:, self.pad : -self.pad]
        else:
            if z.shape[1] < self.pad + length:
                available = z.shape[1] - self.pad
                raise ValueError(f"HDecLayer: length {length} is longer than the {available} steps available")
            z = z[:, self.pad : self.pad + length]
        if not self.last:
            z = gelu(z)
        return z, y


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x Phi(x)`` (erf), as ``torch.nn.functional.gelu``."""
    return jax.nn.gelu(x, approximate=False)


def group_norm(channels: int, groups: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """``torch.nn.GroupNorm(groups, channels)`` on channels-last input: statistics per item over every axis but
    the batch, per group of ``channels / groups`` contiguous channels; biased variance, computed in two passes;
    eps 1e-5. State: ``scale``, ``bias`` ``(channels,)`` (upstream's ``weight``, ``bias``)."""
    return nnx.GroupNorm(
        channels,
        num_groups=groups,
        epsilon=NORM_EPS,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )
