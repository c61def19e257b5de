"""Demucs v2 (``demucs/model.py`` of demucs 2.0.3, the waveform model) as an NNabla graph.

``Demucs(...)(mix)`` builds the network on an ``nn.Variable`` ``(nb_samples, audio_channels, nb_timesteps)`` with
parametric functions under scopes named after upstream's modules (``core_spec.reference.demucs`` is the spec)::

    encoder/<i>/0/conv/{W (ch, chin, kernel_size), b}    PF.convolution, stride `stride`, then ReLU
    encoder/<i>/2/conv/{W (2 ch, ch, 1), b}              1x1 convolution, then GLU            (rewrite)
    decoder/<j>/0/conv/{W (2 ch, ch, context), b}        "valid" convolution, then GLU        (rewrite)
    decoder/<j>/2/deconv/{W (ch, out, kernel_size), b}   PF.deconvolution, stride `stride` (weight (in, out, k),
                                                         upstream's ConvTranspose1d layout), then ReLU but on the
                                                         outermost decoder (j = depth - 1)
    lstm/lstm/lstm/{weight_l0, weight, bias}             the bidirectional LSTM (:func:`umx_nnabla.layers.lstm`)
    lstm/linear/affine/{W (2 ch, ch), b}                 PF.affine(base_axis=2)

NNabla has no GLU: ``a * sigmoid(b)`` on the two halves of the channel axis (value first, gate second). The
network never pads: :func:`valid_length` and :func:`center_trim` (from :mod:`core_spec.shapes`) make every length
change visible; :func:`umx_nnabla.separator.apply_model` pads and trims.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import AbstractContextManager
from typing import Any

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import numpy as np

from core_spec import shapes
from core_spec.configs import DemucsConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.demucs import DEMUCS_NORM_EPS, demucs_trace_keys
from core_spec.shapes import valid_length
from core_spec.trace import Recorder

from ._context import GraphCache
from .layers import glu, lstm, persistent, resolve_lstm_impl
from .resample import resample_frac

__all__ = ["Demucs", "center_trim", "valid_length"]


def center_trim(x: nn.Variable, reference: int) -> nn.Variable:
    """Keep the centre ``reference`` samples of the last axis (the odd extra sample is removed on the right)."""
    start, stop = shapes.center_trim_bounds(x.shape[-1], reference)
    if (start, stop) == (0, x.shape[-1]):
        return x
    lead = tuple(x.shape[:-1])
    return F.slice(x, (0,) * len(lead) + (start,), lead + (stop,))


class Demucs:
    """Demucs v2, eval mode. Constructor arguments are upstream's (``demucs.model.Demucs``); see
    :class:`core_spec.configs.DemucsConfig`.

    Keyword-only:
        scope: parameter scope of this model inside ``params``.
        params: the parameter dictionary used as the root scope; ``None``: a new one.
        lstm_impl: see :func:`umx_nnabla.layers.lstm`.
    """

    def __init__(
        self,
        sources: tuple[str, ...] | list[str],
        audio_channels: int = 2,
        channels: int = 64,
        depth: int = 6,
        rewrite: bool = True,
        glu: bool = True,
        rescale: float = 0.1,
        resample: bool = True,
        kernel_size: int = 8,
        stride: int = 4,
        growth: float = 2.0,
        lstm_layers: int = 2,
        context: int = 3,
        normalize: bool = False,
        samplerate: int = 44100,
        segment_length: int = 4 * 10 * 44100,
        *,
        scope: str = "",
        params: OrderedDict | None = None,
        lstm_impl: str = "auto",
    ):
        self._config = config_from_arguments(DemucsConfig, locals())
        self.scope = scope
        self.params: OrderedDict = OrderedDict() if params is None else params
        resolve_lstm_impl(lstm_impl)
        self.lstm_impl = lstm_impl
        self.graphs = GraphCache(self._build_graph)

    @classmethod
    def from_config(cls, config: DemucsConfig, **kwargs: Any) -> Demucs:
        return cls(**constructor_kwargs(config), **kwargs)

    @property
    def config(self) -> DemucsConfig:
        """The :class:`core_spec.configs.DemucsConfig` of this model."""
        return self._config

    # upstream's attribute names
    @property
    def sources(self) -> tuple[str, ...]:
        return self.config.sources

    @property
    def audio_channels(self) -> int:
        return self.config.audio_channels

    @property
    def samplerate(self) -> int:
        return self.config.samplerate

    @property
    def segment_length(self) -> int:
        return self.config.segment_length

    def valid_length(self, length: int) -> int:
        return valid_length(length, self.config)

    def parameter_scope(self) -> AbstractContextManager:
        return nn.parameter_scope(self.scope, self.params)

    def get_parameters(self, grad_only: bool = False) -> OrderedDict:
        with self.parameter_scope():
            return nn.get_parameters(grad_only=grad_only)

    def _activation(self, x: nn.Variable) -> nn.Variable:
        return glu(x, axis=1) if self.config.glu else F.relu(x)

    def _check(self, x: nn.Variable, kernel: int, name: str) -> None:
        if x.shape[-1] < kernel:
            raise ValueError(
                f"{name}: input of {x.shape[-1]} steps is shorter than the kernel ({kernel}); pad the mixture to "
                "core_spec.shapes.valid_length() first (apply_model does)"
            )

    def encoder_layer(self, index: int, x: nn.Variable) -> nn.Variable:
        """``encoder.{index}``: ``(B, chin, L)`` -> ``(B, ch, (L - kernel_size) // stride + 1)``."""
        c = self.config
        ch = c.layer_channels()[index][1]
        self._check(x, c.kernel_size, f"encoder.{index}.0")
        with nn.parameter_scope(f"encoder/{index}"):
            x = F.relu(PF.convolution(x, ch, (c.kernel_size,), stride=(c.stride,), name="0"))
            if c.rewrite:
                x = self._activation(PF.convolution(x, (2 if c.glu else 1) * ch, (1,), name="2"))
        return x

    def decoder_layer(self, index: int, x: nn.Variable) -> nn.Variable:
        """``decoder.{index}`` (0 = deepest): ``(B, ch, L)`` -> ``(B, out, (L - context) * stride + kernel_size)``."""
        c = self.config
        layer = c.depth - 1 - index
        chin, ch = c.layer_channels()[layer]
        out = len(c.sources) * c.audio_channels if layer == 0 else chin
        slot = 0
        with nn.parameter_scope(f"decoder/{index}"):
            if c.rewrite:
                self._check(x, c.context, f"decoder.{index}.0")
                x = self._activation(PF.convolution(x, (2 if c.glu else 1) * ch, (c.context,), name="0"))
                slot = 2
            x = PF.deconvolution(x, out, (c.kernel_size,), stride=(c.stride,), name=str(slot))
        return F.relu(x) if index < c.depth - 1 else x

    def blstm(self, x: nn.Variable, keep: Recorder, train: bool = False) -> nn.Variable:
        """``lstm`` (demucs's ``BLSTM``): ``(B, ch, T)`` -> bidirectional LSTM over T -> linear -> ``(B, ch, T)``.
        ``train``: the two upstream LSTM biases as parameters (:func:`umx_nnabla.layers.lstm_parameters`); demucs's
        LSTM has no dropout."""
        ch = x.shape[1]
        with nn.parameter_scope("lstm"):
            layers = self.config.lstm_layers
            x = F.transpose(x, (2, 0, 1))
            y = keep("lstm.lstm", lstm(x, ch, layers, True, self.lstm_impl, train=train, name="lstm"))  # (T, B, 2ch)
            y = PF.affine(y, ch, base_axis=2, name="linear")  # (T, B, ch)
        return F.transpose(y, (1, 2, 0))

    def __call__(
        self, mix: nn.Variable, trace: dict[str, nn.Variable] | None = None, *, train: bool = False
    ) -> nn.Variable:
        """Build the network on ``mix``.

        Args:
            mix: ``(nb_samples, audio_channels, nb_timesteps)``, ``nb_timesteps`` a length the network takes whole
                (``valid_length(L)`` for some ``L``).
            trace: if given, filled with the Variables named in ``core_spec.reference.demucs.demucs_trace_keys``
                (made persistent), in the same layouts.
            train: training mode (:mod:`umx_nnabla.train`): the same network (Demucs v2 has no BatchNorm and no
                dropout) with the LSTM's two upstream biases as trainable parameters.

        Returns:
            ``(nb_samples, nb_sources, audio_channels, output_length(nb_timesteps))``.
        """
        c = self.config
        if mix.ndim != 3 or mix.shape[1] != c.audio_channels:
            raise ValueError(f"Demucs expects (nb_samples, {c.audio_channels}, nb_timesteps), got {mix.shape}")
        keep = Recorder(trace, demucs_trace_keys(c), persistent)
        x = mix
        with self.parameter_scope():
            if c.normalize:
                nb_timesteps = x.shape[-1]
                mono = F.mean(x, axis=1, keepdims=True)  # (B, 1, L)
                mean = F.mean(mono, axis=2, keepdims=True)  # (B, 1, 1)
                centred = mono - mean
                std = F.pow_scalar(F.sum(centred * centred, axis=2, keepdims=True) / (nb_timesteps - 1), 0.5)
                x = (x - mean) / (std + DEMUCS_NORM_EPS)  # unbiased std, as torch.std
            else:
                x = x / F.constant(1.0 + DEMUCS_NORM_EPS, (1, 1, 1))  # executed upstream even without normalize

            if c.resample:
                x = keep("resample.up", resample_frac(x, 1, 2))

            saved = []
            for index in range(c.depth):
                x = keep(f"encoder.{index}", self.encoder_layer(index, x))
                saved.append(x)

            if c.lstm_layers:
                x = keep("lstm", self.blstm(x, keep, train))

            for index in range(c.depth):
                skip = center_trim(saved.pop(), x.shape[-1])  # a decoder never outgrows its encoder
                x = keep(f"decoder.{index}", self.decoder_layer(index, x + skip))

            if c.resample:
                x = keep("resample.down", resample_frac(x, 2, 1))

            if c.normalize:
                x = x * std + mean
        return F.reshape(x, (x.shape[0], len(c.sources), c.audio_channels, x.shape[-1]))

    def _build_graph(self, shape: tuple[int, ...]) -> tuple[nn.Variable, nn.Variable]:
        inp = nn.Variable(shape)
        return inp, self(inp)

    def infer(self, mix: np.ndarray) -> np.ndarray:
        """Run the network on a NumPy ``(nb_samples, audio_channels, nb_timesteps)`` (float32); the graph is kept
        per input shape (:attr:`graphs`: a split track has one or two chunk lengths)."""
        inp, out = self.graphs(mix.shape)
        inp.d = mix
        out.forward(clear_buffer=True)
        return out.d.copy()
