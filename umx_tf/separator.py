"""Waveform in, stems out: the Open-Unmix :class:`Separator` and Demucs's :func:`apply_model`.

- :class:`Separator`: ``openunmix.model.Separator`` semantics (STFT, one network per target, Wiener filter
  chunk by chunk, inverse STFT) as a Keras model. :meth:`Separator.separate` runs it as one ``tf.function``,
  traced once per input shape and XLA-compiled on CPU (``jit_compile``). The Wiener step is vectorised over the
  batch, the chunks, the frames and the sources (see :mod:`umx_tf.filtering`); chunks of ``wiener_win_len``
  frames stay independent, as upstream, because the filter's ``max_abs`` scaling and covariances are per chunk.
- :func:`apply_model` and :func:`separate_track`: ``demucs.utils.apply_model`` and ``demucs/separate.py`` of
  demucs 2.0.3 (split into overlapping segments with a triangular cross-fade, random shifts, padding with real
  neighbouring samples), with the chunk geometry of :mod:`core_spec.shapes`, the shifts drawn from a seeded
  generator (``core_spec.reference.apply`` is the spec) and the network compiled per chunk shape
  (:meth:`umx_tf.demucs.Demucs.compiled_call`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from core_spec import shapes
from core_spec.audio import prepare_audio
from core_spec.configs import SeparatorConfig, UMXSeparatorConfig, WienerConfig
from core_spec.separator_settings import SeparatorSettings, separator_kwargs

from .demucs import Demucs
from .filtering import wiener_planar
from .transforms import complex_norm, istft, stft
from .umx import OpenUnmix

__all__ = ["Separator", "apply_model", "filter_and_invert", "filter_chunks", "separate_track"]


def _auto_jit(jit_compile: bool | None) -> bool:
    """``None``: XLA when no GPU is visible (measured faster on CPU), the plain graph on a GPU."""
    return not tf.config.list_logical_devices("GPU") if jit_compile is None else bool(jit_compile)


def filter_chunks(spectrograms: tf.Tensor, mix_stft: tf.Tensor, wiener_config: WienerConfig) -> tf.Tensor:
    """The separator's Wiener step: independent calls on chunks of ``wiener_win_len`` frames, the full chunks in one
    batched call, the shorter remainder in another.

    Args:
        spectrograms: target magnitudes ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``, static ``nb_frames``.
        wiener_config: the filter's settings.

    Returns:
        complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``.
    """
    w = wiener_config
    nb_frames = mix_stft.shape[-1]
    win = w.wiener_win_len or nb_frames
    args = (w.niter, w.softmask, w.residual, w.scale_factor, w.eps, w.atan2)
    if w.niter == 0 or win >= nb_frames:  # without EM the filter is element-wise: chunks change nothing
        return wiener_planar(spectrograms, mix_stft, *args)
    nb_full = nb_frames // win
    parts = []
    if nb_full:
        full = nb_full * win

        def chunks(x: tf.Tensor) -> tf.Tensor:  # (..., F, full) -> (n, ..., F, win): chunks as a batch
            x = tf.reshape(x[..., :full], tf.concat([tf.shape(x)[:-1], [nb_full, win]], 0))
            return tf.experimental.numpy.moveaxis(x, -2, 0)

        out = wiener_planar(chunks(spectrograms), chunks(mix_stft), *args)  # (n, B, S', C, F, win)
        out = tf.experimental.numpy.moveaxis(out, 0, -2)  # (B, S', C, F, n, win)
        parts.append(tf.reshape(out, tf.concat([tf.shape(out)[:-2], [full]], 0)))
    if nb_frames > nb_full * win:
        rest = slice(nb_full * win, nb_frames)
        parts.append(wiener_planar(spectrograms[..., rest], mix_stft[..., rest], *args))
    return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]


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
        self._separate = tf.function(self.call, jit_compile=self.jit_compile)
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
        models = {t: OpenUnmix.from_config(config.model, dtype=dtype) for t in sep.targets}
        separator = cls(models, dtype=dtype, **kwargs)
        if weights is not None:
            from .weights import load_weights

            load_weights(separator, weights)
        return separator

    def call(self, audio: tf.Tensor) -> tf.Tensor:
        """Separate a batch of mixtures (no input checks: see :meth:`separate`).

        Args:
            audio: ``(nb_samples, nb_channels, nb_timesteps)`` at :attr:`sample_rate`, static length.

        Returns:
            ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``, sources in :attr:`target_names` order.
        """
        fft, wcfg = self.stft_config, self.wiener_config
        nb_sources = self.nb_targets + int(wcfg.residual)
        if nb_sources == 1 and wcfg.niter > 0:
            raise ValueError("the Wiener filter with niter > 0 needs at least two sources: enable residual=True")
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
        """Check and shape ``audio`` (:func:`core_spec.audio.prepare_audio`), then separate it with the compiled
        graph (traced once per input shape; XLA when :attr:`jit_compile`).

        Args:
            audio: NumPy array or tensor: ``(nb_timesteps,)``, ``(nb_channels, nb_timesteps)``,
                ``(nb_timesteps, nb_channels)`` or ``(nb_samples, nb_channels, nb_timesteps)``.
            sample_rate: its rate (``None``: the model's).
            resample: resample to the model's rate instead of refusing another rate.

        Returns:
            ``(nb_samples, nb_sources, 2, nb_timesteps)`` in the separator's dtype.
        """
        batch = prepare_audio(
            np.asarray(audio),
            self.sample_rate if sample_rate is None else sample_rate,
            self.sample_rate,
            nb_channels=2,
            resample=resample,
            dtype=np.dtype(self.compute_dtype),
        )
        return self._separate(tf.constant(batch))

    def to_dict(
        self, estimates: tf.Tensor, aggregate_dict: Mapping[str, list[str]] | None = None
    ) -> dict[str, tf.Tensor]:
        """``(nb_samples, nb_sources, ...)`` -> ``{name: (nb_samples, ...)}``, optionally summed into groups."""
        out = {name: estimates[:, k] for k, name in enumerate(self.target_names)}
        if aggregate_dict is not None:
            out = {key: tf.add_n([out[t] for t in targets]) for key, targets in aggregate_dict.items()}
        return out


# --- Demucs ------------------------------------------------------------------------------------------------


class _Draws(Protocol):
    def integers(self, low: int, high: int) -> Any: ...


def _padded(track: tf.Tensor, offset: int, length: int, target_length: int) -> tf.Tensor:
    """``TensorChunk(track, offset, length).padded(target_length)``: real neighbours first, zeros beyond the ends."""
    win = shapes.chunk_window(track.shape[-1], offset, length, target_length)
    pad = [[0, 0]] * (track.shape.rank - 1) + [[win.pad_left, win.pad_right]]
    return tf.pad(track[..., win.start : win.stop], pad)


def _apply_valid(forward: Any, model: Demucs, track: tf.Tensor, offset: int, length: int) -> tf.Tensor:
    """Pad the chunk to ``valid_length`` (real neighbours first), run the network, centre-trim to the chunk."""
    length = min(track.shape[-1] - offset, length)
    out = forward(_padded(track, offset, length, model.valid_length(length)))
    start, stop = shapes.center_trim_bounds(out.shape[-1], length)
    return out[..., start:stop]


def _apply_shifted(
    forward: Any, model: Demucs, track: tf.Tensor, offset: int, length: int, shifts: int, rng: _Draws
) -> tf.Tensor:
    """Average of ``shifts`` runs on randomly shifted windows (one plain run when ``shifts`` is 0)."""
    if not shifts:
        return _apply_valid(forward, model, track, offset, length)
    length = min(track.shape[-1] - offset, length)
    max_shift = int(0.5 * model.samplerate)
    padded = _padded(track, offset, length, length + 2 * max_shift)  # a new tensor: zeros beyond it
    out = None
    for _ in range(shifts):
        shift = int(rng.integers(0, max_shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = _apply_valid(forward, model, padded, shift, length + max_shift - shift)[..., max_shift - shift :]
        out = shifted if out is None else out + shifted
    return out / shifts


def apply_model(
    model: Demucs,
    mix: Any,
    shifts: int = 0,
    split: bool = False,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: _Draws | int | None = None,
    jit_compile: bool | None = None,
) -> tf.Tensor:
    """Apply Demucs to a (normalised) track with ``demucs.utils.apply_model`` semantics (demucs 2.0.3).

    Args:
        model: the network.
        mix: ``(audio_channels, nb_timesteps)``, or a batch ``(nb_samples, audio_channels, nb_timesteps)``.
        shifts: random shifts to average (0: none).
        split: process segments of ``segment_length`` samples with a triangular overlap-add.
        overlap: fraction of a segment shared with the next.
        transition_power: exponent of the cross-fade weight (>= 1).
        segment_length: segment in samples (``model.segment_length``, 40 s for the released models, if None).
        rng: a ``numpy.random.Generator`` or a seed (0 if None) for the shifts, as the spec; anything with
            ``integers(low, high)`` works (e.g. a replay of upstream's ``random.randint`` draws).
        jit_compile: XLA-compile the network (:meth:`umx_tf.demucs.Demucs.compiled_call`). ``None``: on CPU and
            without shifts (every shift gives the network another input length, so another compilation; with
            shifts the network runs as a plain ``tf.function``, traced once per length).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch dimension first), in the model's dtype.
        The overlap-add runs in that dtype (upstream accumulates in torch's default dtype, float32).
    """
    if transition_power < 1:
        raise ValueError("transition_power < 1 leads to weird behavior (upstream asserts >= 1)")
    track = tf.cast(tf.convert_to_tensor(mix), model.compute_dtype)
    unbatched = track.shape.rank == 2
    if unbatched:
        track = track[None]
    if track.shape.rank != 3 or track.shape[1] != model.audio_channels:
        raise ValueError(
            f"apply_model expects (audio_channels={model.audio_channels}, nb_timesteps) or "
            f"(nb_samples, audio_channels, nb_timesteps), got {tuple(mix.shape)}"
        )
    rng = shapes.shift_draws(rng)
    if jit_compile is None:  # every shift has its own chunk length, hence its own XLA compilation: not worth it
        jit_compile = False if shifts else None
    forward = model.compiled_call(jit_compile)
    length = track.shape[-1]
    if not split:
        out = _apply_shifted(forward, model, track, 0, length, shifts, rng)
        return out[0] if unbatched else out

    segment = segment_length or model.segment_length
    stride, offsets = shapes.segment_offsets(length, segment, overlap)
    weight = tf.constant(shapes.transition_weight(segment, transition_power), dtype=track.dtype)
    # every chunk output, weighted and zero-padded to a whole segment, then one overlap-add at stride
    frames, weights = [], []
    for offset in offsets:
        chunk_out = _apply_shifted(forward, model, track, offset, segment, shifts, rng)  # (B, S, C, n)
        n = chunk_out.shape[-1]
        frames.append(tf.pad(weight[:n] * chunk_out, [[0, 0]] * 3 + [[0, segment - n]]))
        weights.append(tf.pad(weight[:n], [[0, segment - n]]))
    out = tf.signal.overlap_and_add(tf.stack(frames, axis=-2), stride)[..., :length]
    sum_weight = tf.signal.overlap_and_add(tf.stack(weights), stride)[:length]
    out = out / sum_weight
    return out[0] if unbatched else out


def separate_track(
    model: Demucs,
    audio: Any,
    sample_rate: float | None = None,
    shifts: int = 0,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: _Draws | int | None = None,
    silence_guard: bool = True,
    resample: bool = False,
    jit_compile: bool | None = None,
) -> tf.Tensor:
    """Separate whole tracks as ``demucs/separate.py`` of demucs 2.0.3, before writing files.

    Per track: ``ref = wav.mean(channels)``; ``wav = (wav - ref.mean()) / ref.std()`` (unbiased);
    :func:`apply_model`; ``sources * ref.std() + ref.mean()``.

    Args:
        model: the network, in the dtype to run.
        audio: NumPy array or tensor in any layout :func:`core_spec.audio.prepare_audio` accepts.
        sample_rate: its rate (``None``: the model's).
        silence_guard: a track whose mono downmix is constant comes back as that constant in every stem (digital
            silence gives silence); ``False`` reproduces upstream's 0 / 0 = NaN.
        resample: resample to the model's rate instead of refusing another rate.
        the others: as :func:`apply_model` (``split`` defaults to True, as the CLI).

    Returns:
        ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``.
    """
    rate = model.samplerate
    batch = prepare_audio(
        np.asarray(audio),
        rate if sample_rate is None else sample_rate,
        rate,
        model.audio_channels,
        resample,
        dtype=np.dtype(model.compute_dtype),
    )
    rng = shapes.shift_draws(rng)
    outputs = []
    tiny = 16 * np.finfo(batch.dtype).eps
    for track in batch:
        mono = tf.reduce_mean(track, axis=0)
        mean = tf.reduce_mean(mono)
        n = mono.shape[-1]
        std = tf.sqrt(tf.reduce_sum(tf.square(mono - mean)) / (n - 1)) if n > 1 else tf.constant(np.nan, mono.dtype)
        if silence_guard and not bool(std > tiny * abs(float(mean))):
            outputs.append(tf.fill([len(model.sources), *track.shape], tf.cast(mean, track.dtype)))
            continue
        sources = apply_model(
            model,
            (track - mean) / std,
            shifts=shifts,
            split=split,
            overlap=overlap,
            transition_power=transition_power,
            segment_length=segment_length,
            rng=rng,
            jit_compile=jit_compile,
        )
        outputs.append(sources * std + mean)
    return tf.stack(outputs)
