"""Input checks that every port's separator runs first, so that all four ports accept and refuse the same inputs.

:func:`prepare_audio` turns what a user passes into ``(nb_samples, nb_channels, nb_timesteps)`` float arrays:

- 1-D ``(nb_timesteps,)`` is one mono signal; 2-D is ``(nb_channels, nb_timesteps)``, or time-major
  ``(nb_timesteps, nb_channels)`` (what ``soundfile.read`` returns) when its first axis is the longer one;
  3-D is ``(nb_samples, nb_channels, nb_timesteps)``;
- mono is duplicated to stereo for a stereo model (as upstream ``preprocess`` does); more than two channels is an
  error (upstream's ``preprocess`` slices *time* instead of channels here: not copied);
- a sample rate other than the model's is an error naming both rates, unless ``resample=True``, in which case the
  signal goes through the julius-compatible resampler of :mod:`core_spec.reference.resample`;
- integer PCM (``int8``/``int16``/``int32``/``int64``, ``uint8``) is scaled to ``[-1, 1)`` as libsndfile (and so
  ``soundfile``) reads it: ``x / 2^(bits - 1)``, 8-bit unsigned ``(x - 128) / 128`` (:func:`pcm_to_float`); other
  unsigned integers are an error;
- an empty signal, NaN or Inf samples, and a peak above :data:`MAX_AMPLITUDE` are errors naming where;
- digital silence is accepted: every port separates it into silence.
"""

from __future__ import annotations

from math import gcd

import numpy as np

__all__ = ["MAX_AMPLITUDE", "AudioError", "check_amplitude", "pcm_to_float", "prepare_audio"]

# The largest peak a separation can take: every port squares STFT values (sums of up to n_fft <= 65536 windowed
# samples) to power spectrograms, in float32 at the lowest; past sqrt(float32 max) / 65536 = 2.8e14 they can
# overflow to Inf and the stems come out NaN (umxhq in float32 does from a peak of about 4e19). Real audio is
# within [-1, 1] or a few times that; PCM integers scaled by pcm_to_float are within [-1, 1).
MAX_AMPLITUDE = float(np.sqrt(np.finfo(np.float32).max)) / 65536


class AudioError(ValueError):
    """The input audio cannot be separated as given."""


def pcm_to_float(audio: np.ndarray) -> np.ndarray:
    """Integer PCM samples as float64 in ``[-1, 1)``, scaled as libsndfile reads them; float input unchanged.

    ``int8``/``int16``/``int32``/``int64``: ``x / 2^(bits - 1)``; ``uint8`` (8-bit WAV): ``(x - 128) / 128``.

    Raises:
        AudioError: unsigned integers wider than 8 bits (no PCM format stores them), or a non-numeric dtype.
    """
    audio = np.asarray(audio)
    if np.issubdtype(audio.dtype, np.floating):
        return audio
    if audio.dtype == np.uint8:
        return (audio.astype(np.float64) - 128.0) / 128.0
    if np.issubdtype(audio.dtype, np.signedinteger):
        return audio.astype(np.float64) / float(2 ** (8 * audio.dtype.itemsize - 1))
    raise AudioError(
        f"audio must be floating-point or signed integer PCM (int16, int32, ...; uint8 for 8-bit), got dtype "
        f"{audio.dtype}"
    )


def check_amplitude(audio: np.ndarray, what: str = "audio") -> None:
    """Raise :class:`AudioError` when the peak of finite ``audio`` exceeds :data:`MAX_AMPLITUDE` (naming it)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > MAX_AMPLITUDE:
        raise AudioError(
            f"{what} peaks at {peak:.3g}, beyond the largest amplitude the separation can represent "
            f"({MAX_AMPLITUDE:.3g}: its power spectrograms would overflow); audio is expected within [-1, 1] - "
            f"scale it first"
        )


def _as_batch(audio: np.ndarray) -> np.ndarray:
    if audio.ndim == 1:
        return audio[None, None, :]
    if audio.ndim == 2:
        if audio.shape[0] > audio.shape[1]:
            audio = audio.T  # (nb_timesteps, nb_channels) -> (nb_channels, nb_timesteps)
        return audio[None]
    if audio.ndim == 3:
        return audio
    raise AudioError(
        f"audio must be (nb_timesteps,), (nb_channels, nb_timesteps) or (nb_samples, nb_channels, nb_timesteps); "
        f"got {audio.ndim} dimensions {audio.shape}"
    )


def prepare_audio(
    audio: np.ndarray,
    sample_rate: float,
    model_rate: float,
    nb_channels: int = 2,
    resample: bool = False,
    dtype: np.dtype | type = np.float64,
) -> np.ndarray:
    """Check and shape a waveform for a separator.

    Args:
        audio: the waveform (see the module docstring for the accepted layouts).
        sample_rate: its sample rate in Hz.
        model_rate: the model's sample rate in Hz.
        nb_channels: channels the separator takes (2 for every released model; ``umxse`` down-mixes inside).
        resample: resample to ``model_rate`` instead of refusing another rate.
        dtype: output dtype.

    Returns:
        ``(nb_samples, nb_channels, nb_timesteps)`` of ``dtype``.

    Raises:
        AudioError: empty input, too many channels, NaN/Inf, a peak above :data:`MAX_AMPLITUDE`, an unsigned
            integer dtype other than ``uint8``, or a sample-rate mismatch without ``resample``.
    """
    audio = np.asarray(audio)
    if audio.size == 0:
        raise AudioError(f"audio is empty (shape {audio.shape})")
    if not np.issubdtype(audio.dtype, np.floating) and not np.issubdtype(audio.dtype, np.integer):
        raise AudioError(f"audio must be real-valued, got dtype {audio.dtype}")
    batch = _as_batch(pcm_to_float(audio))
    channels = batch.shape[1]
    if channels > 2:
        raise AudioError(
            f"audio has {channels} channels (shape {batch.shape} as (nb_samples, nb_channels, nb_timesteps)); "
            f"the models take mono or stereo: down-mix or pick two channels first"
        )
    if channels == 1 and nb_channels == 2:
        batch = np.repeat(batch, 2, axis=1)
    elif channels != nb_channels:
        raise AudioError(f"audio has {channels} channels, the separator takes {nb_channels}")
    finite = np.isfinite(batch)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        count = int((~finite).sum())
        raise AudioError(
            f"audio holds {count} NaN or Inf samples; the first at (sample, channel, time) = {where} "
            f"(time {where[2] / sample_rate:.3f} s)"
        )
    check_amplitude(batch)
    if float(sample_rate) != float(model_rate):
        if not resample:
            raise AudioError(
                f"audio sample rate is {sample_rate:g} Hz but the model runs at {model_rate:g} Hz; "
                f"resample it first or pass resample=True"
            )
        from .reference.resample import resample_frac

        old, new = round(sample_rate), round(model_rate)
        if old != sample_rate or new != model_rate:
            raise AudioError(f"resampling needs integer sample rates, got {sample_rate} and {model_rate}")
        g = gcd(old, new)
        batch = resample_frac(batch.astype(np.float64), old // g, new // g)
    return batch.astype(dtype, copy=False)
