"""HTDemucs (Hybrid Transformer Demucs, demucs 4.x ``demucs.htdemucs.HTDemucs``) in the NNabla port, eval mode.

The spec is :func:`core_spec.reference.htdemucs.htdemucs` (its docstring has the data flow). The port splits the
forward where NNabla's graphs end:

- NumPy before the graph (:mod:`umx_nnabla.htdemucs_spec`): zero-pad to the training length, the FFT
  spectrogram, complex as channels, the two branches' normalisation;
- the network as one NNabla graph (:meth:`HTDemucs.__call__`): the frequency and time encoders, the frequency
  embedding, the 1x1 channel samplers, the cross-transformer, the decoders, built per input shape and kept
  (:class:`umx_nnabla._context.GraphCache`);
- NumPy after it: de-normalisation, the inverse spectrogram, the sum of the branches and the crop.

:func:`forward` runs the three; :meth:`HTDemucs.infer` is its output. Parameters live in the model's own
``OrderedDict`` under upstream's module paths and names (``encoder/0/conv/weight``, ``crosstransformer/layers/1/
cross_attn/in_proj_weight``: the canonical name with ``/`` for ``.``, the same layout; :mod:`umx_nnabla.weights`).
float32 (NNabla's CPU kernels).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import nnabla as nn
import nnabla.functions as F
import numpy as np

from core_spec.configs import HTDemucsConfig
from core_spec.reference.htdemucs import htdemucs_trace_keys, htdemucs_valid_length
from core_spec.reference.htdemucs_layers import decoder_layers, encoder_layers
from core_spec.trace import Recorder

from ._context import GraphCache
from .htdemucs_embed import ScaledEmbedding, channel_conv1x1
from .htdemucs_layers import HDecLayer, HEncLayer
from .htdemucs_spec import denormalise_output, ispec, ispec_graph, magnitude, mask_cac, normalise_input, spec
from .htdemucs_transformer import CrossTransformerEncoder
from .layers import differentiable_statistics, persistent, reshape

__all__ = ["HTDemucs", "forward", "htdemucs_trace_keys", "htdemucs_valid_length", "network_inputs", "training_graph"]


class HTDemucs:
    """Hybrid Transformer Demucs, eval mode.

    Args: every keyword of ``demucs.htdemucs.HTDemucs`` of demucs 4.1.0 (:class:`core_spec.configs.HTDemucsConfig`,
        under the same names, with upstream's defaults). Keyword-only extras: ``scope`` (this model's parameter
        scope inside ``params``), ``params`` (the parameter dictionary, a new one if ``None``).

    Parameters (created with PyTorch-like random values when a graph is first built, unless loaded):
    ``encoder/<i>``, ``decoder/<j>``, ``tencoder/<i>``, ``tdecoder/<j>``, ``freq_emb``, ``channel_upsampler`` /
    ``channel_downsampler`` (and ``_t``), ``crosstransformer``.
    """

    def __init__(self, *, scope: str = "", params: OrderedDict | None = None, **kwargs: Any):
        config = HTDemucsConfig(**kwargs)
        if not config.cac:
            raise NotImplementedError("HTDemucs with cac=False (magnitude masks and Wiener filtering) is not ported")
        self._config = config
        self.scope = scope
        self.params: OrderedDict = OrderedDict() if params is None else params
        enc, tenc = encoder_layers(config)
        dec, tdec = decoder_layers(config)
        if len(tenc) != config.depth:
            raise NotImplementedError(f"depth={config.depth}: layers below the merge of the branches are not ported")
        self.encoder = [HEncLayer(layer) for layer in enc]
        self.decoder = [HDecLayer(layer) for layer in dec]
        self.tencoder = [HEncLayer(layer) for layer in tenc]
        self.tdecoder = [HDecLayer(layer) for layer in tdec]
        nb_freqs = config.nfft // 2 // config.stride  # the first encoder's output height
        self.freq_emb = ScaledEmbedding(nb_freqs, config.channels, config.emb_scale) if config.freq_emb else None
        self.bottom_channels = enc[-1].chout
        self.crosstransformer = CrossTransformerEncoder(config) if config.t_layers else None
        self.graphs = GraphCache(self._build_graph)

    @classmethod
    def from_config(cls, config: HTDemucsConfig, **kwargs: Any) -> HTDemucs:
        """A model with the constructor arguments of ``config`` (``kwargs``: ``scope``, ``params``)."""
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
        return cls(**fields, **kwargs)

    @property
    def config(self) -> HTDemucsConfig:
        """The :class:`core_spec.configs.HTDemucsConfig` of this model."""
        return self._config

    # upstream's attribute names
    @property
    def sources(self) -> tuple[str, ...]:
        return self._config.sources

    @property
    def audio_channels(self) -> int:
        return self._config.audio_channels

    @property
    def samplerate(self) -> int:
        return self._config.samplerate

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def set_segment(self, segment: tuple[int, int]) -> None:
        """Run at another training segment (seconds, an exact pair): what a bag's ``segment`` does to its models
        (upstream sets ``model.segment``)."""
        self._config = dataclasses.replace(self._config, segment=segment)

    def valid_length(self, length: int) -> int:
        """The length the network runs at for an input of ``length`` samples (the training-segment rule)."""
        return htdemucs_valid_length(self._config, length)

    def parameter_scope(self) -> AbstractContextManager:
        return nn.parameter_scope(self.scope, self.params)

    def create_parameters(self) -> None:
        """Create every parameter (random values) that is not there yet, by building the network's graph at the
        training length (nothing is computed)."""
        c = self._config
        shape = _branch_shapes(c, 1, c.segment_samples)
        self(nn.Variable(shape[0]), nn.Variable(shape[1]))

    def get_parameters(self, grad_only: bool = False) -> OrderedDict:
        """``{name: Variable}`` of this model's parameters (created first if the model has none yet)."""
        with self.parameter_scope():
            if not nn.get_parameters(grad_only=False):
                self.create_parameters()
            return nn.get_parameters(grad_only=grad_only)

    def __call__(
        self, x: nn.Variable, xt: nn.Variable, trace: dict[str, nn.Variable] | None = None, dropout: float = 0.0
    ) -> tuple[nn.Variable, nn.Variable]:
        """Build the network (the part of the forward between the normalisations) on its two inputs.

        Args:
            x: the normalised complex-as-channels spectrogram ``(B, 2C, F, T)``.
            xt: the normalised mixture ``(B, C, L_t)``.
            trace: filled with the graph's intermediates of
                :func:`~core_spec.reference.htdemucs.htdemucs_trace_keys` (made persistent), in the spec's layouts.
            dropout: the cross-transformer's dropout rate (training graphs, :func:`training_graph`; 0, every eval
                graph: none).

        Returns:
            ``(x, xt)``: the frequency branch ``(B, S 2C, F, T)`` and the time branch ``(B, S C, L_t)``, before
            de-normalisation.
        """
        c = self._config
        keep = Recorder(trace, htdemucs_trace_keys(c), persistent)
        with self.parameter_scope():
            saved, saved_t, lengths_t = [], [], []
            for i, (encode, tencode) in enumerate(zip(self.encoder, self.tencoder, strict=True)):
                lengths_t.append(xt.shape[-1])
                xt = keep(f"tencoder.{i}", tencode(xt))
                saved_t.append(xt)
                x = keep(f"encoder.{i}", encode(x))
                if i == 0 and self.freq_emb is not None:
                    emb = keep("freq_emb", self.freq_emb(x.shape[2]))  # (F_0, channels)
                    emb = reshape(F.transpose(emb, (1, 0)), (1, emb.shape[1], emb.shape[0], 1))
                    x = x + emb * float(c.freq_emb)
                saved.append(x)

            if self.crosstransformer is not None:
                b, _, nb_freqs, t1 = x.shape
                if c.bottom_channels:
                    up = channel_conv1x1(reshape(x, (b, x.shape[1], -1)), c.bottom_channels, "channel_upsampler")
                    x = reshape(keep("channel_upsampler", up), (b, -1, nb_freqs, t1))
                    xt = keep("channel_upsampler_t", channel_conv1x1(xt, c.bottom_channels, "channel_upsampler_t"))
                x, xt = self.crosstransformer(x, xt, keep, dropout)
                x = keep("crosstransformer.x", x)
                xt = keep("crosstransformer.xt", xt)
                if c.bottom_channels:
                    seq = reshape(x, (b, x.shape[1], -1))
                    down = channel_conv1x1(seq, self.bottom_channels, "channel_downsampler")
                    x = reshape(keep("channel_downsampler", down), (b, -1, nb_freqs, t1))
                    down_t = channel_conv1x1(xt, self.bottom_channels, "channel_downsampler_t")
                    xt = keep("channel_downsampler_t", down_t)

            for j, (decode, tdecode) in enumerate(zip(self.decoder, self.tdecoder, strict=True)):
                x, _ = decode(x, saved.pop(), 0)
                x = keep(f"decoder.{j}", x)
                xt, _ = tdecode(xt, saved_t.pop(), lengths_t.pop())
                xt = keep(f"tdecoder.{j}", xt)
        return x, xt

    def _build_graph(self, key: tuple[int, ...]) -> tuple[Any, ...]:
        nb_samples, length, traced = key
        x_shape, xt_shape = _branch_shapes(self._config, nb_samples, length)
        x_in, xt_in = nn.Variable(x_shape), nn.Variable(xt_shape)
        trace: dict[str, nn.Variable] | None = {} if traced else None
        x_out, xt_out = self(x_in, xt_in, trace)
        x_out.persistent = xt_out.persistent = True
        return x_in, xt_in, F.sink(x_out, xt_out), x_out, xt_out, trace or {}

    def infer(self, mix: np.ndarray, stats: Mapping[str, Any] | None = None) -> np.ndarray:
        """Separate a NumPy ``mix (nb_samples, audio_channels, L)`` (float32): ``(nb_samples, nb_sources,
        audio_channels, L)``. The graph is kept per input shape."""
        return forward(self, mix, stats=stats)[0]


def _branch_shapes(config: HTDemucsConfig, nb_samples: int, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The network's input shapes at ``length`` samples: ``(B, 2C, nfft / 2, ceil(L / hop))`` and ``(B, C, L)``."""
    nb_frames = -(-length // config.hop_length)
    x_shape = (nb_samples, 2 * config.audio_channels, config.nfft // 2, nb_frames)
    return x_shape, (nb_samples, config.audio_channels, length)


def network_inputs(
    model: HTDemucs, mix: np.ndarray, window: np.ndarray | None = None, stats: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """What the network's graph takes for ``mix (B, C, L)`` (float32, already at the length the network runs at):
    ``x`` the normalised complex-as-channels spectrogram ``(B, 2C, F, T)``, ``xt`` the normalised mixture, their
    statistics ``mean`` / ``std`` ``(B, 1, 1, 1)`` and ``mean_t`` / ``std_t`` ``(B, 1, 1)``, and ``magnitude`` (the
    spectrogram before normalisation). ``stats``: as :func:`forward`."""
    c = model.config
    mag = magnitude(spec(mix, nfft=c.nfft, hop=c.hop_length, window=window))
    x, mean, std = normalise_input(mag, None if stats is None else (stats["mean"], stats["std"]))
    xt, mean_t, std_t = normalise_input(mix, None if stats is None else (stats["mean_t"], stats["std_t"]))
    return {"x": x, "xt": xt, "mean": mean, "std": std, "mean_t": mean_t, "std_t": std_t, "magnitude": mag}


def training_graph(
    model: HTDemucs, nb_samples: int, length: int, dropout: float = 0.0
) -> tuple[dict[str, nn.Variable], nn.Variable]:
    """The training-mode forward as one differentiable graph (the network at ``length`` itself, as upstream's
    ``model.train()``): ``(inputs, estimates)`` with ``inputs`` the Variables of :func:`network_inputs`' arrays
    (``x``, ``xt``, ``mean``, ``std``, ``mean_t``, ``std_t``) and ``estimates (B, S, C, length)``.

    The norms' statistics carry their gradient (:func:`umx_nnabla.layers.differentiable_statistics`), the
    frequency branch is de-normalised and inverted in the graph (:func:`umx_nnabla.htdemucs_spec.ispec_graph`, the
    periodic Hann window). ``dropout``: the cross-transformer's dropout rate (the trainer passes the config's
    ``t_dropout``; 0, the default, builds no dropout node: the gradient-parity graph).
    """
    c = model.config
    x_shape, xt_shape = _branch_shapes(c, nb_samples, length)
    inputs = {
        "x": nn.Variable(x_shape),
        "xt": nn.Variable(xt_shape),
        "mean": nn.Variable((nb_samples, 1, 1, 1)),
        "std": nn.Variable((nb_samples, 1, 1, 1)),
        "mean_t": nn.Variable((nb_samples, 1, 1)),
        "std_t": nn.Variable((nb_samples, 1, 1)),
    }
    with differentiable_statistics():
        x, xt = model(inputs["x"], inputs["xt"], dropout=dropout)
    nb_sources, channels = len(c.sources), c.audio_channels
    # de-normalise (the stats broadcast over sources and the rest), then the inverse spectrogram per source
    x = reshape(x, (nb_samples, nb_sources * 2 * channels, -1))
    x = x * reshape(inputs["std"], (nb_samples, 1, 1)) + reshape(inputs["mean"], (nb_samples, 1, 1))
    x = reshape(x, (nb_samples * nb_sources, 2 * channels, x_shape[2], x_shape[3]))
    wave = reshape(ispec_graph(x, length, nfft=c.nfft, hop=c.hop_length), (nb_samples, nb_sources, channels, length))
    xt = reshape(xt, (nb_samples, nb_sources * channels, length)) * inputs["std_t"] + inputs["mean_t"]
    return inputs, reshape(xt, (nb_samples, nb_sources, channels, length)) + wave


def forward(
    model: HTDemucs,
    mix: np.ndarray,
    window: np.ndarray | None = None,
    stats: Mapping[str, Any] | None = None,
    traced: bool = False,
    training: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Separate ``mix``: the whole forward (module docstring), ``(output, trace)``.

    Args:
        model: the network.
        mix: ``(nb_samples, audio_channels, L)``; ``L <= config.segment_samples`` with ``use_train_segment``.
        window: the STFT window ``(nfft,)``; ``None`` is the float32 periodic Hann window.
        stats: the input statistics to use instead of computing them: ``mean`` / ``std`` of the frequency branch's
            input and ``mean_t`` / ``std_t`` of the time branch's, ``(nb_samples,)`` each.
        traced: fill the trace with every key of :func:`~core_spec.reference.htdemucs.htdemucs_trace_keys`
            (float32 NumPy arrays in the spec's layouts); otherwise it is empty.
        training: the training-mode forward: the network at ``L`` itself, whatever the training segment.

    Returns:
        ``(output (nb_samples, nb_sources, audio_channels, L) float32, trace)``.
    """
    c = model.config
    mix = np.asarray(mix, dtype=np.float32)
    if mix.ndim != 3 or mix.shape[1] != c.audio_channels:
        raise ValueError(f"HTDemucs expects (nb_samples, {c.audio_channels}, nb_timesteps), got {mix.shape}")
    trace: dict[str, np.ndarray] = {}
    length = mix.shape[-1]
    training_length = length if training else model.valid_length(length)
    mix = np.pad(mix, ((0, 0), (0, 0), (0, training_length - length)))

    inputs = network_inputs(model, mix, window, stats)
    if traced:
        trace["magnitude"] = inputs["magnitude"]
    x, xt, mean, std, mean_t, std_t = (inputs[k] for k in ("x", "xt", "mean", "std", "mean_t", "std_t"))

    x_in, xt_in, sink, x_out, xt_out, graph_trace = model.graphs((mix.shape[0], training_length, int(traced)))
    x_in.d, xt_in.d = x, xt
    sink.forward(clear_buffer=True)
    for key, var in graph_trace.items():
        trace[key] = var.d.copy()

    nb_samples, nb_sources = mix.shape[0], len(c.sources)
    y = x_out.d.reshape(nb_samples, nb_sources, -1, *x_out.shape[-2:])
    wave = ispec(
        mask_cac(denormalise_output(y, mean, std)), training_length, nfft=c.nfft, hop=c.hop_length, window=window
    )
    yt = denormalise_output(xt_out.d.reshape(nb_samples, nb_sources, -1, training_length), mean_t, std_t)
    out = (yt + wave)[..., :length].astype(np.float32, copy=False)
    if traced:
        trace["ispec"] = wave
        trace["output"] = out
    return out, trace
