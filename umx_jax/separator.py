"""Waveform in, stems out: the Open-Unmix :class:`Separator`.

- :class:`Separator`: ``openunmix.model.Separator`` semantics (STFT, one network per target, Wiener filter chunk
  by chunk, inverse STFT). Calling it runs **one** ``jax.jit``-compiled function for the whole separation,
  compiled once per input shape (the shapes are static; the settings are static attributes of the module):

  - the dense layers of each target network run on their own; the LSTMs of all targets run as one
    ``lax.scan`` per layer (their states stacked, the LSTM ``jax.vmap``-ed over the targets), so each step is one
    batched matmul for every target and both directions;
  - the Wiener step filters all ``wiener_win_len`` chunks in one call, the chunk axis being a batch axis (the last,
    shorter chunk is padded and masked out of the sums, so every chunk is filtered exactly as upstream's
    independent calls); without EM the filter is element-wise and the chunking changes nothing, so it is skipped;
  - complex spectrograms stay frame-major, ``(..., nb_frames, nb_bins)``, from the STFT to the inverse STFT (the
    FFTs' layout: measured to halve the cost of the filter and the inverse STFT against transposing them);
  - no Python loop over frames, chunks or EM iterations is traced (the targets' dense layers are unrolled: four
    copies for four targets).

  :meth:`Separator.forward` is the same computation without ``jax.jit`` (op by op).

Demucs's ``apply_model`` and ``separate_track`` are in :mod:`umx_jax.apply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from core_spec.canonical import per_target
from core_spec.configs import SeparatorConfig, UMXSeparatorConfig, WienerConfig
from core_spec.reference.separator import check_sources
from core_spec.separator_settings import SeparatorSettings, separator_kwargs
from core_spec.shapes import wiener_chunks

from ._scope import canonical_dtype, default_device, device_of, dtype_scope
from .filtering import wiener_planar
from .transforms import complex_norm, istft, istft_frame_major, stft_frame_major
from .umx import OpenUnmix
from .weights import materialize

__all__ = ["Separator", "Window", "device_of", "filter_and_invert", "filter_chunks", "separator_kwargs"]


class Separator(SeparatorSettings, nnx.Module):
    """Open-Unmix separation of waveforms.

    Args:
        target_models: ``{target name: OpenUnmix}``, in output order (all with the same config and dtype).
        niter: EM iterations of the Wiener filter (0: the networks' magnitudes with the mixture phase).
        softmask: initialise the filter with ratio masks.
        residual: add ``mixture - sum(targets)`` as an extra output (``"residual"``).
        sample_rate: the models' rate in Hz.
        n_fft, n_hop: STFT geometry.
        nb_channels: channels the networks see (1: a mono magnitude, as ``umxse``).
        wiener_win_len: frames per independently filtered chunk (``None``: the whole track at once).
        atan2: ``"upstream"`` (openunmix's phase initialisation, default) or ``"exact"``.
        eps, scale_factor: the filter's constants (upstream's defaults).
        window: STFT/ISTFT window ``(n_fft,)``; ``None`` is the periodic Hann window (float64, cast).
        precision: ``jax.default_matmul_precision`` of the compiled function: ``"highest"`` (default: float32
            products on GPUs too, no TF32), or ``"default"`` / ``"high"`` to let a GPU use TF32.
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
        window: Any = None,
        precision: str | None = "highest",
    ):
        if not target_models:
            raise ValueError("a separator needs at least one target model")
        self._set_settings(
            niter, softmask, residual, sample_rate, n_fft, n_hop, nb_channels, wiener_win_len, atan2, eps,
            scale_factor,
        )  # fmt: skip
        self.precision = precision
        # nnx.Dict iterates its keys sorted: the output order is kept separately
        self.targets = tuple(target_models)
        self.target_models = nnx.Dict(dict(target_models))
        models = list(target_models.values())
        configs = {m.config for m in models}
        if len(configs) != 1 or len({m.dtype for m in models}) != 1:
            raise ValueError("every target model of a separator must have the same config and dtype")
        self.window = None if window is None else Window(jnp.asarray(window, models[0].dtype))

    def _target_order(self) -> tuple[str, ...]:
        return self.targets

    @property
    def dtype(self) -> np.dtype:
        return self.target_models[self.targets[0]].dtype

    @classmethod
    def from_config(
        cls,
        config: UMXSeparatorConfig,
        weights: Mapping[str, Any] | None = None,
        *,
        dtype: Any = jnp.float32,
        device: Any = None,
        rngs: nnx.Rngs | None = None,
        **overrides: Any,
    ) -> Separator:
        """A separator for a preset (:func:`core_spec.configs.umx_preset`).

        Args:
            config: the preset.
            weights: canonical weights, ``{target: {name: array}}`` or ``{"target_models.<t>.<name>": array}``
                (the modules are built shape-only and then hold them: :func:`umx_jax.weights.materialize`);
                ``None`` keeps a random (PyTorch-like) initialisation from ``rngs``.
            dtype: float32 or float64.
            device: a ``jax.Device``, ``"cpu"``, ``"gpu"`` or ``None`` (JAX's default device).
            overrides: constructor arguments replacing the config's settings (``niter=0``, ``precision=...``).
        """
        dtype = canonical_dtype(dtype)
        if weights is not None:
            make = partial(OpenUnmix.from_config, config.model, dtype=dtype)
            nested = per_target(weights, config.separator.targets)
            models = {t: materialize(make, config.model, w, dtype, device) for t, w in nested.items()}
        else:
            rngs = nnx.Rngs(0) if rngs is None else rngs
            with dtype_scope(dtype), default_device(device):
                models = {
                    t: OpenUnmix.from_config(config.model, dtype=dtype, rngs=rngs) for t in config.separator.targets
                }
        with dtype_scope(dtype), default_device(device):
            return cls(models, **separator_kwargs(config, ("window", "precision"), **overrides))

    def __call__(self, audio: Any) -> jax.Array:
        """Separate a batch of mixtures with the compiled function (no input checks: see :meth:`separate`).

        Args:
            audio: ``(nb_samples, nb_channels, nb_timesteps)`` at :attr:`sample_rate`.

        Returns:
            ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``, sources in :attr:`target_names` order.
        """
        with dtype_scope(self.dtype, self.precision):
            audio = jax.device_put(jnp.asarray(audio, self.dtype), device_of(self))
            return _separate_jit(self, audio)

    def forward(self, audio: jax.Array) -> jax.Array:
        """The separation :meth:`__call__` compiles, run op by op (for debugging; same arguments).

        Complex spectrograms stay frame-major, ``(..., nb_frames, nb_bins)``, from the STFT through the filter to
        the inverse STFT (the FFTs' own layout: no transpose of them is needed); only the magnitudes given to the
        networks are in upstream's ``(..., nb_bins, nb_frames)``.
        """
        fft = self.stft_config
        window = None if self.window is None else self.window[...]
        mix_stft = stft_frame_major(audio, fft.n_fft, fft.n_hop, fft.center, fft.normalized, window)  # (B, C, T, F)
        X = jnp.swapaxes(complex_norm(mix_stft, mono=self.nb_channels == 1), -1, -2)  # (B, C|1, F, T)
        spectrograms = jnp.swapaxes(self.spectrograms(X), -1, -2)  # (B, S, C|1, T, F)
        targets_stft = self.filter(spectrograms, mix_stft, time_axis=-2)  # (B, S', C, T, F)
        return istft_frame_major(
            targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, audio.shape[-1], window
        )

    def spectrograms(self, X: jax.Array) -> jax.Array:
        """Every target network on the mixture magnitude.

        Args:
            X: ``(nb_samples, nb_channels or 1, nb_bins, nb_frames)``.

        Returns:
            ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
        """
        models = [self.target_models[t] for t in self.targets]
        encoded = [m.encode(X) for m in models]  # [(h (T, B, H), mix)]
        # The LSTMs, latency-bound (one small matmul per step), run as one scan for all targets: their states
        # are stacked (a few MB) and the LSTM is vmapped over the targets. The dense layers stay per target.
        graphdef, first = nnx.split(models[0].lstm)
        stacked = jax.tree.map(lambda *a: jnp.stack(a), first, *[nnx.state(m.lstm) for m in models[1:]])
        hs = jnp.stack([h for h, _ in encoded])
        ys = jax.vmap(lambda state, h: nnx.merge(graphdef, state)(h))(stacked, hs)  # (S, T, B, H)
        out = [m.decode(h, y, mix) for m, (h, mix), y in zip(models, encoded, ys)]
        return jnp.stack(out, axis=1)

    def filter(self, spectrograms: jax.Array, mix_stft: jax.Array, time_axis: int = -1) -> jax.Array:
        """The Wiener step with this separator's settings: :func:`filter_chunks`."""
        return filter_chunks(spectrograms, mix_stft, self.wiener_config, time_axis)

    def separate(self, audio: Any, sample_rate: float | None = None, resample: bool = False) -> jax.Array:
        """Check and shape ``audio`` (:func:`core_spec.audio.prepare_audio`), then separate it.

        Args:
            audio: NumPy or JAX array: ``(nb_timesteps,)``, ``(nb_channels, nb_timesteps)``,
                ``(nb_timesteps, nb_channels)`` or ``(nb_samples, nb_channels, nb_timesteps)``.
            sample_rate: its rate (``None``: the model's).
            resample: resample to the model's rate instead of refusing another rate.

        Returns:
            ``(nb_samples, nb_sources, 2, nb_timesteps)`` in the separator's dtype, on its device.
        """
        return self(self.prepare(audio, sample_rate, resample))


def filter_chunks(spectrograms: jax.Array, mix_stft: jax.Array, wiener: WienerConfig, time_axis: int = -1) -> jax.Array:
    """The Wiener step of the separator: every chunk of ``wiener_win_len`` frames an independent filter call
    (:func:`core_spec.shapes.wiener_chunks`; its own ``max_abs`` and EM statistics), all in one call.

    The chunks are a batch axis of one :func:`~umx_jax.filtering.wiener_planar` call: the last, shorter chunk is
    padded with ``plan.pad`` zero frames and masked out of the sums (``plan.frame_mask()``, a NumPy constant), so
    every chunk is filtered exactly as upstream's independent calls, by one compiled filter whatever the number of
    chunks. Without EM the filter is element-wise and the chunks change nothing: the whole track is one call.

    Args:
        spectrograms: target magnitudes ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        wiener: the filter's settings.
        time_axis: ``-1`` (the layouts above) or ``-2``: frames before bins, ``(..., nb_frames, nb_bins)``.

    Returns:
        complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``, sources = targets [+ residual]
        (frames before bins with ``time_axis=-2``).
    """
    check_sources(spectrograms.shape[1] + int(wiener.residual), wiener.niter)
    args = (wiener.niter, wiener.softmask, wiener.residual, wiener.scale_factor, wiener.eps, wiener.atan2)
    plan = wiener_chunks(mix_stft.shape[time_axis], wiener.wiener_win_len)
    if wiener.niter == 0 or plan.nb_chunks == 1:
        return wiener_planar(spectrograms, mix_stft, *args, time_axis=time_axis)
    nb_frames, nb_chunks, win = plan.nb_frames, plan.nb_chunks, plan.win

    def chunked(a: jax.Array) -> jax.Array:
        """The frames axis cut into ``(nb_chunks, win)``, the chunk axis moved to position 1 (a batch axis)."""
        t = a.ndim + time_axis
        a = jnp.pad(a, [(0, plan.pad) if i == t else (0, 0) for i in range(a.ndim)])
        a = a.reshape(a.shape[:t] + (nb_chunks, win) + a.shape[t + 1 :])
        return jnp.moveaxis(a, t, 1)

    mask = plan.frame_mask()  # (nb_chunks, win), None without padding
    mask = None if mask is None else mask[None]  # (1, nb_chunks, win): every sample alike
    y = wiener_planar(chunked(spectrograms), chunked(mix_stft), *args, frame_mask=mask, time_axis=time_axis)
    k = y.ndim + time_axis - 1  # where the chunk axis goes back: just before the frames of a chunk
    y = jnp.moveaxis(y, 1, k)  # (B, S', C, ..., nb_chunks, win, ...)
    y = y.reshape(y.shape[:k] + (nb_chunks * win,) + y.shape[k + 2 :])
    return lax.slice_in_dim(y, 0, nb_frames, axis=k)


def filter_and_invert(
    mix_stft: jax.Array,
    spectrograms: jax.Array,
    sep: SeparatorConfig,
    nb_timesteps: int,
    window: Any = None,
) -> jax.Array:
    """The separator after the networks: Wiener filtering chunk by chunk (:func:`filter_chunks`), then the inverse
    STFT.

    Args:
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        spectrograms: target magnitudes ``(nb_samples, nb_channels or 1, nb_bins, nb_frames, nb_targets)``.
        sep: the separator config (STFT and Wiener settings).
        nb_timesteps: length of the output signals.
        window: ISTFT window ``(n_fft,)`` (``None``: the periodic Hann window).

    Returns:
        ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``.
    """
    fft = sep.stft
    spectrograms = jnp.moveaxis(jnp.asarray(spectrograms), -1, 1)  # (B, S, C|1, F, T)
    targets_stft = filter_chunks(spectrograms, jnp.asarray(mix_stft), sep.wiener)
    return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, nb_timesteps, window)


class Window(nnx.Variable):
    """A fixed STFT window (not a trainable parameter, not part of the canonical weights)."""


# graph_updates=False: the functions only read the modules' state, so no state is returned (nnx.jit's default
# graph updates would hand every parameter back as an output: a copy of all weights per call)
@partial(nnx.jit, graph_updates=False)
def _separate_jit(separator: Separator, audio: jax.Array) -> jax.Array:
    return separator.forward(audio)
