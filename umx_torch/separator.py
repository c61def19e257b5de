"""Waveform in, stems out: the Open-Unmix :class:`Separator` and Demucs's :func:`apply_model`.

- :class:`Separator`: ``openunmix.model.Separator`` semantics (STFT, one network per target, Wiener filter
  chunk by chunk, inverse STFT). Its Wiener step is vectorised over the batch, the frames and the sources
  (see :mod:`umx_torch.filtering`); chunks of ``wiener_win_len`` frames stay independent calls, as upstream,
  because the filter's ``max_abs`` scaling and covariances are per chunk.
- :func:`apply_model` and :func:`separate_track`: ``demucs.utils.apply_model`` and ``demucs/separate.py`` of
  demucs 2.0.3 (split into overlapping segments with a triangular cross-fade, random shifts, padding with real
  neighbouring samples), with the chunk geometry of :mod:`core_spec.shapes` and the shifts drawn from a seeded
  generator (``core_spec.reference.apply`` is the spec).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_spec import shapes
from core_spec.audio import prepare_audio
from core_spec.configs import UMXSeparatorConfig
from core_spec.separator_settings import SeparatorSettings, separator_kwargs

from .demucs import Demucs, center_trim
from .filtering import wiener_planar
from .transforms import complex_norm, istft, stft
from .umx import OpenUnmix

__all__ = ["Separator", "apply_model", "separate_track"]


def _to_tensor(audio: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(audio)).to(device=device, dtype=dtype)


def _to_numpy(audio: Any) -> np.ndarray:
    if isinstance(audio, Tensor):
        return audio.detach().to("cpu").numpy()
    return np.asarray(audio)


class Separator(SeparatorSettings, nn.Module):
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
        window: STFT/ISTFT window ``(n_fft,)``; ``None`` is the periodic Hann window in the signal's dtype
            (upstream builds it in float32 and casts it: pass that to reproduce a float64 upstream run exactly).

    The state dict holds ``target_models.<target>.<name>`` (upstream's names); the window is not stored.
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
        window: Tensor | np.ndarray | None = None,
    ):
        super().__init__()
        self._set_settings(
            niter, softmask, residual, sample_rate, n_fft, n_hop, nb_channels, wiener_win_len, atan2, eps,
            scale_factor,
        )  # fmt: skip
        self.target_models = nn.ModuleDict(target_models)
        self.window = None if window is None else torch.as_tensor(window)

    @classmethod
    def from_config(
        cls,
        config: UMXSeparatorConfig,
        weights: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        **overrides: Any,
    ) -> Separator:
        """A separator for a preset (:func:`core_spec.configs.umx_preset`), in eval mode.

        Args:
            config: the preset.
            weights: canonical weights, ``{target: {name: array}}`` or ``{"target_models.<t>.<name>": array}``;
                ``None`` keeps PyTorch's initialisation.
            device, dtype: where and in what precision to run.
            overrides: constructor arguments replacing the config's Wiener settings (``niter=0``, ...).
        """
        kwargs = separator_kwargs(config, ("window",), **overrides)
        sep = config.separator
        models = {t: OpenUnmix.from_config(config.model) for t in sep.targets}
        separator = cls(models, **kwargs).to(device=device, dtype=dtype).eval()
        if weights is not None:
            from .weights import load_weights

            load_weights(separator, weights)
        return separator

    def freeze(self) -> Separator:
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load ``target_models.<target>.<name>`` weights (upstream's separator buffers are dropped); with
        ``strict``, anything missing, unexpected or mis-shaped is a :class:`core_spec.params.WeightsMismatchError`."""
        from .weights import prepare_state_dict

        state = prepare_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state, strict=False, assign=assign)

    def forward(self, audio: Tensor) -> Tensor:
        """Separate a batch of mixtures (no input checks: see :meth:`separate`).

        Args:
            audio: ``(nb_samples, nb_channels, nb_timesteps)`` at :attr:`sample_rate`.

        Returns:
            ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``, sources in :attr:`target_names` order.
        """
        fft, wcfg = self.stft_config, self.wiener_config
        nb_sources = self.nb_targets + int(wcfg.residual)
        if nb_sources == 1 and wcfg.niter > 0:
            raise ValueError("the Wiener filter with niter > 0 needs at least two sources: enable residual=True")
        window = self.window
        mix_stft = stft(audio, fft.n_fft, fft.n_hop, fft.center, fft.normalized, window)  # (B, C, F, T)
        X = complex_norm(mix_stft, mono=self.nb_channels == 1)
        spectrograms = X.new_empty((X.shape[0], self.nb_targets) + X.shape[1:])  # (B, S, C|1, F, T)
        for j, model in enumerate(self.target_models.values()):
            spectrograms[:, j] = model(X)
        targets_stft = self.filter(spectrograms, mix_stft)  # (B, S', C, F, T)
        del X, spectrograms, mix_stft
        # one source at a time: the inverse STFT's temporaries are several times its input
        estimates = audio.new_empty(targets_stft.shape[:3] + audio.shape[-1:])
        for j in range(targets_stft.shape[1]):
            estimates[:, j] = istft(
                targets_stft[:, j], fft.n_fft, fft.n_hop, fft.center, fft.normalized, audio.shape[-1], window
            )
        return estimates

    def filter(self, spectrograms: Tensor, mix_stft: Tensor) -> Tensor:
        """The Wiener step, chunk by chunk.

        Args:
            spectrograms: target magnitudes ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
            mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.

        Returns:
            complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``.
        """
        w = self.wiener_config
        nb_frames = mix_stft.shape[-1]
        # without EM the filter is element-wise, so chunks only bound the memory of its temporaries
        win = (w.wiener_win_len or 300) if w.niter == 0 else (w.wiener_win_len or nb_frames)
        args = (w.niter, w.softmask, w.residual, w.scale_factor, w.eps, w.atan2)
        if win >= nb_frames:
            return wiener_planar(spectrograms, mix_stft, *args)
        nb_sources = spectrograms.shape[1] + int(w.residual)
        out = torch.empty(mix_stft.shape[:1] + (nb_sources,) + mix_stft.shape[1:], dtype=mix_stft.dtype,
                          device=mix_stft.device)  # fmt: skip
        for pos in range(0, nb_frames, win):
            t = slice(pos, min(nb_frames, pos + win))
            out[..., t] = wiener_planar(spectrograms[..., t], mix_stft[..., t], *args)
        return out

    def separate(self, audio: Any, sample_rate: float | None = None, resample: bool = False) -> Tensor:
        """Check and shape ``audio`` (:func:`core_spec.audio.prepare_audio`), then separate it without autograd.

        Args:
            audio: NumPy array or tensor: ``(nb_timesteps,)``, ``(nb_channels, nb_timesteps)``,
                ``(nb_timesteps, nb_channels)`` or ``(nb_samples, nb_channels, nb_timesteps)``.
            sample_rate: its rate (``None``: the model's).
            resample: resample to the model's rate instead of refusing another rate.

        Returns:
            ``(nb_samples, nb_sources, 2, nb_timesteps)`` in the separator's dtype and on its device.
        """
        ref = next(self.parameters())
        batch = prepare_audio(
            _to_numpy(audio),
            self.sample_rate if sample_rate is None else sample_rate,
            self.sample_rate,
            nb_channels=2,
            resample=resample,
        )
        with torch.no_grad():
            return self(_to_tensor(batch, ref.dtype, ref.device))

    def to_dict(self, estimates: Tensor, aggregate_dict: Mapping[str, list[str]] | None = None) -> dict[str, Tensor]:
        """``(nb_samples, nb_sources, ...)`` -> ``{name: (nb_samples, ...)}``, optionally summed into groups."""
        out = {name: estimates[:, k] for k, name in enumerate(self.target_names)}
        if aggregate_dict is not None:
            out = {key: sum(out[t] for t in targets) for key, targets in aggregate_dict.items()}  # type: ignore[misc]
        return out


# --- Demucs ------------------------------------------------------------------------------------------------


class _Draws(Protocol):
    def integers(self, low: int, high: int) -> Any: ...


def _padded(track: Tensor, offset: int, length: int, target_length: int) -> Tensor:
    """``TensorChunk(track, offset, length).padded(target_length)``: real neighbours first, zeros beyond the ends."""
    win = shapes.chunk_window(track.shape[-1], offset, length, target_length)
    return F.pad(track[..., win.start : win.stop], (win.pad_left, win.pad_right))


def _apply_valid(model: Demucs, track: Tensor, offset: int, length: int) -> Tensor:
    """Pad the chunk to ``valid_length`` (real neighbours first), run the network, centre-trim to the chunk."""
    length = min(track.shape[-1] - offset, length)
    padded = _padded(track, offset, length, model.valid_length(length))
    return center_trim(model(padded), length)


def _apply_shifted(model: Demucs, track: Tensor, offset: int, length: int, shifts: int, rng: _Draws) -> Tensor:
    """Average of ``shifts`` runs on randomly shifted windows (one plain run when ``shifts`` is 0)."""
    if not shifts:
        return _apply_valid(model, track, offset, length)
    length = min(track.shape[-1] - offset, length)
    max_shift = int(0.5 * model.samplerate)
    padded = _padded(track, offset, length, length + 2 * max_shift)  # a new tensor: zeros beyond it
    out: Tensor | None = None
    for _ in range(shifts):
        shift = int(rng.integers(0, max_shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = _apply_valid(model, padded, shift, length + max_shift - shift)[..., max_shift - shift :]
        out = shifted if out is None else out + shifted
    assert out is not None
    return out / shifts


def apply_model(
    model: Demucs,
    mix: Tensor,
    shifts: int = 0,
    split: bool = False,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: _Draws | int | None = None,
) -> Tensor:
    """Apply Demucs to a (normalised) track with ``demucs.utils.apply_model`` semantics (demucs 2.0.3).

    Args:
        model: the network (eval mode).
        mix: ``(audio_channels, nb_timesteps)``, or a batch ``(nb_samples, audio_channels, nb_timesteps)``.
        shifts: random shifts to average (0: none).
        split: process segments of ``segment_length`` samples with a triangular overlap-add.
        overlap: fraction of a segment shared with the next.
        transition_power: exponent of the cross-fade weight (>= 1).
        segment_length: segment in samples (``model.segment_length``, 40 s for the released models, if None).
        rng: a ``numpy.random.Generator`` or a seed (0 if None) for the shifts, as the spec; anything with
            ``integers(low, high)`` works (e.g. a replay of upstream's ``random.randint`` draws).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch dimension first), in ``mix``'s dtype.
        Overlap-add runs in that dtype (upstream accumulates in torch's default dtype, float32).
    """
    if transition_power < 1:
        raise ValueError("transition_power < 1 leads to weird behavior (upstream asserts >= 1)")
    unbatched = mix.dim() == 2
    track = mix[None] if unbatched else mix
    if track.dim() != 3 or track.shape[1] != model.audio_channels:
        raise ValueError(
            f"apply_model expects (audio_channels={model.audio_channels}, nb_timesteps) or "
            f"(nb_samples, audio_channels, nb_timesteps), got {tuple(mix.shape)}"
        )
    rng = shapes.shift_draws(rng)
    length = track.shape[-1]
    with torch.no_grad():
        if not split:
            out = _apply_shifted(model, track, 0, length, shifts, rng)
        else:
            segment = segment_length or model.segment_length
            _, offsets = shapes.segment_offsets(length, segment, overlap)
            weight = torch.from_numpy(shapes.transition_weight(segment, transition_power)).to(track.device, track.dtype)
            out = torch.zeros(track.shape[:1] + (len(model.sources),) + track.shape[1:], dtype=track.dtype,
                              device=track.device)  # fmt: skip
            sum_weight = torch.zeros(length, dtype=track.dtype, device=track.device)
            for offset in offsets:
                chunk_out = _apply_shifted(model, track, offset, segment, shifts, rng)
                n = chunk_out.shape[-1]
                out[..., offset : offset + n] += weight[:n] * chunk_out
                sum_weight[offset : offset + n] += weight[:n]
            out /= sum_weight
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
) -> Tensor:
    """Separate whole tracks as ``demucs/separate.py`` of demucs 2.0.3, before writing files.

    Per track: ``ref = wav.mean(channels)``; ``wav = (wav - ref.mean()) / ref.std()`` (unbiased);
    :func:`apply_model`; ``sources * ref.std() + ref.mean()``.

    Args:
        model: the network, in the dtype and on the device to run.
        audio: NumPy array or tensor in any layout :func:`core_spec.audio.prepare_audio` accepts.
        sample_rate: its rate (``None``: the model's).
        silence_guard: a track whose mono downmix is constant comes back as that constant in every stem (digital
            silence gives silence); ``False`` reproduces upstream's 0 / 0 = NaN.
        resample: resample to the model's rate instead of refusing another rate.
        the others: as :func:`apply_model` (``split`` defaults to True, as the CLI).

    Returns:
        ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``.
    """
    ref_param = next(model.parameters())
    rate = model.samplerate
    batch = prepare_audio(
        _to_numpy(audio), rate if sample_rate is None else sample_rate, rate, model.audio_channels, resample
    )
    wav = _to_tensor(batch, ref_param.dtype, ref_param.device)
    rng = shapes.shift_draws(rng)
    outputs = []
    tiny = 16 * torch.finfo(wav.dtype).eps
    for track in wav:
        mono = track.mean(dim=0)
        mean, std = mono.mean(), mono.std()
        if silence_guard and not bool(std > tiny * mean.abs()):
            outputs.append(torch.full((len(model.sources),) + tuple(track.shape), float(mean), dtype=wav.dtype,
                                      device=wav.device))  # fmt: skip
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
        )
        outputs.append(sources * std + mean)
    return torch.stack(outputs)
