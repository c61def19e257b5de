"""The hybrid U-Net layers of HTDemucs (demucs 4.x ``HEncLayer`` / ``HDecLayer`` and the ``DConv`` residual branch
with its ``LayerScale``) as Keras 3 layers, eval mode.

The spec is :mod:`core_spec.reference.htdemucs_layers` (its docstring has the layer recipes); each layer here is
built from the spec's static description (:class:`core_spec.reference.htdemucs_layers.HLayer`, from
``encoder_layers`` / ``decoder_layers``). Layouts are **channels-last** (Keras's, NHWC): a frequency layer takes
``(B, F, T, C)``, a time layer ``(B, L, C)`` (the spec's ``(B, C, F, T)`` / ``(B, C, L)`` with the channels moved
last). Hence a frequency layer's DConv, which upstream runs per frequency row, is a reshape
``(B, F, T, C) -> (B F, T, C)`` here.

Upstream's modules and the Keras ones (the weight mapping is :mod:`umx_tf.weights`):

==============================================  ==================================================================
upstream                                        here
==============================================  ==================================================================
``Conv2d(chin, chout, (K, 1), (S, 1), (K//4, 0))``  :class:`Conv` kernel ``(K, 1, chin, chout)`` on ``(B, F, T, C)``
``Conv1d(chin, chout, K, S, K//4)``              :class:`Conv` kernel ``(K, chin, chout)`` on ``(B, L, C)``
``ConvTranspose2d(chin, chout, (K, 1), (S, 1))``  :class:`ConvTranspose` kernel ``(K, 1, chout, chin)`` (no flip)
``ConvTranspose1d(chin, chout, K, S)``           :class:`ConvTranspose` kernel ``(K, chout, chin)`` (no flip)
``GroupNorm(groups, C)`` / ``Identity``          :class:`umx_tf.layers.GroupNorm` (eps 1e-5, two-pass) / ``None``
``DConv.layers[d]`` (``nn.Sequential``, 7 slots)  ``DConv.layers[d]``: slots 0 (``conv``), 1 (``norm``), 2 GELU,
                                                 3 (``conv_out``), 4 (``norm_out``), 5 GLU, 6 (:class:`LayerScale`)
==============================================  ==================================================================

GELU is exact (erf; :func:`umx_tf.layers.gelu`, written out: ``tf.nn.gelu`` is not float64-exact). ``GroupNorm``
and ``gelu`` live in :mod:`umx_tf.layers` (the cross-transformer uses them too). The convolutions are written on
``tf.nn`` with explicit zero padding (Keras's ``Conv*D`` only pad ``"same"`` / ``"valid"``).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core_spec.reference.htdemucs_layers import DCONV_KERNEL, HLayer

from .layers import GroupNorm, gelu, torch_kernel_init, torch_uniform

__all__ = ["Conv", "ConvTranspose", "DConv", "HDecLayer", "HEncLayer", "LayerScale", "gelu", "glu"]


class LayerScale(keras.layers.Layer):
    """``LayerScale``: a per-channel scale, ``x * scale`` on channels-last ``x (..., C)``. Weight: ``scale (C,)``."""

    def __init__(self, channels: int, init: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.scale = self.add_weight(shape=(channels,), initializer=keras.initializers.Constant(init), name="scale")
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.scale


class _DConvLayer(keras.layers.Layer):
    """One residual layer of :class:`DConv` (upstream's ``nn.Sequential`` of 7 slots) on ``(N, T, C)``."""

    def __init__(self, channels: int, hidden: int, dilation: int, init: float, **kwargs: Any):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        pad = (dilation * (DCONV_KERNEL // 2),)
        self.conv = Conv(channels, hidden, (DCONV_KERNEL,), padding=pad, dilation=dilation, dtype=policy)  # slot 0
        self.norm = GroupNorm(hidden, 1, dtype=policy)  # slot 1
        self.conv_out = Conv(hidden, 2 * channels, (1,), dtype=policy)  # slot 3
        self.norm_out = GroupNorm(2 * channels, 1, dtype=policy)  # slot 4
        self.layer_scale = LayerScale(channels, init, dtype=policy)  # slot 6
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        y = gelu(self.norm(self.conv(x)))
        return self.layer_scale(glu(self.norm_out(self.conv_out(y))))


class DConv(keras.layers.Layer):
    """The DConv residual branch on ``(N, T, C)``: for each of its ``|depth|`` layers ``d`` (dilation ``2**d``, or
    1 when ``depth < 0``), ``x = x + layers[d](x)`` with ``layers[d]`` =
    ``conv3 (dilated) -> GroupNorm(1) -> GELU -> conv1x1 -> GroupNorm(1) -> GLU -> LayerScale``, ``C // compress``
    hidden channels. Weights: ``layers[d].{conv, norm, conv_out, norm_out, layer_scale}`` (upstream's
    ``layers.<d>.{0, 1, 3, 4, 6}``)."""

    def __init__(self, channels: int, depth: int, compress: float, init: float, **kwargs: Any):
        super().__init__(**kwargs)
        hidden = int(channels / compress)
        self.layers = [
            _DConvLayer(channels, hidden, 2**d if depth > 0 else 1, init, dtype=self.dtype_policy)
            for d in range(abs(depth))
        ]
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """``(N, T, C) -> (N, T, C)``."""
        for layer in self.layers:
            x = x + layer(x)
        return x


def _dconv_rows(dconv: DConv, y: tf.Tensor, freq: bool) -> tf.Tensor:
    """DConv on ``(B, L, C)``, or per frequency row on ``(B, F, T, C)`` (batch ``B F``: GroupNorm statistics per
    row, as upstream)."""
    if not freq:
        return dconv(y)
    _, f, t, c = y.shape
    b = tf.shape(y)[0]
    return tf.reshape(dconv(tf.reshape(y, [-1, t, c])), [b, f, t, c])


def _rewrite(layer: HLayer, channels: int, policy: Any) -> Conv:
    """The rewrite convolution, ``channels -> 2 channels``, kernel ``1 + 2 context`` (square in frequency),
    ``"same"`` size."""
    r = 1 + 2 * layer.context
    square = (r, r) if layer.freq else (r,)
    return Conv(channels, 2 * channels, square, padding=(layer.context,) * len(square), dtype=policy, name="rewrite")


def _dconv(layer: HLayer, channels: int, policy: Any) -> DConv:
    return DConv(channels, layer.dconv_depth, layer.dconv_comp, layer.dconv_init, dtype=policy, name="dconv")


def _check_layer(layer: HLayer) -> None:
    """Refuse what these layers do not implement: the ``empty`` time layer where the branches merge (a config
    deeper than the released ones), DConv BLSTM / LocalState."""
    if layer.empty or (layer.module in ("encoder", "decoder") and not layer.freq):
        raise NotImplementedError(f"{layer.prefix}: HTDemucs layers below the merge of the branches (depth too large)")
    if layer.dconv_lstm or layer.dconv_attn:
        raise NotImplementedError(f"{layer.prefix}: DConv BLSTM / LocalState is not implemented for HTDemucs")


class HEncLayer(keras.layers.Layer):
    """One encoder layer (``HEncLayer``), described by ``layer`` (its ``freq``, channels, kernel, stride, norms,
    rewrite, DConv)::

        [time: zero-pad L on the right to a multiple of the stride]
        y = conv(x);  y = gelu(norm1(y));  y = dconv(y);  z = glu(norm2(rewrite(y)))

    Weights: ``conv``, ``norm1`` / ``norm2`` (``None`` before ``norm_starts``), ``rewrite``, ``dconv``.
    """

    def __init__(self, layer: HLayer, **kwargs: Any):
        super().__init__(**kwargs)
        _check_layer(layer)
        policy = self.dtype_policy
        self.freq = layer.freq
        self.stride = layer.stride
        chout = layer.chout
        if layer.freq:
            kernel, stride, padding = (layer.kernel_size, 1), (layer.stride, 1), (layer.pad, 0)
        else:
            kernel, stride, padding = (layer.kernel_size,), (layer.stride,), (layer.pad,)
        self.conv = Conv(layer.chin, chout, kernel, stride, padding, dtype=policy, name="conv")
        self.norm1 = GroupNorm(chout, layer.norm_groups, dtype=policy, name="norm1") if layer.norm else None
        self.rewrite = _rewrite(layer, chout, policy) if layer.rewrite else None
        norm2 = layer.rewrite and layer.norm
        self.norm2 = GroupNorm(2 * chout, layer.norm_groups, dtype=policy, name="norm2") if norm2 else None
        self.dconv = _dconv(layer, chout, policy) if layer.dconv else None
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """Frequency ``(B, F, T, Cin) -> (B, F / S, T, Cout)``; time ``(B, L, Cin) -> (B, ceil(L / S), Cout)``."""
        if not self.freq and x.shape[1] % self.stride:
            x = tf.pad(x, [[0, 0], [0, self.stride - x.shape[1] % self.stride], [0, 0]])
        y = self.conv(x)
        y = gelu(self.norm1(y) if self.norm1 is not None else y)
        if self.dconv is not None:
            y = _dconv_rows(self.dconv, y, self.freq)
        if self.rewrite is None:
            return y
        z = self.rewrite(y)
        return glu(self.norm2(z) if self.norm2 is not None else z)


class HDecLayer(keras.layers.Layer):
    """One decoder layer (``HDecLayer``), described by ``layer``::

        y = x + skip;  y = glu(norm1(rewrite(y)));  y = dconv(y)          -> pre = y
        z = norm2(conv_tr(y));  crop (frequency: pad at each end; time: [pad, pad + length));  gelu unless last

    Weights: ``conv_tr`` (:class:`ConvTranspose`, along frequency for a frequency layer), ``norm2`` / ``norm1``,
    ``rewrite``, ``dconv``.
    """

    def __init__(self, layer: HLayer, **kwargs: Any):
        super().__init__(**kwargs)
        _check_layer(layer)
        policy = self.dtype_policy
        self.freq = layer.freq
        self.pad = layer.pad
        self.last = layer.last
        chin = layer.chin
        if layer.freq:
            kernel, stride = (layer.kernel_size, 1), (layer.stride, 1)
        else:
            kernel, stride = (layer.kernel_size,), (layer.stride,)
        self.conv_tr = ConvTranspose(chin, layer.chout, kernel, stride, dtype=policy, name="conv_tr")
        self.norm2 = GroupNorm(layer.chout, layer.norm_groups, dtype=policy, name="norm2") if layer.norm else None
        self.rewrite = _rewrite(layer, chin, policy) if layer.rewrite else None
        norm1 = layer.rewrite and layer.norm
        self.norm1 = GroupNorm(2 * chin, layer.norm_groups, dtype=policy, name="norm1") if norm1 else None
        self.dconv = _dconv(layer, chin, policy) if layer.dconv else None
        self.built = True

    def call(self, x: tf.Tensor, skip: tf.Tensor, length: int) -> tuple[tf.Tensor, tf.Tensor]:
        """``(z, pre)``.

        Args:
            x, skip: frequency ``(B, F, T, Cin)``; time ``(B, L, Cin)`` (the same shape).
            length: time layers: the output length (the mirrored encoder's input length); ignored in frequency.

        Returns:
            ``z``: frequency ``(B, F S, T, Cout)``, time ``(B, length, Cout)``; ``pre``: the input of the transposed
            convolution, shaped like ``x``.
        """
        if skip.shape[1:] != x.shape[1:]:
            raise ValueError(f"HDecLayer: skip {tuple(skip.shape)} != x {tuple(x.shape)}")
        y = x + skip
        if self.rewrite is not None:
            y = self.rewrite(y)
            y = glu(self.norm1(y) if self.norm1 is not None else y)
        if self.dconv is not None:
            y = _dconv_rows(self.dconv, y, self.freq)
        z = self.conv_tr(y)
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


# --- the building blocks (Keras extras) ---------------------------------------------------------------------


def glu(x: tf.Tensor) -> tf.Tensor:
    """``torch.nn.GLU(dim=1)`` on channels-last input: first half of the last axis times the sigmoid of the second."""
    a, b = tf.split(x, 2, axis=-1)
    return a * tf.sigmoid(b)


class Conv(keras.layers.Layer):
    """``torch.nn.Conv1d`` / ``Conv2d`` on channels-last input with zero ``padding`` on both sides of each spatial
    axis: ``(B, *spatial, chin) -> (B, *spatial', chout)``.

    Weights: ``kernel (*kernel_size, chin, chout)`` (upstream's ``(chout, chin, *kernel_size)`` moved), ``bias``.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...] | None = None,
        padding: tuple[int, ...] | None = None,
        dilation: int = 1,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        rank = len(kernel_size)
        self.stride = tuple(stride or (1,) * rank)
        self.padding = tuple(padding or (0,) * rank)
        self.dilation = dilation
        fan_in = chin * int(np.prod(kernel_size))
        self.kernel = self.add_weight(shape=(*kernel_size, chin, chout), initializer=torch_kernel_init(), name="kernel")
        self.bias = self.add_weight(shape=(chout,), initializer=torch_uniform(fan_in), name="bias")
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if any(self.padding):
            x = tf.pad(x, [[0, 0]] + [[p, p] for p in self.padding] + [[0, 0]])
        rank = len(self.stride)
        y = tf.nn.convolution(x, self.kernel, strides=self.stride, padding="VALID", dilations=(self.dilation,) * rank)
        return y + self.bias


class ConvTranspose(keras.layers.Layer):
    """``torch.nn.ConvTranspose1d`` / ``ConvTranspose2d`` (no padding) on channels-last input:
    ``(B, *spatial, chin) -> (B, *((n - 1) stride + kernel), chout)``.

    Weights: ``kernel (*kernel_size, chout, chin)`` (upstream's ``(chin, chout, *kernel_size)`` moved, no flip:
    TensorFlow's transposed convolution is the gradient of a convolution), ``bias (chout,)``.
    """

    def __init__(self, chin: int, chout: int, kernel_size: tuple[int, ...], stride: tuple[int, ...], **kwargs: Any):
        super().__init__(**kwargs)
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.chout = chout
        fan_in = chout * int(np.prod(kernel_size))  # torch's fan_in of a transposed weight (in, out, *k) is out * k
        self.kernel = self.add_weight(shape=(*kernel_size, chout, chin), initializer=torch_kernel_init(), name="kernel")
        self.bias = self.add_weight(shape=(chout,), initializer=torch_uniform(fan_in), name="bias")
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        spatial = [(n - 1) * s + k for n, s, k in zip(x.shape[1:-1], self.stride, self.kernel_size, strict=True)]
        out_shape = tf.stack([tf.shape(x)[0], *spatial, self.chout])
        y = tf.nn.conv_transpose(x, self.kernel, out_shape, strides=self.stride, padding="VALID")
        return y + self.bias
