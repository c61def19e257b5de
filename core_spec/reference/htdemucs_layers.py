"""The hybrid U-Net layers of HTDemucs (demucs 4.x ``HEncLayer`` / ``HDecLayer`` and the ``DConv`` residual branch
with its ``LayerScale``), in float64 NumPy, eval mode.

An HTDemucs has four lists of layers, named as in its state dict: ``encoder`` (the frequency branch, outermost
first), ``tencoder`` (the time branch), ``decoder`` and ``tdecoder`` (innermost first: ``decoder.0`` is the deepest).
:func:`encoder_layers` and :func:`decoder_layers` describe them (:class:`HLayer`) from an
:class:`~core_spec.configs.HTDemucsConfig` as upstream's constructor builds them; :func:`henc_layer` and
:func:`hdec_layer` run one layer given the weights under upstream's names.

Encoder layer (``x`` frequency ``(B, Cin, F, T)`` or time ``(B, Cin, L)``)::

    time only: zero-pad L on the right to a multiple of the stride
    y = conv(x)                              Conv2d kernel (K, 1), stride (S, 1), padding (K//4, 0) | Conv1d K, S, K//4
    [empty layer: return y]                  (the time layer just before the branches merge: its conv only)
    y = y + inject                           (the time branch's empty layer, merged into the frequency layer)
    y = gelu(norm1(y))                       norm: GroupNorm(norm_groups) from ``norm_starts`` on, identity before
    y = dconv(y)                             frequency: per frequency row, (B, C, F, T) -> (B F, C, T)
    z = glu(norm2(rewrite(y)), channels)     rewrite: kernel 1 + 2 context_enc, square (2-D) in frequency

Decoder layer (``x`` and ``skip`` of the same shape; returns ``(z, pre)``)::

    y = x + skip                             [empty layer: y = x, no skip]
    y = glu(norm1(rewrite(y)), channels)     rewrite: kernel 1 + 2 context, square (2-D) in frequency
    y = dconv(y)                             (frequency: per row)                       -> pre = y
    z = norm2(conv_tr(y))                    ConvTranspose2d kernel (K, 1), stride (S, 1) | ConvTranspose1d K, S
    crop: frequency z[:, :, pad:-pad] (nothing when pad is 0); time z[..., pad:pad + length]
    z = gelu(z)                              except the ``last`` (outermost) decoders

DConv (``x (B, C, T)``), for each of its ``|dconv_depth|`` residual layers ``d`` (dilation ``2**d``, or 1 when
``dconv_depth < 0``)::

    x = x + scale * glu(gn(conv1x1(gelu(gn(conv3(x, dilation))))), channels)      gn = GroupNorm(1)

with ``C // dconv_comp`` hidden channels; its weights are ``{prefix}dconv.layers.{d}.{0, 1, 3, 4, 6}`` (the slots
of upstream's ``nn.Sequential``: conv, norm, GELU, conv, norm, GLU, LayerScale). GELU is exact (erf).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from ..configs import HTDemucsConfig
from .layers import conv1d, conv2d, conv_transpose1d, conv_transpose2d, gelu, glu, group_norm

__all__ = [
    "DCONV_KERNEL",
    "MODULE_LISTS",
    "HLayer",
    "dconv",
    "decoder_layers",
    "encoder_layers",
    "hdec_layer",
    "henc_layer",
    "layer_scale",
]

DCONV_KERNEL = 3  # the DConv's dilated convolution (upstream's default; HTDemucs never changes it)
MODULE_LISTS = ("encoder", "tencoder", "decoder", "tdecoder")  # HTDemucs's layer lists, as named in its state dict


@dataclass(frozen=True)
class HLayer:
    """The static description of one encoder or decoder layer, as ``HTDemucs.__init__`` builds it.

    Attributes:
        module: ``"encoder"`` / ``"decoder"`` (the frequency branch's lists, which also hold the time layers below
            the merge of the branches) or ``"tencoder"`` / ``"tdecoder"`` (the time branch).
        slot: the position in that list (decoders are stored innermost first).
        index: the encoder depth the layer belongs to, 0 outermost (a decoder: the encoder it mirrors); norms are
            on from ``norm_starts`` by this index.
        freq: a frequency layer (2-D convolutions over ``(F, T)``, kernels ``(K, 1)``) or a time layer (1-D).
        chin, chout: the input and output channels of the layer.
        kernel_size, stride: of the (transposed) convolution along frequency or time.
        pad: ``kernel_size // 4`` (``0`` for the frequency layer that reaches one frequency): the encoder's conv
            padding, the decoder's crop.
        norm, norm_groups: GroupNorm(``norm_groups``) norms (``norm1``, ``norm2``) when ``norm``, else identity.
        rewrite: the GLU "rewrite" convolution (kernel ``1 + 2 context``; square in frequency).
        context: ``context_enc`` (encoders) or ``context`` (decoders).
        dconv, dconv_depth, dconv_comp, dconv_init: the DConv residual branch (``dconv_init`` is LayerScale's
            initial value: training only).
        last: an outermost decoder (no GELU on its output).
        empty: the time layer at the merge of the branches (encoder: its conv only, injected into the frequency
            layer; decoder: ``conv_tr``, ``norm2``, crop and GELU only, fed from the frequency decoder's ``pre``).
        dconv_lstm, dconv_attn: HDemucs's DConv BLSTM / LocalState options; HTDemucs never sets them and
            :func:`dconv` refuses them.
    """

    module: str
    slot: int
    index: int
    freq: bool
    chin: int
    chout: int
    kernel_size: int
    stride: int
    pad: int
    norm: bool
    norm_groups: int
    rewrite: bool
    context: int
    dconv: bool
    dconv_depth: int
    dconv_comp: float
    dconv_init: float
    last: bool = False
    empty: bool = False
    dconv_lstm: bool = False
    dconv_attn: bool = False

    def __post_init__(self) -> None:
        if self.module not in MODULE_LISTS:
            raise ValueError(f"HLayer.module must be one of {MODULE_LISTS}, got {self.module!r}")
        if self.last and not self.is_decoder:
            raise ValueError(f"HLayer {self.prefix}: only a decoder can be last")

    @property
    def is_decoder(self) -> bool:
        return self.module in ("decoder", "tdecoder")

    @property
    def prefix(self) -> str:
        """The layer's state-dict prefix with its trailing dot, e.g. ``"tdecoder.3."``."""
        return f"{self.module}.{self.slot}."

    @property
    def dconv_channels(self) -> int:
        """The DConv's channels: the encoder's output, the decoder's input."""
        return self.chin if self.is_decoder else self.chout

    @property
    def dconv_hidden(self) -> int:
        """The DConv's compressed channels, ``int(channels / dconv_comp)`` as upstream."""
        return int(self.dconv_channels / self.dconv_comp)


def _unsupported(config: HTDemucsConfig) -> None:
    if config.multi_freqs and config.multi_freqs_depth > 0:
        raise ValueError(
            f"multi_freqs={list(config.multi_freqs)} (MultiWrap of the outer {config.multi_freqs_depth} frequency "
            "layers) is not implemented"
        )


def _build(config: HTDemucsConfig) -> tuple[list[HLayer], list[HLayer], list[HLayer], list[HLayer]]:
    """The four lists in upstream's construction order (decoders outermost first, slots already innermost first)."""
    c = config
    _unsupported(c)
    enc: list[HLayer] = []
    tenc: list[HLayer] = []
    dec: list[HLayer] = []
    tdec: list[HLayer] = []
    chin = c.audio_channels
    chin_z = chin * 2 if c.cac else chin  # the frequency branch sees complex as channels
    chout = c.channels_time or c.channels
    chout_z = c.channels
    freqs = c.nfft // 2
    for index in range(c.depth):
        freq = freqs > 1
        ker, stri = (c.kernel_size, c.stride) if freq else (2 * c.time_stride, c.time_stride)
        last_freq = freq and freqs <= c.kernel_size  # this layer reduces the frequencies to one
        if last_freq:
            ker = freqs
            chout_z = max(chout, chout_z)
            chout = chout_z
        common = {
            "index": index,
            "norm": index >= c.norm_starts,
            "norm_groups": c.norm_groups,
            "rewrite": c.rewrite,
            "dconv_depth": c.dconv_depth,
            "dconv_comp": c.dconv_comp,
            "dconv_init": c.dconv_init,
        }
        layer = {"freq": freq, "kernel_size": ker, "stride": stri, "pad": 0 if last_freq else ker // 4, **common}
        time = {"freq": False, "kernel_size": c.kernel_size, "stride": c.stride, "pad": c.kernel_size // 4, **common}
        enc_dconv, dec_dconv = bool(c.dconv_mode & 1), bool(c.dconv_mode & 2)
        enc_kw = {"context": c.context_enc, "dconv": enc_dconv}
        enc.append(HLayer("encoder", index, chin=chin_z, chout=chout_z, **enc_kw, **layer))
        if freq:
            tenc.append(HLayer("tencoder", index, chin=chin, chout=chout, empty=last_freq, **enc_kw, **time))
        if index == 0:  # the outermost decoders give every source's channels
            chin = c.audio_channels * len(c.sources)
            chin_z = chin * 2 if c.cac else chin
        dec_kw = {"context": c.context, "dconv": dec_dconv, "last": index == 0}
        dec.append(HLayer("decoder", c.depth - 1 - index, chin=chout_z, chout=chin_z, **dec_kw, **layer))
        if freq:  # slot fixed below: upstream inserts each at the front
            tdec.append(HLayer("tdecoder", index, chin=chout, chout=chin, empty=last_freq, **dec_kw, **time))
        chin, chin_z = chout, chout_z
        chout, chout_z = int(c.growth * chout), int(c.growth * chout_z)
        if freq:
            freqs = 1 if freqs <= c.kernel_size else freqs // c.stride
    tdec = [replace(t, slot=len(tdec) - 1 - t.index) for t in tdec]
    return enc, tenc, dec, tdec


def encoder_layers(config: HTDemucsConfig) -> tuple[tuple[HLayer, ...], tuple[HLayer, ...]]:
    """``(encoder, tencoder)``: the frequency branch's encoder layers and the time branch's, outermost first.

    With the released configs (depth 4, ``nfft`` 4096) both have four layers and every ``encoder`` layer is a
    frequency layer (2048 -> 512 -> 128 -> 32 -> 8 frequencies). A deeper (or smaller-``nfft``) config has one
    ``encoder`` layer that reduces the frequencies to one (its ``tencoder`` twin is ``empty``), then time layers
    (kernel ``2 time_stride``, stride ``time_stride``) in ``encoder`` only.

    Raises:
        ValueError: an option these layers do not implement (``multi_freqs``).
    """
    enc, tenc, _, _ = _build(config)
    return tuple(enc), tuple(tenc)


def decoder_layers(config: HTDemucsConfig) -> tuple[tuple[HLayer, ...], tuple[HLayer, ...]]:
    """``(decoder, tdecoder)`` in state-dict order: ``decoder.0`` / ``tdecoder.0`` is the deepest, the last one
    is ``last`` (outermost: it outputs ``sources x audio_channels`` channels, twice that in the frequency branch
    with ``cac``).

    Raises:
        ValueError: an option these layers do not implement (``multi_freqs``).
    """
    _, _, dec, tdec = _build(config)
    return tuple(sorted(dec, key=lambda layer: layer.slot)), tuple(sorted(tdec, key=lambda layer: layer.slot))


def layer_scale(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``LayerScale`` (channel-last off, as DConv uses it): ``scale[:, None] * x`` for ``x (B, C, T)``,
    ``scale (C,)``."""
    return np.asarray(scale, dtype=np.float64)[:, None] * x


def _check_channels(what: str, x: np.ndarray, ndim: int, channels: int) -> None:
    if x.ndim != ndim or x.shape[1] != channels:
        raise ValueError(f"{what}: expected {ndim} axes (B, {channels}, ...), got shape {x.shape}")


def dconv(w: Mapping[str, np.ndarray], prefix: str, x: np.ndarray, layer: HLayer) -> np.ndarray:
    """The DConv residual branch of ``layer`` (module docstring) on ``x (B, C, T)`` -> ``(B, C, T)``.

    Weights: ``{prefix}dconv.layers.{d}.{0,1,3,4}.{weight,bias}`` and ``{prefix}dconv.layers.{d}.6.scale``.

    Raises:
        ValueError: ``dconv_lstm`` / ``dconv_attn`` set (not implemented), or ``x`` is not ``(B, C, T)`` with the
            layer's DConv channels.
    """
    for option in ("dconv_lstm", "dconv_attn"):
        if getattr(layer, option):
            raise ValueError(f"{layer.prefix}: {option} (DConv BLSTM / LocalState) is not implemented for HTDemucs")
    _check_channels(f"dconv of {layer.prefix}", x, 3, layer.dconv_channels)
    for d in range(abs(layer.dconv_depth)):
        dilation = 2**d if layer.dconv_depth > 0 else 1
        p = f"{prefix}dconv.layers.{d}."
        y = conv1d(x, w[f"{p}0.weight"], w[f"{p}0.bias"], padding=dilation * (DCONV_KERNEL // 2), dilation=dilation)
        y = gelu(group_norm(y, 1, w[f"{p}1.weight"], w[f"{p}1.bias"]))
        y = conv1d(y, w[f"{p}3.weight"], w[f"{p}3.bias"])  # 1x1: hidden -> 2 C
        y = glu(group_norm(y, 1, w[f"{p}4.weight"], w[f"{p}4.bias"]), axis=1)
        x = x + layer_scale(y, w[f"{p}6.scale"])
    return x


def _dconv_rows(w: Mapping[str, np.ndarray], prefix: str, y: np.ndarray, layer: HLayer) -> np.ndarray:
    """DConv on ``(B, C, T)``, or per frequency row on ``(B, C, F, T)`` (batch ``B F``: GroupNorm statistics per
    row)."""
    if not layer.freq:
        return dconv(w, prefix, y, layer)
    b, c, f, t = y.shape
    rows = y.transpose(0, 2, 1, 3).reshape(b * f, c, t)
    return dconv(w, prefix, rows, layer).reshape(b, f, c, t).transpose(0, 2, 1, 3)


def _norm(w: Mapping[str, np.ndarray], name: str, x: np.ndarray, layer: HLayer) -> np.ndarray:
    """GroupNorm(``norm_groups``) under ``name`` when the layer has norms, else the identity."""
    return group_norm(x, layer.norm_groups, w[f"{name}.weight"], w[f"{name}.bias"]) if layer.norm else x


def _rewrite(w: Mapping[str, np.ndarray], prefix: str, x: np.ndarray, layer: HLayer) -> np.ndarray:
    """The rewrite convolution, ``"same"`` size: kernel ``1 + 2 context`` (``(k, k)`` in frequency)."""
    weight, bias = w[f"{prefix}rewrite.weight"], w[f"{prefix}rewrite.bias"]
    if layer.freq:
        return conv2d(x, weight, bias, padding=(layer.context, layer.context))
    return conv1d(x, weight, bias, padding=layer.context)


def henc_layer(
    w: Mapping[str, np.ndarray], prefix: str, x: np.ndarray, layer: HLayer, inject: np.ndarray | None = None
) -> np.ndarray:
    """One encoder layer (module docstring).

    Args:
        w: weights under upstream's names (``{prefix}conv.weight``, ``{prefix}norm1.weight``, ...).
        prefix: the layer's state-dict prefix with its trailing dot (``"encoder.0."``).
        x: frequency layer ``(B, Cin, F, T)``; time layer ``(B, Cin, L)`` (or ``(B, C', 1, L)`` below the merge,
            flattened to ``(B, C', L)``).
        inject: the time branch's ``empty`` layer output ``(B, Cout, T')``, added after the conv (``T'`` must
            equal the output's ``T``).

    Returns:
        frequency ``(B, Cout, (F + 2 pad - K) // S + 1, T)`` (``F / S`` in the released models); time
        ``(B, Cout, ceil(L / S))``.
    """
    if not layer.freq and x.ndim == 4:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    _check_channels(f"henc_layer {prefix}", x, 4 if layer.freq else 3, layer.chin)
    weight, bias = w[f"{prefix}conv.weight"], w[f"{prefix}conv.bias"]
    if layer.freq:
        y = conv2d(x, weight, bias, stride=(layer.stride, 1), padding=(layer.pad, 0))
    else:
        remainder = x.shape[-1] % layer.stride
        if remainder:
            x = np.pad(x, ((0, 0), (0, 0), (0, layer.stride - remainder)))
        y = conv1d(x, weight, bias, stride=layer.stride, padding=layer.pad)
    if layer.empty:
        return y
    if inject is not None:
        if inject.shape[-1] != y.shape[-1]:
            raise ValueError(f"henc_layer {prefix}: inject has {inject.shape[-1]} steps, the layer {y.shape[-1]}")
        y = y + (inject[:, :, None] if inject.ndim == 3 and y.ndim == 4 else inject)
    y = gelu(_norm(w, f"{prefix}norm1", y, layer))
    if layer.dconv:
        y = _dconv_rows(w, prefix, y, layer)
    if not layer.rewrite:
        return y
    return glu(_norm(w, f"{prefix}norm2", _rewrite(w, prefix, y, layer), layer), axis=1)


def hdec_layer(
    w: Mapping[str, np.ndarray],
    prefix: str,
    x: np.ndarray,
    skip: np.ndarray | None,
    length: int,
    layer: HLayer,
) -> tuple[np.ndarray, np.ndarray]:
    """One decoder layer (module docstring).

    Args:
        w: weights under upstream's names (``{prefix}conv_tr.weight``, ``{prefix}rewrite.weight``, ...).
        prefix: the layer's state-dict prefix with its trailing dot (``"decoder.0."``).
        x: frequency layer ``(B, Cin, F, T)`` (or ``(B, Cin F, T)``, unflattened); time layer ``(B, Cin, L)``.
        skip: the mirrored encoder's output, the shape of ``x``; ``None`` for an ``empty`` layer.
        length: time layer: the output length (the mirrored encoder's input length), at most
            ``(L - 1) S + K - pad``; ignored by frequency layers (upstream crops ``pad`` at each end).

    Returns:
        ``(z, pre)``: ``z`` frequency ``(B, Cout, (F - 1) S + K - 2 pad, T)`` (``F S``), time
        ``(B, Cout, length)``; ``pre`` the input of the transposed convolution (``(B, Cin, ...)`` like ``x``).
    """
    if layer.freq and x.ndim == 3:
        x = x.reshape(x.shape[0], layer.chin, -1, x.shape[-1])
    _check_channels(f"hdec_layer {prefix}", x, 4 if layer.freq else 3, layer.chin)
    if layer.empty:
        if skip is not None:
            raise ValueError(f"hdec_layer {prefix}: an empty decoder layer takes no skip")
        y = x
    else:
        if skip is None or skip.shape != x.shape:
            raise ValueError(f"hdec_layer {prefix}: skip {None if skip is None else skip.shape} != x {x.shape}")
        y = x + skip
        if layer.rewrite:
            y = glu(_norm(w, f"{prefix}norm1", _rewrite(w, prefix, y, layer), layer), axis=1)
        if layer.dconv:
            y = _dconv_rows(w, prefix, y, layer)
    weight, bias = w[f"{prefix}conv_tr.weight"], w[f"{prefix}conv_tr.bias"]
    if layer.freq:
        z = _norm(w, f"{prefix}norm2", conv_transpose2d(y, weight, bias, stride=(layer.stride, 1)), layer)
        if layer.pad:
            z = z[:, :, layer.pad : -layer.pad, :]
    else:
        z = _norm(w, f"{prefix}norm2", conv_transpose1d(y, weight, bias, stride=layer.stride), layer)
        z = z[..., layer.pad : layer.pad + length]
        if z.shape[-1] != length:
            raise ValueError(f"hdec_layer {prefix}: length {length} is longer than the {z.shape[-1]} steps available")
    if not layer.last:
        z = gelu(z)
    return z, y
