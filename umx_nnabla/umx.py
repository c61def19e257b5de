"""Open-Unmix (one target) as an NNabla graph.

``OpenUnmix(...)(x)`` builds the network on an ``nn.Variable`` with parametric functions under the model's
parameter scope, named the way NNabla users (and Sony's own ``x-umx``) name them::

    input_mean (max_bin,)  input_scale (max_bin,)  output_scale (nb_bins,)  output_mean (nb_bins,)
    fc1/affine/W (nb_channels * max_bin, hidden)        PF.affine(base_axis=2, with_bias=False)
    bn1/bn/{beta, gamma, mean, var} (1, 1, hidden)      PF.batch_normalization(axes=[2], batch_stat=False)
    lstm/lstm/{weight_l0, weight, bias}                 PF.lstm's packed layout (:func:`umx_nnabla.layers.lstm`)
    fc2/affine/W (2 hidden, hidden)   bn2/bn/*   fc3/affine/W (hidden, nb_channels * nb_bins)   bn3/bn/*

The forward is upstream's (``core_spec.reference.umx`` is the spec), frame-major ``(nb_frames, nb_samples, ...)``
inside; ``PF.affine`` with ``base_axis=2`` flattens ``(nb_channels, bins)`` in the same ``c * bins + f`` order as
upstream's ``reshape``. Weights come from the canonical files through :mod:`umx_nnabla.weights`.

**Training mode** (``model(x, train=True)``, used by :mod:`umx_nnabla.train`): the three BatchNorms normalise with
the batch statistics and update their running ones (``PF.batch_normalization(batch_stat=True, decay_rate=0.9)``:
torch's ``momentum=0.1``; NNabla updates the running variance with the *unbiased* batch variance, as torch does,
checked in ``parity_tests/nnabla/test_train.py``); the LSTM applies upstream's dropout (``p = 0.4`` between
layers when ``nb_layers > 1``; ``lstm_dropout=0`` for gradient parity) and reads its two upstream biases
``bias_ih``, ``bias_hh`` as trainable parameters (``bias = bias_ih + bias_hh`` in the graph: Adam and weight decay
then move each of them as torch does; training the folded bias alone would step the sum half as fast); the input
and output scalings are plain arithmetic (``F.batch_normalization`` with fixed statistics, the inference path,
gives no gradient to its ``mean`` input, i.e. to ``input_mean``).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import AbstractContextManager
from typing import Any

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import numpy as np
from nnabla.initializer import ConstantInitializer

from core_spec.configs import UMXConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.umx import UMX_TRACE_KEYS
from core_spec.trace import Recorder

from ._context import GraphCache
from .layers import (
    batch_norm,
    feature_affine,
    lstm,
    lstm_parameters,
    persistent,
    resolve_lstm_impl,
    unrolled_lstm,
)

__all__ = ["OpenUnmix", "open_unmix_stack"]


class OpenUnmix:
    """Open-Unmix for one target: mixture magnitude in, target magnitude out.

    Args (upstream's constructor, ``openunmix.model.OpenUnmix``):
        nb_bins: STFT bins of the input (``n_fft // 2 + 1``).
        nb_channels: channels the network sees.
        hidden_size: width of the fully connected layers (the LSTM has ``hidden_size // 2`` per direction when
            bidirectional).
        nb_layers: LSTM layers.
        unidirectional: one LSTM direction.
        max_bin: bins the network reads (the bandwidth crop); ``None``: all.
        scope: parameter scope of this model inside ``params`` (e.g. the target name in a separator).
        params: the parameter dictionary to use as the root scope; ``None``: a new one (the global NNabla scope is
            never touched).
        lstm_impl: see :func:`umx_nnabla.layers.lstm`.
    """

    def __init__(
        self,
        nb_bins: int = 4096,
        nb_channels: int = 2,
        hidden_size: int = 512,
        nb_layers: int = 3,
        unidirectional: bool = False,
        max_bin: int | None = None,
        *,
        scope: str = "",
        params: OrderedDict | None = None,
        lstm_impl: str = "auto",
    ):
        self._config = config_from_arguments(UMXConfig, locals())
        self.scope = scope
        self.params: OrderedDict = OrderedDict() if params is None else params
        resolve_lstm_impl(lstm_impl)
        self.lstm_impl = lstm_impl
        self.graphs = GraphCache(self._build_graph)

    @classmethod
    def from_config(cls, config: UMXConfig, **kwargs: Any) -> OpenUnmix:
        return cls(**constructor_kwargs(config), **kwargs)

    @property
    def config(self) -> UMXConfig:
        """The :class:`core_spec.configs.UMXConfig` of this model."""
        return self._config

    def parameter_scope(self) -> AbstractContextManager:
        """``nn.parameter_scope`` of this model's parameters."""
        return nn.parameter_scope(self.scope, self.params)

    def get_parameters(self, grad_only: bool = False) -> OrderedDict:
        """``{name: nn.Variable}`` of this model (names relative to its scope)."""
        with self.parameter_scope():
            return nn.get_parameters(grad_only=grad_only)

    @property
    def lstm_dropout(self) -> float:
        """Upstream's LSTM dropout in training mode (:attr:`core_spec.configs.UMXConfig.lstm_dropout`)."""
        return self._config.lstm_dropout

    def __call__(
        self,
        x: nn.Variable,
        trace: dict[str, nn.Variable] | None = None,
        *,
        train: bool = False,
        lstm_dropout: float | None = None,
    ) -> nn.Variable:
        """Build the network on ``x``.

        Args:
            x: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
            trace: if given, filled with the intermediate Variables named in
                ``core_spec.reference.umx.UMX_TRACE_KEYS`` (made persistent), frame-major
                ``(nb_frames, nb_samples, ...)``; ``fc1.input`` is ``(nb_frames, nb_samples, nb_channels, max_bin)``.
            train: training mode (``torch``'s ``model.train()``; see the module docstring): batch statistics in the
                BatchNorms (their running statistics are updated by every forward), LSTM dropout, the two upstream
                LSTM biases as parameters.
            lstm_dropout: the LSTM's dropout in training mode; ``None``: upstream's (:attr:`lstm_dropout`).

        Returns:
            the target magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``: a non-negative mask times the
            uncropped input.
        """
        c = self.config
        keep = Recorder(trace, UMX_TRACE_KEYS, persistent)
        dropout = self.lstm_dropout if lstm_dropout is None else lstm_dropout
        with self.parameter_scope():
            mix = _frame_major(x, c)
            h = self.encode(mix, keep, train)
            y = keep("lstm", lstm(h, c.lstm_hidden_size, c.nb_layers, not c.unidirectional, impl=self.lstm_impl,
                                  train=train, dropout=dropout, name="lstm"))  # fmt: skip
            return F.transpose(self.decode(h, y, mix, keep, train), (1, 2, 3, 0))

    def encode(self, mix: nn.Variable, keep: Recorder, train: bool = False) -> nn.Variable:
        """Up to the LSTM: the magnitude ``(T, B, C, F)`` -> ``tanh(bn1(fc1(...)))`` ``(T, B, H)``."""
        c = self.config
        nb_frames, nb_samples, nb_channels, nb_bins = mix.shape
        crop = c.crop_bins
        get = nn.parameter.get_parameter_or_create
        input_mean = get("input_mean", (crop,), ConstantInitializer(0.0))
        input_scale = get("input_scale", (crop,), ConstantInitializer(1.0))

        x = mix
        if crop < nb_bins:
            x = F.slice(x, (0, 0, 0, 0), (nb_frames, nb_samples, nb_channels, crop))
        x = keep("fc1.input", feature_affine(x, scale=input_scale, shift_before=input_mean, train=train))
        x = keep("fc1", PF.affine(x, c.hidden_size, base_axis=2, with_bias=False, name="fc1"))  # (T, B, H)
        x = keep("bn1", batch_norm(x, train, "bn1"))
        return F.tanh(x)

    def decode(
        self, x: nn.Variable, y: nn.Variable, mix: nn.Variable, keep: Recorder, train: bool = False
    ) -> nn.Variable:
        """After the LSTM: skip connection, fc2/bn2/ReLU, fc3/bn3, output scaling, mask times ``mix``
        (``(T, B, C, F)``, frame-major)."""
        nb_frames, nb_samples, nb_channels, nb_bins = mix.shape
        get = nn.parameter.get_parameter_or_create
        output_scale = get("output_scale", (nb_bins,), ConstantInitializer(1.0))
        output_mean = get("output_mean", (nb_bins,), ConstantInitializer(1.0))

        x = keep("fc2.input", F.concatenate(x, y, axis=2))  # skip connection: (T, B, 2H)
        x = keep("fc2", PF.affine(x, self.config.hidden_size, base_axis=2, with_bias=False, name="fc2"))
        x = keep("bn2", batch_norm(x, train, "bn2"))
        x = keep("fc3.input", F.relu(x))
        x = keep("fc3", PF.affine(x, nb_channels * nb_bins, base_axis=2, with_bias=False, name="fc3"))
        x = keep("bn3", batch_norm(x, train, "bn3"))

        x = F.reshape(x, (nb_frames, nb_samples, nb_channels, nb_bins))  # features in (c, f) order
        x = feature_affine(x, scale=output_scale, shift_after=output_mean, train=train)
        return F.relu(x) * mix

    def _build_graph(self, shape: tuple[int, ...]) -> tuple[nn.Variable, nn.Variable]:
        inp = nn.Variable(shape)
        return inp, self(inp)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run the network on a NumPy magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)`` (float32); the
        graph is kept per input shape (:attr:`graphs`)."""
        inp, out = self.graphs(x.shape)
        inp.d = x
        out.forward(clear_buffer=True)
        return out.d.copy()


def _frame_major(x: nn.Variable, config: UMXConfig) -> nn.Variable:
    """``(B, C, F, T)`` -> ``(T, B, C, F)``, the layout the network works in."""
    _, nb_channels, nb_bins, _ = x.shape
    if nb_channels != config.nb_channels or nb_bins != config.nb_bins:
        raise ValueError(
            f"OpenUnmix expects (nb_samples, {config.nb_channels}, {config.nb_bins}, nb_frames), got {x.shape}"
        )
    return F.transpose(x, (3, 0, 1, 2))


def open_unmix_stack(models: list[OpenUnmix], x: nn.Variable, frame_major: bool = False) -> list[nn.Variable]:
    """Several Open-Unmix models (the targets of a separator) on the same input, as one graph: the same networks
    as ``[model(x) for model in models]``, but the input is transposed once for all, and when the LSTMs are
    unrolled (the CPU default) all of them advance in one set of per-step functions (:func:`unrolled_lstm`), which
    makes building and running the graph about 2.5 times faster for four targets. Each model keeps its own
    parameter scope.

    Args:
        models: models of the same config.
        x: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        frame_major: return ``(nb_frames, nb_samples, nb_channels, nb_bins)`` (the networks' own layout, what
            the separator's Wiener filter reads) instead of the input's layout.
    """
    impls = {resolve_lstm_impl(m.lstm_impl) for m in models}
    configs = {m.config for m in models}
    if len(configs) != 1:
        raise ValueError("open_unmix_stack needs models of one config")
    c = models[0].config
    mix = _frame_major(x, c)
    encoded, params = [], []
    for model in models:
        with model.parameter_scope():
            encoded.append(model.encode(mix, Recorder(None, UMX_TRACE_KEYS)))
            with nn.parameter_scope("lstm/lstm"):
                params.append(lstm_parameters(c.hidden_size, c.lstm_hidden_size, c.nb_layers, c.nb_directions))
    if impls == {"unrolled"}:
        ys = unrolled_lstm(encoded, params, c.nb_layers)
    else:
        ys = []
        for model, h in zip(models, encoded):
            with model.parameter_scope():
                ys.append(lstm(h, c.lstm_hidden_size, c.nb_layers, not c.unidirectional, model.lstm_impl, name="lstm"))
    outs = []
    for model, h, y in zip(models, encoded, ys):
        with model.parameter_scope():
            out = model.decode(h, y, mix, Recorder(None, UMX_TRACE_KEYS))
        outs.append(out if frame_major else F.transpose(out, (1, 2, 3, 0)))
    return outs
