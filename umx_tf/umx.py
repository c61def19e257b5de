"""Open-Unmix, one target: ``openunmix.model.OpenUnmix`` of openunmix 1.3.0 as a Keras 3 model.

Layers and how they hold upstream's weights (the mapping lives in :mod:`umx_tf.weights`):

- ``fc1``, ``fc2``, ``fc3``: ``keras.layers.Dense(use_bias=False)``, ``kernel = weight.T``;
- ``bn1``, ``bn2``, ``bn3``: :class:`~umx_tf.layers.TorchBatchNorm`, a ``keras.layers.BatchNormalization(epsilon=1e-5)``
  (PyTorch's epsilon, not Keras's 1e-3; ``momentum=0.9`` is PyTorch's 0.1) that trains as ``torch.nn.BatchNorm1d``,
  ``gamma/beta/moving_mean/moving_variance = weight/bias/running_*``;
- ``lstm``: one ``keras.layers.Bidirectional(keras.layers.LSTM(...))`` per layer (a plain ``LSTM`` when
  unidirectional), ``recurrent_activation="sigmoid"``. Keras's gate order ``i, f, c, o`` is PyTorch's
  ``i, f, g, o``: ``kernel = weight_ih.T``, ``recurrent_kernel = weight_hh.T``, ``bias = bias_ih + bias_hh``;
- ``input_mean``, ``input_scale``, ``output_scale``, ``output_mean``: weights of the model itself.

The network runs batch-major inside, ``(nb_samples, nb_frames, ...)`` (the layout Keras's recurrent layers
take); flatten orders are upstream's: the inputs of ``fc1`` are ``c * max_bin + f``, the outputs of ``fc3`` are
``c * nb_bins + f``. The spec is ``core_spec.reference.umx.open_unmix``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from core_spec.configs import UMXConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.layers import BATCH_NORM_EPS, BATCH_NORM_MOMENTUM
from core_spec.reference.umx import UMX_TRACE_KEYS
from core_spec.trace import Recorder

from .layers import TorchBatchNorm, TracedCall, lstm_layer, torch_kernel_init

__all__ = ["UMX_TRACE_KEYS", "OpenUnmix"]


def _time_major(x: tf.Tensor) -> tf.Tensor:
    """``(B, T, K)`` -> ``(T, B, K)`` (the spec's layout of the LSTM output)."""
    return tf.transpose(x, [1, 0, 2])


def _frame_major(x: tf.Tensor) -> tf.Tensor:
    """``(B, T, K)`` -> the spec's trace layout ``(T * B, K)``."""
    x = _time_major(x)
    return tf.reshape(x, [-1, x.shape[-1]])


@keras.saving.register_keras_serializable(package="umx_tf")
class OpenUnmix(TracedCall, keras.Model):
    """Spectrogram model of one target: a mask on the mixture magnitude.

    Args:
        nb_bins: STFT bins of the input (``n_fft // 2 + 1``).
        nb_channels: channels the network sees (2, or 1 for ``umxse``).
        hidden_size: width of the bottleneck (512 for ``umxhq``).
        nb_layers: LSTM layers.
        unidirectional: causal LSTM (``hidden_size`` units) instead of a bidirectional one (``hidden_size // 2``
            per direction).
        input_mean, input_scale: optional training statistics ``(nb_bins,)``; stored as ``-mean`` and
            ``1 / scale`` (upstream's convention), cropped to ``max_bin``.
        max_bin: bins the network reads (the bandwidth crop); ``None`` reads all.
        dtype: Keras dtype policy (``"float32"`` or ``"float64"``).
    """

    def __init__(
        self,
        nb_bins: int = 4096,
        nb_channels: int = 2,
        hidden_size: int = 512,
        nb_layers: int = 3,
        unidirectional: bool = False,
        input_mean: np.ndarray | None = None,
        input_scale: np.ndarray | None = None,
        max_bin: int | None = None,
        **kwargs: Any,
    ):
        config = config_from_arguments(UMXConfig, locals())  # checked here
        super().__init__(**kwargs)
        self._config = config
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin or nb_bins
        self.nb_channels = nb_channels
        self.hidden_size = hidden_size
        self.nb_layers = nb_layers
        self.unidirectional = unidirectional
        self.max_bin = max_bin
        policy = self.dtype_policy

        def batch_norm(name: str) -> TorchBatchNorm:  # Keras's momentum is the decay: 1 - PyTorch's
            return TorchBatchNorm(epsilon=BATCH_NORM_EPS, momentum=1 - BATCH_NORM_MOMENTUM, dtype=policy, name=name)

        def dense(units: int, name: str) -> layers.Dense:
            return layers.Dense(units, use_bias=False, kernel_initializer=torch_kernel_init(), dtype=policy, name=name)

        self.fc1 = dense(hidden_size, "fc1")
        self.bn1 = batch_norm("bn1")
        units = config.lstm_hidden_size
        self.lstm = [lstm_layer(units, not unidirectional, policy, f"lstm_{i}") for i in range(nb_layers)]
        # nn.LSTM(dropout=0.4): on the outputs of every layer but the last, in training only
        self.lstm_dropout = layers.Dropout(config.lstm_dropout, dtype=policy, name="lstm_dropout")
        self.fc2 = dense(hidden_size, "fc2")
        self.bn2 = batch_norm("bn2")
        self.fc3 = dense(self.nb_output_bins * nb_channels, "fc3")
        self.bn3 = batch_norm("bn3")

        self.input_mean = self.add_weight(shape=(self.nb_bins,), initializer="zeros", name="input_mean")
        self.input_scale = self.add_weight(shape=(self.nb_bins,), initializer="ones", name="input_scale")
        self.output_scale = self.add_weight(shape=(nb_bins,), initializer="ones", name="output_scale")
        self.output_mean = self.add_weight(shape=(nb_bins,), initializer="ones", name="output_mean")
        if input_mean is not None:
            self.input_mean.assign(-np.asarray(input_mean, dtype=np.float64)[: self.nb_bins])
        if input_scale is not None:
            self.input_scale.assign(1.0 / np.asarray(input_scale, dtype=np.float64)[: self.nb_bins])
        self.build()

    def build(self, input_shape: Any = None) -> None:
        """Create every weight (the shapes follow from the constructor arguments; ``input_shape`` is ignored)."""
        h = self.hidden_size
        self.fc1.build((None, None, self.nb_channels * self.nb_bins))
        self.bn1.build((None, None, h))
        for layer in self.lstm:
            layer.build((None, None, h))
        self.fc2.build((None, None, 2 * h))
        self.bn2.build((None, None, h))
        self.fc3.build((None, None, h))
        self.bn3.build((None, None, self.nb_output_bins * self.nb_channels))
        self.built = True

    @classmethod
    def from_config(cls, config: UMXConfig | dict, custom_objects: Any = None, dtype: Any = None) -> OpenUnmix:
        """A model for a :class:`core_spec.configs.UMXConfig` (weights: Keras's initialisers), or Keras's
        deserialisation from a :meth:`get_config` dict."""
        if isinstance(config, UMXConfig):
            return cls(**constructor_kwargs(config), dtype=dtype)
        return super().from_config(config, custom_objects)

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        return {**{k: base[k] for k in ("name", "dtype", "trainable") if k in base}, **constructor_kwargs(self._config)}

    @property
    def config(self) -> UMXConfig:
        """The :class:`core_spec.configs.UMXConfig` of this model."""
        return self._config

    def call(self, x: tf.Tensor, training: bool = False, trace: dict[str, tf.Tensor] | None = None) -> tf.Tensor:
        """Estimate the target magnitude.

        Args:
            x: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
            training: batch statistics and dropout (the training recipe); ``False`` for inference.
            trace: if given, filled with the intermediate outputs named in :data:`UMX_TRACE_KEYS`, in the spec's
                frame-major layouts: ``(nb_frames * nb_samples, features)``; ``lstm``: ``(nb_frames,
                nb_samples, hidden_size)``.

        Returns:
            ``(nb_samples, nb_channels, nb_bins, nb_frames)``: a non-negative mask times the uncropped input.
        """
        if x.shape[1] != self.nb_channels or x.shape[2] != self.nb_output_bins:
            raise ValueError(
                f"OpenUnmix expects (nb_samples, {self.nb_channels}, {self.nb_output_bins}, nb_frames), "
                f"got {tuple(x.shape)}"
            )
        keep = Recorder(trace, UMX_TRACE_KEYS, _frame_major)
        x = tf.transpose(tf.cast(x, self.compute_dtype), [0, 3, 1, 2])  # (B, T, C, F)
        mix = tf.stop_gradient(x)  # the uncropped magnitude, masked at the end (detached, as upstream)
        shape = tf.shape(x)
        nb_samples, nb_frames = shape[0], shape[1]

        h = (x[..., : self.nb_bins] + self.input_mean) * self.input_scale
        h = keep("fc1.input", tf.reshape(h, [nb_samples, nb_frames, self.nb_channels * self.nb_bins]))
        h = keep("fc1", self.fc1(h))
        h = keep("bn1", self.bn1(h, training=training))
        h = tf.tanh(h)

        y = h
        for index, layer in enumerate(self.lstm):
            if index:
                y = self.lstm_dropout(y, training=training)
            y = layer(y, training=training)
        keep("lstm", y, _time_major)

        h = keep("fc2.input", tf.concat([h, y], axis=-1))  # skip connection: (B, T, 2H)
        h = keep("fc2", self.fc2(h))
        h = keep("bn2", self.bn2(h, training=training))
        h = keep("fc3.input", tf.nn.relu(h))
        h = keep("fc3", self.fc3(h))  # (B, T, C*F): features in (c, f) order
        h = keep("bn3", self.bn3(h, training=training))

        h = tf.reshape(h, [nb_samples, nb_frames, self.nb_channels, self.nb_output_bins])
        mask = tf.nn.relu(h * self.output_scale + self.output_mean)
        return tf.transpose(mask * mix, [0, 2, 3, 1])
