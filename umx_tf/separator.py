"""Waveform in, stems out: the Open-Unmix :class:`Separator` (``openunmix.model.Separator`` semantics).

STFT, one network per target, Wiener filter chunk by chunk, inverse STFT, as a Keras model.
:meth:`Separator.separate` runs it as one ``tf.function``, traced once per input shape and XLA-compiled on CPU
(``jit_compile``). The Wiener step is vectorised over the batch, the chunks, the frames and the sources (see
:mod:`umx_tf.filtering`); chunks of ``wiener_win_len`` frames stay independent, as upstream, because the filter's
``max_abs`` scaling and covariances are per chunk. The spec is ``core_spec.reference.separator``; Demucs's
``apply_model`` is :mod:`umx_tf.apply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core_spec.configs import SeparatorConfig, UMXSeparatorConfig, WienerConfig
from core_spec.reference.separator import check_sources
from core_spec.separator_settings import SeparatorSettings, separator_kwargs
from core_spec.shapes import wiener_chunks

from .filtering import wiener_planar
from .layers import skip_init
from .transforms import complex_norm, istft, stft
from .umx import OpenUnmix
from .weights import load_weights

__all__ = ["Separator", "filter_and_invert", "filter_chunks"]


def _auto_jit(jit_compile: bool | None) -> bool:
    """``None``: XLA when no GPU is visible (measured faster on CPU), the plain graph on a GPU."""
    return not tf.config.list_logical_devices("GPU") if jit_compile is None else bool(jit_compile)


@keras.saving.register_keras_serializable(package="umx_tf")
class Separator(SeparatorSettings, keras.Model):
    """Open-Unmix separation of waveforms.

    Args:
        target_models: ``{target name: OpenUnmix}``, in output order.
        niter: EM iterations of the Wiener filter (0: the networks' magnitudes with the mixture phase).
        softmask: initialise the filter with ratio masks.
        residual: add ``mixture - sum(targets)`` as an extra output (``"residual"``).
        sample_rate: the models' rate in Hz.
        n_fft, n_hop: STFT geometry.
        nb_channels: channels the networks see (1: a mono magnitude, as ``umxse``).
        wiener_win_len: frames per independently filtered chunk (``None``: the whole track at once).
        atan2: ``"upstream"`` (openunmix's phase initialisation, default) or ``"exact"``.
        eps, scale_factor: the filter's constants (upstream's defaults).
        window: STFT/ISTFT window ``(n_fft,)`` (NumPy); ``None`` is the periodic Hann window.
        jit_compile: XLA-compile :meth:`separate`; ``None`` (default): on CPU yes, on a GPU no (the LSTM
            recurrences are XLA-compiled either way, see :class:`umx_tf.umx.LSTM`).
        dtype: Keras dtype policy of the transforms and the filter (default: the target models').
    """

    def __init__(
        self,
        target_models: Mapping[str, OpenUnmix],
        niter: int = 0,
        softmask: bool = False,
        residual: bool = False,
        sample_rate: float = 44100.0,
        n_fft: int = 4096,
        n_hop: int = 1024,
        nb_channels: int = 2,
        wiener_win_len: int | None = 300,
        atan2: str = "upstream",
        eps: float = 1e-10,
        scale_factor: float = 10.0,
        window: np.ndarray | None = None,
        jit_compile: bool | None = None,
        **kwargs: Any,
    ):
        if kwargs.get("dtype") is None and target_models:
            kwargs["dtype"] = next(iter(target_models.values())).dtype_policy  # run in the networks' precision
        super().__init__(**kwargs)
        self._set_settings(
            niter, softmask, residual, sample_rate, n_fft, n_hop, nb_channels, wiener_win_len, atan2, eps,
            scale_factor,
        )  # fmt: skip
        self.target_models = dict(target_models)
        self.window = None if window is None else np.asarray(window, dtype=np.float64)
        self.jit_compile = _auto_jit(jit_compile)
        # no AutoGraph: the separation has no tensor-dependent Python control flow (a Python `if` on a tensor
        # would fail to trace, not change the graph), and converting its source took 1.3 s of every first call
        self._separate = tf.function(self.call, jit_compile=self.jit_compile, autograph=False)
        self.built = True

    @classmethod
    def from_config(
        cls,
        config: UMXSeparatorConfig,
        weights: Mapping[str, Any] | None = None,
        dtype: Any = "float32",
        **overrides: Any,
    ) -> Separator:
        """A separator for a preset (:func:`core_spec.configs.umx_preset`).

        Args:
            config: the preset.
            weights: canonical weights, ``{target: {name: array}}`` or ``{"target_models.<t>.<name>": array}``;
                ``None`` keeps Keras's initialisation.
            dtype: ``"float32"`` or ``"float64"``.
            overrides: constructor arguments replacing the config's Wiener settings (``niter=0``, ...).
        """
        kwargs = separator_kwargs(config, ("window", "jit_compile"), **overrides)
        sep = config.separator
        with skip_init(weights is not None):  # the weights follow
            models = {t: OpenUnmix.from_config(config.model, dtype=dtype) for t in sep.targets}
        separator = cls(models, dtype=dtype, **kwargs)
        if weights is not None:
            load_weights(separator, weights)
        return separator

    def call(self, audio: tf.Tensor) -> tf.Tensor:
        """Separate a batch of mixtures (no input checks: see :meth:`separate`).

        Args:
            audio: ``(nb_samples, nb_channels, nb_timesteps)`` at :attr:`sample_rate`, static length.

        Returns:
            ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``, sources in :attr:`target_names` order.
        """
        fft = self.stft_config
        audio = tf.cast(audio, self.compute_dtype)
        mix_stft = stft(audio, fft.n_fft, fft.n_hop, fft.center, fft.normalized, self.window)  # (B, C, F, T)
        X = complex_norm(mix_stft, mono=self.nb_channels == 1)
        spectrograms = tf.stack([model(X) for model in self.target_models.values()], axis=1)  # (B, S, C|1, F, T)
        targets_stft = self.filter(spectrograms, mix_stft)  # (B, S', C, F, T)
        return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, audio.shape[-1], self.window)

    def filter(self, spectrograms: tf.Tensor, mix_stft: tf.Tensor) -> tf.Tensor:
        """The Wiener step, chunk by chunk (:func:`filter_chunks` with this separator's settings).

        Args:
            spectrograms: target magnitudes ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
            mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``, static ``nb_frames``.

        Returns:
            complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``.
        """
        return filter_chunks(spectrograms, mix_stft, self.wiener_config)

    def separate(self, audio: Any, sample_rate: float | None = None, resample: bool = False) -> tf.Tensor:
        """Check and shape ``audio`` (:meth:`~core_spec.separator_settings.SeparatorSettings.prepare`), then
        separate it with the compiled graph (traced once per input shape; XLA when :attr:`jit_compile`).

        Args:
            audio: NumPy array or tensor: ``(nb_timesteps,)``, ``(nb_channels, nb_timesteps)``,
                ``(nb_timesteps, nb_channels)`` or ``(nb_samples, nb_channels, nb_timesteps)``.
            sample_rate: its rate (``None``: the model's).
            resample: resample to the model's rate instead of refusing another rate.

        Returns:
            ``(nb_samples, nb_sources, 2, nb_timesteps)`` in the separator's dtype.
        """
        batch = self.prepare(audio, sample_rate, resample).astype(self.compute_dtype, copy=False)
        return self._separate(tf.constant(batch))


def filter_chunks(spectrograms: tf.Tensor, mix_stft: tf.Tensor, wiener_config: WienerConfig) -> tf.Tensor:
    """The separator's Wiener step: every chunk of ``wiener_win_len`` frames filtered on its own
    (:func:`core_spec.shapes.wiener_chunks`), all chunks in one call with the chunks as a leading axis: the last
    one zero-padded to a whole chunk and its padding masked out (``frame_mask``), so that one graph with static
    shapes filters the whole track.

    Args:
        spectrograms: target magnitudes ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``, static ``nb_frames``.
        wiener_config: the filter's settings.

    Returns:
        complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``, sources = targets [+ residual].
    """
    w = wiener_config
    check_sources(spectrograms.shape[1] + int(w.residual), w.niter)
    args = (w.niter, w.softmask, w.residual, w.scale_factor, w.eps, w.atan2)
    nb_frames = mix_stft.shape[-1]
    plan = wiener_chunks(nb_frames, w.wiener_win_len)
    if w.niter == 0 or plan.nb_chunks == 1:  # without EM the filter is element-wise: chunks change nothing
        return wiener_planar(spectrograms, mix_stft, *args)

    def chunks(x: tf.Tensor) -> tf.Tensor:  # (..., F, T) -> (n, ..., F, win): padded, the chunks as a batch
        x = tf.pad(x, [[0, 0]] * (x.shape.rank - 1) + [[0, plan.pad]])
        x = tf.reshape(x, tf.concat([tf.shape(x)[:-1], [plan.nb_chunks, plan.win]], 0))
        return tf.experimental.numpy.moveaxis(x, -2, 0)

    mask = plan.frame_mask()  # (n, win), None without padding
    mask = None if mask is None else mask[:, None, :]  # broadcast over the batch: (n, 1, win)
    out = wiener_planar(chunks(spectrograms), chunks(mix_stft), *args, frame_mask=mask)  # (n, B, S', C, F, win)
    out = tf.experimental.numpy.moveaxis(out, 0, -2)  # (B, S', C, F, n, win)
    return tf.reshape(out, tf.concat([tf.shape(out)[:-2], [plan.nb_chunks * plan.win]], 0))[..., :nb_frames]


def filter_and_invert(
    mix_stft: tf.Tensor,
    spectrograms: tf.Tensor,
    sep: SeparatorConfig,
    nb_timesteps: int,
    window: np.ndarray | None = None,
) -> tf.Tensor:
    """The separator after the networks (``core_spec.reference.separator.filter_and_invert``): Wiener filtering
    chunk by chunk, then the inverse STFT. Also the oracle separation (true magnitudes in place of the networks).

    Args:
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        spectrograms: target magnitudes ``(nb_samples, nb_channels or 1, nb_bins, nb_frames, nb_targets)`` (the
            reference's layout).
        sep: the separator config (STFT and Wiener settings).
        nb_timesteps: length of the output signals.
        window: ISTFT window (``None``: the periodic Hann window).

    Returns:
        ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``.
    """
    mix_stft = tf.convert_to_tensor(mix_stft)
    spectrograms = tf.transpose(tf.convert_to_tensor(spectrograms), [0, 4, 1, 2, 3])  # (B, S, C|1, F, T)
    targets_stft = filter_chunks(spectrograms, mix_stft, sep.wiener)
    fft = sep.stft
    return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, nb_timesteps, window)
