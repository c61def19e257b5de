"""The position and frequency embeddings of HTDemucs (demucs 4.x) and its 1x1 channel resamplers, in TensorFlow /
Keras 3.

The spec is :mod:`core_spec.reference.htdemucs_embed` (its docstring has the formulas):

- :func:`create_sin_embedding`: the time tokens' 1-D embedding ``(length, 1, dim)``, cos then sin (not interleaved),
  exponent divisor ``dim/2 - 1``;
- :func:`create_2d_sin_embedding`: the frequency tokens' 2-D embedding, here **channels-last**
  ``(1, height, width, d_model)`` (the spec's ``(1, d_model, height, width)`` moved), interleaved sin / cos of the
  width position in the first half of the channels, of the height position in the second;
- :func:`scaled_embedding` / :class:`ScaledEmbedding`: ``freq_emb``, rows ``0 .. nb_freqs-1`` of the stored table
  times ``scale``;
- :func:`channel_conv1x1`: ``channel_upsampler`` / ``channel_downsampler`` (and ``_t``), a 1x1 ``Conv1d`` on
  channels-last tokens of any rank (:class:`Conv1x1`, kernel ``(1, chin, chout)`` as Keras's ``Conv1D``).

Both sinusoidal embeddings are computed in the dtype asked for (the model's): float32 as upstream does by default,
float64 as upstream does under ``torch.set_default_dtype(torch.float64)``. TensorFlow's float32 ``sin`` / ``cos`` /
``pow`` are not torch's bit for bit; the float32 rows are judged by SNR against upstream's own float32 error.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

__all__ = [
    "Conv1x1",
    "ScaledEmbedding",
    "channel_conv1x1",
    "create_2d_sin_embedding",
    "create_sin_embedding",
    "scaled_embedding",
]


def create_sin_embedding(
    length: int, dim: int, shift: int = 0, max_period: float = 10000, dtype: Any = tf.float32
) -> tf.Tensor:
    """The 1-D sinusoidal embedding of the time tokens, ``(length, 1, dim)``: channel ``i < dim/2`` is
    ``cos(p / max_period ** (i / (dim/2 - 1)))``, channel ``dim/2 + i`` the ``sin`` of the same phase,
    ``p = shift + position``; computed in ``dtype``."""
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"create_sin_embedding: dim must be even and >= 4, got {dim}")
    half = dim // 2
    pos = tf.reshape(shift + tf.range(length, dtype=dtype), [-1, 1, 1])
    adim = tf.reshape(tf.range(half, dtype=dtype), [1, 1, -1])
    phase = pos / tf.pow(tf.constant(max_period, dtype), adim / (half - 1))
    return tf.concat([tf.cos(phase), tf.sin(phase)], axis=-1)


def create_2d_sin_embedding(
    d_model: int, height: int, width: int, max_period: float = 10000, dtype: Any = tf.float32
) -> tf.Tensor:
    """The 2-D sinusoidal embedding of the frequency tokens, channels-last ``(1, height, width, d_model)``.

    With ``d = d_model / 2`` and ``div_k = exp(-k ln(max_period) / d)`` (even ``k < d``): channels ``[0:d:2]`` are
    ``sin(w div)``, ``[1:d:2]`` ``cos(w div)`` (``w`` the width / time position), ``[d::2]`` ``sin(h div)`` and
    ``[d+1::2]`` ``cos(h div)`` (``h`` the height / frequency position).
    """
    if d_model % 4 != 0:
        raise ValueError(f"create_2d_sin_embedding: d_model must be a multiple of 4, got {d_model}")
    d = d_model // 2
    div = tf.exp(tf.range(0, d, 2, dtype=dtype) * -(math.log(max_period) / d))  # (d/2,)
    arg_w = tf.range(width, dtype=dtype)[:, None] * div  # (width, d/2)
    arg_h = tf.range(height, dtype=dtype)[:, None] * div  # (height, d/2)
    # interleave: (..., d/2, 2) -> (..., d) gives [sin, cos, sin, cos, ...]
    pe_w = tf.reshape(tf.stack([tf.sin(arg_w), tf.cos(arg_w)], axis=-1), [width, d])
    pe_h = tf.reshape(tf.stack([tf.sin(arg_h), tf.cos(arg_h)], axis=-1), [height, d])
    pe_w = tf.broadcast_to(pe_w[None, :, :], [height, width, d])
    pe_h = tf.broadcast_to(pe_h[:, None, :], [height, width, d])
    return tf.concat([pe_w, pe_h], axis=-1)[None]


def scaled_embedding(weight: Any, scale: float, nb_freqs: int) -> tf.Tensor:
    """``ScaledEmbedding``'s forward on the frequency indices ``0 .. nb_freqs-1``: ``weight[:nb_freqs] * scale``.

    Args:
        weight: the stored table ``(num_embeddings, dim)`` (a variable or a tensor).

    Returns:
        ``(nb_freqs, dim)``.

    Raises:
        ValueError: ``nb_freqs`` out of ``[0, num_embeddings]``.
    """
    rows = weight.shape[0]
    if not 0 <= nb_freqs <= rows:
        raise ValueError(f"scaled_embedding: {nb_freqs} rows asked of a table of {rows}")
    return tf.convert_to_tensor(weight)[:nb_freqs] * scale


def channel_conv1x1(chin: int, chout: int, *, dtype: Any = None, name: str | None = None) -> Conv1x1:
    """``channel_upsampler`` / ``channel_downsampler`` (and ``_t``): a :class:`Conv1x1` ``chin -> chout``."""
    return Conv1x1(chin, chout, dtype=dtype, name=name)


class ScaledEmbedding(keras.layers.Layer):
    """``ScaledEmbedding`` of demucs 4.x, the frequency embedding ``freq_emb``.

    Weight: ``embeddings (num_embeddings, dim)``, upstream's stored table (``embedding.weight``), which upstream
    keeps divided by ``scale``; the forward multiplies it back.
    """

    def __init__(self, num_embeddings: int, dim: int, scale: float = 10.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.scale = float(scale)
        init = keras.initializers.RandomNormal(stddev=1.0 / self.scale)  # upstream: N(0, 1), smoothed, / scale
        self.embeddings = self.add_weight(shape=(num_embeddings, dim), initializer=init, name="embeddings")
        self.built = True

    def call(self, nb_freqs: int) -> tf.Tensor:
        """The rows ``0 .. nb_freqs - 1`` times ``scale``: ``(nb_freqs, dim)``."""
        return scaled_embedding(self.embeddings, self.scale, nb_freqs)


class Conv1x1(keras.layers.Layer):
    """``torch.nn.Conv1d(chin, chout, 1)`` on channels-last ``(B, ..., chin) -> (B, ..., chout)`` (a 1x1
    convolution mixes channels only, so the frequency branch's ``(B, F, T, C)`` needs no flattening).

    Weights: ``kernel (1, chin, chout)`` (Keras's ``Conv1D`` layout), ``bias (chout,)``.
    """

    def __init__(self, chin: int, chout: int, **kwargs: Any):
        super().__init__(**kwargs)
        bound = 1.0 / math.sqrt(chin)  # PyTorch's default init of a Conv1d's weight and bias
        init = keras.initializers.RandomUniform(-bound, bound)
        self.kernel = self.add_weight(shape=(1, chin, chout), initializer=init, name="kernel")
        self.bias = self.add_weight(
            shape=(chout,), initializer=keras.initializers.RandomUniform(-bound, bound), name="bias"
        )
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.tensordot(x, tf.convert_to_tensor(self.kernel)[0], axes=1) + self.bias
