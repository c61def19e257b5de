"""Open-Unmix, one target: ``openunmix.model.OpenUnmix`` of openunmix 1.3.0 as a Keras 3 model.

Layers and how they hold upstream's weights (the mapping lives in :mod:`umx_tf.weights`):

- ``fc1``, ``fc2``, ``fc3``: ``keras.layers.Dense(use_bias=False)``, ``kernel = weight.T``;
- ``bn1``, ``bn2``, ``bn3``: :class:`TorchBatchNorm`, a ``keras.layers.BatchNormalization(epsilon=1e-5)`` (PyTorch's
  epsilon, not Keras's 1e-3; ``momentum=0.9`` is PyTorch's 0.1) that trains as ``torch.nn.BatchNorm1d``,
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

from core_spec.configs import UMXConfig
from core_spec.reference.layers import BATCH_NORM_EPS

__all__ = ["LSTM", "UMX_TRACE_KEYS", "OpenUnmix", "TorchBatchNorm", "TracedCall", "lstm_layer", "lstm_recurrence"]

# Intermediate outputs recorded by ``call(x, trace=...)``, as in ``core_spec.reference.umx.UMX_TRACE_KEYS``.
UMX_TRACE_KEYS = ("fc1.input", "fc1", "bn1", "lstm", "fc2.input", "fc2", "bn2", "fc3.input", "fc3", "bn3")


def _frame_major(x: tf.Tensor, flatten: bool = True) -> tf.Tensor:
    """``(B, T, K)`` -> the spec's trace layout ``(T * B, K)`` (``(T, B, K)`` without ``flatten``)."""
    x = tf.transpose(x, [1, 0, 2])
    return tf.reshape(x, [-1, x.shape[-1]]) if flatten else x


def torch_uniform(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default init of linear and recurrent weights: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / np.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


# kaiming_uniform(a=sqrt(5)) of torch.nn.Linear / Conv1d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in from the kernel
TORCH_KERNEL_INIT = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def _lstm_step(recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor, z: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """One LSTM step: ``(h, c, activated gates i|f|g|o)`` from the previous ``h, c`` and the projected input."""
    i, f, g, o = tf.split(z + tf.matmul(h, recurrent_kernel), 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c + i * g
    return o * tf.tanh(c), c, tf.concat([i, f, g, o], axis=-1)


@tf.function(jit_compile=True)
def _recurrence(projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Forward for inference: ``(hidden states (T, B, H), last h, last c)``."""

    def step(carry: tuple[tf.Tensor, tf.Tensor], z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        h, c, _ = _lstm_step(recurrent_kernel, *carry, z)
        return h, c

    hs, cs = tf.scan(step, projected, initializer=(h, c))
    return hs, hs[-1], cs[-1]


@tf.function(jit_compile=True)
def _recurrence_saved(
    projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor
) -> tuple[tf.Tensor, ...]:
    """Forward for training: every step's ``h (T, B, H)``, ``c (T, B, H)`` and activated gates ``(T, B, 4 H)``."""

    def step(carry: tuple[tf.Tensor, ...], z: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return _lstm_step(recurrent_kernel, carry[0], carry[1], z)

    gates = tf.zeros_like(projected[0])
    return tf.scan(step, projected, initializer=(h, c, gates))


@tf.function(jit_compile=True)
def _recurrence_backward(
    dhs: tf.Tensor,
    dh_last: tf.Tensor,
    dc_last: tf.Tensor,
    hs: tf.Tensor,
    cs: tf.Tensor,
    gates: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    h0: tf.Tensor,
    c0: tf.Tensor,
) -> tuple[tf.Tensor, ...]:
    """Backpropagation through time, one XLA-compiled reverse loop.

    With ``dh`` the gradient reaching ``h_t`` (from the output and from step ``t + 1``) and ``dc`` that reaching
    ``c_t``: ``dc += dh o (1 - tanh(c_t)^2)``; the pre-activation gradients are ``dz = [dc g i (1 - i), dc c_{t-1}
    f (1 - f), dc i (1 - g^2), dh tanh(c_t) o (1 - o)]``; ``h_{t-1}`` receives ``dz W^T``, ``c_{t-1}`` receives
    ``dc f``. ``dz`` of every step is the projected input's gradient, and ``dW = sum_t h_{t-1}^T dz_t``.

    Returns:
        ``(d projected (T, B, 4 H), d recurrent_kernel (H, 4 H), d h0, d c0)``.
    """
    c_prev = tf.concat([c0[None], cs[:-1]], axis=0)

    def step(carry: tuple[tf.Tensor, ...], inputs: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, ...]:
        dh_next, dc_next, _ = carry
        dh_out, c, c_before, activated = inputs
        i, f, g, o = tf.split(activated, 4, axis=-1)
        dh = dh_out + dh_next
        tc = tf.tanh(c)
        dc = dc_next + dh * o * (1.0 - tc * tc)
        dz = tf.concat(
            [dc * g * i * (1.0 - i), dc * c_before * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)],
            axis=-1,
        )
        return tf.matmul(dz, recurrent_kernel, transpose_b=True), dc * f, dz

    initial = (dh_last, dc_last, tf.zeros_like(gates[0]))
    dh_prev, dc_prev, dz = tf.scan(step, (dhs, cs, c_prev, gates), initializer=initial, reverse=True)
    h_prev = tf.concat([h0[None], hs[:-1]], axis=0)
    d_kernel = tf.einsum("tbh,tbg->hg", h_prev, dz)
    return dz, d_kernel, dh_prev[0], dc_prev[0]


def _zeros_if_none(grad: tf.Tensor | None, like: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(like) if grad is None else grad


def _detached(*tensors: tf.Tensor) -> list[tf.Tensor]:
    """The inputs, cut from any recording tape: the compiled loops inside a custom gradient must not be recorded
    (TensorFlow would try to differentiate them itself)."""
    return [tf.stop_gradient(t) for t in tensors]


@tf.custom_gradient
def _lstm_inference(projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
    projected, recurrent_kernel, h, c = _detached(projected, recurrent_kernel, h, c)
    hs, h_last, c_last = _recurrence(projected, recurrent_kernel, h, c)

    def grad(dhs: tf.Tensor, dh_last: tf.Tensor, dc_last: tf.Tensor) -> tuple[tf.Tensor, ...]:
        hs2, cs, gates = _recurrence_saved(projected, recurrent_kernel, h, c)  # recomputed: nothing was kept
        return _recurrence_backward(
            _zeros_if_none(dhs, hs), _zeros_if_none(dh_last, h), _zeros_if_none(dc_last, c),
            hs2, cs, gates, recurrent_kernel, h, c,
        )  # fmt: skip

    return (hs, h_last, c_last), grad


@tf.custom_gradient
def _lstm_training(projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
    projected, recurrent_kernel, h, c = _detached(projected, recurrent_kernel, h, c)
    hs, cs, gates = _recurrence_saved(projected, recurrent_kernel, h, c)

    def grad(dhs: tf.Tensor, dh_last: tf.Tensor, dc_last: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return _recurrence_backward(
            _zeros_if_none(dhs, hs), _zeros_if_none(dh_last, h), _zeros_if_none(dc_last, c),
            hs, cs, gates, recurrent_kernel, h, c,
        )  # fmt: skip

    return (hs, hs[-1], cs[-1]), grad


def lstm_recurrence(
    projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor, training: bool = False
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The LSTM recurrence over time, one XLA-compiled loop (traced once per shape and dtype, shared by every
    layer of that shape), differentiable through its own XLA-compiled backward loop.

    XLA cannot hand the loop's saved intermediates to TensorFlow's automatic gradient of ``tf.scan``, so the
    gradient is written out (:func:`_recurrence_backward`). With ``training`` the forward keeps every step's
    cell state and gates for it; without, it keeps nothing and the backward (if any) recomputes them.

    Args:
        projected: ``x_t @ kernel + bias`` of every step, ``(nb_frames, nb_samples, 4 H)``, gates ``i, f, c, o``.
        recurrent_kernel: ``(H, 4 H)``.
        h, c: initial states ``(nb_samples, H)``.
        training: keep the intermediates for a backward pass.

    Returns:
        ``(hidden states (nb_frames, nb_samples, H), last h, last c)``.
    """
    return (_lstm_training if training else _lstm_inference)(projected, recurrent_kernel, h, c)


@keras.saving.register_keras_serializable(package="umx_tf")
class LSTM(layers.LSTM):
    """``keras.layers.LSTM`` (same weights, config and semantics) whose loop is faster on CPU.

    The input projection ``x @ kernel + bias`` of all steps is one matrix product, and the recurrence is one
    XLA-compiled loop (:func:`lstm_recurrence`) instead of Keras's generic per-step cell call (which also
    recomputes the input projection every step); its gradient is a second XLA-compiled loop, running backwards
    over the steps (with ``training=True`` the forward keeps what it needs). Used for ``tanh``/``sigmoid``
    without masks or recurrent dropout; anything else falls back to Keras's own loop. Gate order ``i, f, c, o`` =
    PyTorch's ``i, f, g, o``.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        fast = (
            mask is None
            and not self.unroll
            and not (training and (cell.dropout or cell.recurrent_dropout))
            and cell.use_bias
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
        )
        if not fast:
            return super().inner_loop(sequences, initial_state, mask, training)
        x = tf.reverse(sequences, [1]) if self.go_backwards else sequences  # Keras returns steps in loop order
        projected = tf.einsum("bti,ig->tbg", x, cell.kernel) + cell.bias  # (T, B, 4H)
        h0, c0 = (tf.cast(s, projected.dtype) for s in initial_state)
        kernel = tf.convert_to_tensor(cell.recurrent_kernel)
        outputs, h, c = lstm_recurrence(projected, kernel, h0, c0, training=bool(training))
        return h, tf.transpose(outputs, [1, 0, 2]), [h, c]


@keras.saving.register_keras_serializable(package="umx_tf")
class TorchBatchNorm(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` over the last axis that trains as ``torch.nn.BatchNorm1d``.

    Inference (``training=False``) is Keras's own. In training, the batch is normalised with its mean and *biased*
    variance (``(x - mean) / sqrt(var + eps) * gamma + beta``), and the running statistics move as PyTorch's:
    ``running = (1 - m) * running + m * batch_stat`` with ``m = 1 - momentum`` (``momentum=0.9`` here is
    PyTorch's 0.1) and the *unbiased* variance ``var * n / (n - 1)`` (``n``: values per channel). Keras's own
    layer puts the biased variance into its moving average.

    Under a ``tf.distribute`` strategy each replica normalises with its own batch statistics and the running
    statistics of the first replica are kept (``aggregation="only_first_replica"``), as DDP broadcasts rank 0's
    buffers.
    """

    def add_weight(self, *args: Any, **kwargs: Any) -> keras.Variable:
        if kwargs.get("name") in ("moving_mean", "moving_variance"):
            kwargs.setdefault("aggregation", "only_first_replica")
        return super().add_weight(*args, **kwargs)

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: Any = None) -> tf.Tensor:
        """``inputs`` ``(..., channels)``: normalised over every axis but the last."""
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = tf.convert_to_tensor(inputs)
        axes = list(range(x.shape.rank - 1))
        mean = tf.reduce_mean(x, axis=axes)
        centred = x - mean
        n = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
        squares = tf.reduce_sum(tf.square(centred), axis=axes)
        var = squares / n  # biased: normalises the batch
        unbiased = squares / (n - 1.0)  # goes into the running variance
        out = centred * tf.math.rsqrt(var + self.epsilon)
        if self.scale:
            out = out * tf.cast(self.gamma, x.dtype)
        if self.center:
            out = out + tf.cast(self.beta, x.dtype)
        rate = round(1.0 - self.momentum, 12)  # PyTorch's momentum (0.1)
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, unbiased)):
            old = tf.cast(moving, batch.dtype)
            moving.assign(tf.cast((1.0 - rate) * old + rate * tf.stop_gradient(batch), moving.dtype))
        return tf.cast(out, self.compute_dtype)


def lstm_layer(units: int, bidirectional: bool, policy: Any, name: str) -> layers.Layer:
    """One layer of ``torch.nn.LSTM``: :class:`LSTM` (or ``Bidirectional(LSTM)``, outputs concatenated forward |
    backward), returning every step, sigmoid gates, PyTorch's uniform init."""
    init = torch_uniform(units)
    rnn = LSTM(
        units,
        return_sequences=True,
        recurrent_activation="sigmoid",
        kernel_initializer=init,
        recurrent_initializer=init,
        bias_initializer=init,
        unit_forget_bias=False,
        dtype=policy,
        name=name,
    )
    if not bidirectional:
        return rnn
    return layers.Bidirectional(rnn, merge_mode="concat", dtype=policy, name=f"bidirectional_{name}")


class TracedCall:
    """Mixin: ``layer(x, trace=dict)`` fills ``dict``.

    Keras's ``__call__`` maps every nested argument (dicts included) to a copy before ``call`` sees it, so a
    trace dict would stay empty. With ``trace`` given, the call goes straight to ``call`` (eagerly, for
    inspection); without it, through Keras as usual.
    """

    def __call__(self, *args: Any, trace: dict[str, tf.Tensor] | None = None, **kwargs: Any) -> Any:
        if trace is not None:
            return self.call(*args, trace=trace, **kwargs)
        return super().__call__(*args, **kwargs)


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
        super().__init__(**kwargs)
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin or nb_bins
        self.nb_channels = nb_channels
        self.hidden_size = hidden_size
        self.nb_layers = nb_layers
        self.unidirectional = unidirectional
        self.max_bin = max_bin
        lstm_hidden = hidden_size if unidirectional else hidden_size // 2
        policy = self.dtype_policy

        def batch_norm(name: str) -> TorchBatchNorm:
            return TorchBatchNorm(epsilon=BATCH_NORM_EPS, momentum=0.9, dtype=policy, name=name)

        def dense(units: int, name: str) -> layers.Dense:
            return layers.Dense(units, use_bias=False, kernel_initializer=TORCH_KERNEL_INIT, dtype=policy, name=name)

        self.fc1 = dense(hidden_size, "fc1")
        self.bn1 = batch_norm("bn1")
        self.lstm = [lstm_layer(lstm_hidden, not unidirectional, policy, f"lstm_{i}") for i in range(nb_layers)]
        # nn.LSTM(dropout=0.4): on the outputs of every layer but the last, in training only
        self.lstm_dropout = layers.Dropout(0.4 if nb_layers > 1 else 0.0, dtype=policy, name="lstm_dropout")
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
            return cls(
                nb_bins=config.nb_bins,
                nb_channels=config.nb_channels,
                hidden_size=config.hidden_size,
                nb_layers=config.nb_layers,
                unidirectional=config.unidirectional,
                max_bin=config.max_bin,
                dtype=dtype,
            )
        return super().from_config(config, custom_objects)

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        return {
            **{k: base[k] for k in ("name", "dtype", "trainable") if k in base},
            "nb_bins": self.nb_output_bins,
            "nb_channels": self.nb_channels,
            "hidden_size": self.hidden_size,
            "nb_layers": self.nb_layers,
            "unidirectional": self.unidirectional,
            "max_bin": self.max_bin,
        }

    @property
    def config(self) -> UMXConfig:
        """The :class:`core_spec.configs.UMXConfig` of this model."""
        return UMXConfig(
            nb_bins=self.nb_output_bins,
            nb_channels=self.nb_channels,
            hidden_size=self.hidden_size,
            nb_layers=self.nb_layers,
            unidirectional=self.unidirectional,
            max_bin=self.max_bin,
        )

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
        record: dict[str, tf.Tensor] = {}

        def keep(key: str, value: tf.Tensor, flatten: bool = True) -> tf.Tensor:
            if trace is not None:
                record[key] = _frame_major(value, flatten)
            return value

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
        keep("lstm", y, flatten=False)

        h = keep("fc2.input", tf.concat([h, y], axis=-1))  # skip connection: (B, T, 2H)
        h = keep("fc2", self.fc2(h))
        h = keep("bn2", self.bn2(h, training=training))
        h = keep("fc3.input", tf.nn.relu(h))
        h = keep("fc3", self.fc3(h))  # (B, T, C*F): features in (c, f) order
        h = keep("bn3", self.bn3(h, training=training))

        h = tf.reshape(h, [nb_samples, nb_frames, self.nb_channels, self.nb_output_bins])
        mask = tf.nn.relu(h * self.output_scale + self.output_mean)
        if trace is not None:
            trace.update(record)
        return tf.transpose(mask * mix, [0, 2, 3, 1])
