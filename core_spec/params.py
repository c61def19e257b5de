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

from .configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXConfig

__all__ = [
    "UMX_IGNORED_ON_LOAD",
    "Inventory",
    "WeightsMismatchError",
    "check_weights",
    "fold_lstm_bias",
    "htdemucs_branch_channels",
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


def _conv(prefix: str, chout: int, chin: int, kernel: tuple[int, ...]) -> Inventory:
    return [(f"{prefix}.weight", (chout, chin, *kernel)), (f"{prefix}.bias", (chout,))]


def _affine(prefix: str, n: int) -> Inventory:
    """GroupNorm / LayerNorm: ``weight`` and ``bias`` of ``n`` channels."""
    return [(f"{prefix}.weight", (n,)), (f"{prefix}.bias", (n,))]


def _dconv(prefix: str, c: HTDemucsConfig, channels: int) -> Inventory:
    # DConv of demucs 4.x: per depth d a Sequential [Conv1d(C, H, 3, dilation), GroupNorm(1, H), GELU,
    # Conv1d(H, 2C, 1), GroupNorm(1, 2C), GLU, LayerScale(C)], H = int(C / compress); no LSTM nor attention here.
    hidden = int(channels / c.dconv_comp)
    out: Inventory = []
    for d in range(abs(c.dconv_depth)):  # a negative depth: as many layers, without dilation
        layer = f"{prefix}.dconv.layers.{d}"
        out += _conv(f"{layer}.0", hidden, channels, (3,))
        out += _affine(f"{layer}.1", hidden)
        out += _conv(f"{layer}.3", 2 * channels, hidden, (1,))
        out += _affine(f"{layer}.4", 2 * channels)
        out += [(f"{layer}.6.scale", (channels,))]
    return out


def _henc(prefix: str, c: HTDemucsConfig, chin: int, chout: int, index: int, freq: bool) -> Inventory:
    # HEncLayer: conv (kernel [k, 1] in freq), norm1, rewrite (1 + 2 context_enc, square in freq), norm2, dconv
    norm = index >= c.norm_starts
    k = (c.kernel_size, 1) if freq else (c.kernel_size,)
    r = 1 + 2 * c.context_enc
    out = _conv(f"{prefix}.conv", chout, chin, k)
    if norm:
        out += _affine(f"{prefix}.norm1", chout)
    if c.rewrite:
        out += _conv(f"{prefix}.rewrite", 2 * chout, chout, (r, r) if freq else (r,))
        if norm:
            out += _affine(f"{prefix}.norm2", 2 * chout)
    if c.dconv_mode & 1:
        out += _dconv(prefix, c, chout)
    return out


def _hdec(prefix: str, c: HTDemucsConfig, chin: int, chout: int, index: int, freq: bool) -> Inventory:
    # HDecLayer: conv_tr (kernel [k, 1] in freq), norm2, rewrite (1 + 2 context, square in freq), norm1, dconv
    norm = index >= c.norm_starts
    k = (c.kernel_size, 1) if freq else (c.kernel_size,)
    r = 1 + 2 * c.context
    out = _conv(f"{prefix}.conv_tr", chin, chout, k)  # ConvTranspose: (in, out, *kernel)
    out[-1] = (f"{prefix}.conv_tr.bias", (chout,))
    if norm:
        out += _affine(f"{prefix}.norm2", chout)
    if c.rewrite:
        out += _conv(f"{prefix}.rewrite", 2 * chin, chin, (r, r) if freq else (r,))
        if norm:
            out += _affine(f"{prefix}.norm1", 2 * chin)
    if c.dconv_mode & 2:
        out += _dconv(prefix, c, chin)
    return out


def _attention(prefix: str, d: int) -> Inventory:
    # nn.MultiheadAttention(d, heads, bias=True): q, k, v stacked in in_proj
    return [
        (f"{prefix}.in_proj_weight", (3 * d, d)),
        (f"{prefix}.in_proj_bias", (3 * d,)),
        (f"{prefix}.out_proj.weight", (d, d)),
        (f"{prefix}.out_proj.bias", (d,)),
    ]


def _transformer_layer(prefix: str, c: HTDemucsConfig, d: int, cross: bool) -> Inventory:
    hidden = int(d * c.t_hidden_scale)
    out = _attention(f"{prefix}.{'cross_attn' if cross else 'self_attn'}", d)
    out += _conv(f"{prefix}.linear1", hidden, d, ()) + _conv(f"{prefix}.linear2", d, hidden, ())
    for norm in ("norm1", "norm2", "norm3")[: 3 if cross else 2]:
        out += _affine(f"{prefix}.{norm}", d)
    if c.t_norm_first and c.t_norm_out:  # GroupNorm(1, d) over tokens x channels
        out += _affine(f"{prefix}.norm_out", d)
    if c.t_layer_scale:
        out += [(f"{prefix}.gamma_1.scale", (d,)), (f"{prefix}.gamma_2.scale", (d,))]
    return out


def htdemucs_branch_channels(c: HTDemucsConfig) -> list[tuple[int, int, int, int]]:
    """``(chin_z, chout_z, chin, chout)`` of every encoder layer, outermost first: input and output channels of
    the frequency (``_z``) and time branches. The freq branch's input is complex-as-channels when ``cac``."""
    out = []
    chin, chout = c.audio_channels, c.channels
    chin_z = chin * (2 if c.cac else 1)
    chout_z = c.channels
    for _ in range(c.depth):
        out.append((chin_z, chout_z, chin, chout))
        chin, chin_z = chout, chout_z
        chout, chout_z = int(c.growth * chout), int(c.growth * chout_z)
    return out


def _htdemucs_unsupported(c: HTDemucsConfig) -> list[str]:
    """Constructor arguments whose value the inventory does not model (yet): each ``name=value``."""
    bad = []
    if c.multi_freqs:
        bad.append(f"multi_freqs={list(c.multi_freqs)}")
    if c.channels_time not in (None, c.channels):
        bad.append(f"channels_time={c.channels_time}")
    freqs = c.nfft // 2
    for index in range(c.depth):
        if freqs <= c.kernel_size:  # a last_freq layer and time-only layers below it (not in the released models)
            bad.append(f"depth={c.depth} (layer {index} would see {freqs} <= kernel_size={c.kernel_size} freqs)")
            break
        freqs //= c.stride
    return bad


def _htdemucs_inventory(c: HTDemucsConfig) -> Inventory:
    # Registration order of demucs 4.1.0's HTDemucs: encoder, decoder, tencoder, tdecoder, freq_emb, channel
    # up/down samplers, crosstransformer. Decoders are stored innermost first.
    unsupported = _htdemucs_unsupported(c)
    if unsupported:
        raise NotImplementedError(f"no HTDemucs inventory for {', '.join(unsupported)}")
    layers = htdemucs_branch_channels(c)
    nb_sources = len(c.sources)
    enc: Inventory = []
    dec: Inventory = []
    tenc: Inventory = []
    tdec: Inventory = []
    for index, (chin_z, chout_z, chin, chout) in enumerate(layers):
        enc += _henc(f"encoder.{index}", c, chin_z, chout_z, index, freq=True)
        tenc += _henc(f"tencoder.{index}", c, chin, chout, index, freq=False)
    for j, (chin_z, chout_z, chin, chout) in enumerate(reversed(layers)):
        index = c.depth - 1 - j
        if index == 0:  # the outermost decoders give every source's channels
            chin = c.audio_channels * nb_sources
            chin_z = chin * (2 if c.cac else 1)
        dec += _hdec(f"decoder.{j}", c, chout_z, chin_z, index, freq=True)
        tdec += _hdec(f"tdecoder.{j}", c, chout, chin, index, freq=False)
    inv = enc + dec + tenc + tdec
    if c.freq_emb:
        inv += [("freq_emb.embedding.weight", (c.nfft // 2 // c.stride, c.channels))]
    bottom = layers[-1][1]
    if c.bottom_channels:
        b = c.bottom_channels
        inv += _conv("channel_upsampler", b, bottom, (1,)) + _conv("channel_downsampler", bottom, b, (1,))
        inv += _conv("channel_upsampler_t", b, bottom, (1,)) + _conv("channel_downsampler_t", bottom, b, (1,))
    if c.t_layers > 0:
        d = c.transformer_channels
        if c.t_emb == "scaled":
            inv += [("crosstransformer.position_embeddings.embedding.weight", (c.t_max_positions, d))]
        if c.t_norm_in or c.t_norm_in_group:
            inv += _affine("crosstransformer.norm_in", d) + _affine("crosstransformer.norm_in_t", d)
        classic = 1 if c.t_cross_first else 0  # self-attention layers at this parity, cross layers between
        for branch in ("layers", "layers_t"):
            for idx in range(c.t_layers):
                inv += _transformer_layer(f"crosstransformer.{branch}.{idx}", c, d, cross=idx % 2 != classic)
    return inv


def parameter_inventory(config: UMXConfig | DemucsConfig | HTDemucsConfig | BagConfig) -> Inventory:
    """Ordered ``(name, shape)`` of every parameter and buffer the upstream model's ``state_dict()`` holds.

    ``num_batches_tracked`` counters are left out (see :func:`is_ignored_on_load`). The order is the upstream
    ``state_dict()`` order for UMX (own parameters, then children); for Demucs it is grouped encoder, decoder,
    LSTM; for HTDemucs the upstream ``state_dict()`` order. A :class:`BagConfig`'s inventory is that of
    ``BagOfModels``: each model's names under ``models.<i>.``. Loaders must map by name, not by order.
    """
    if isinstance(config, UMXConfig):
        return _umx_inventory(config)
    if isinstance(config, DemucsConfig):
        return _demucs_inventory(config)
    if isinstance(config, HTDemucsConfig):
        return _htdemucs_inventory(config)
    if isinstance(config, BagConfig):
        return [
            (f"models.{i}.{name}", shape) for i, m in enumerate(config.models) for name, shape in _htdemucs_inventory(m)
        ]
    raise TypeError(f"no inventory for {type(config).__name__}")


def nb_parameters(config: UMXConfig | DemucsConfig | HTDemucsConfig | BagConfig) -> int:
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
    weights: Mapping[str, Any], config: UMXConfig | DemucsConfig | HTDemucsConfig | BagConfig, source: str = "weights"
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
