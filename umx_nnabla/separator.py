"""Waveform in, stems out with Open-Unmix: the :class:`Separator` (``openunmix.model.Separator`` semantics).

STFT (:func:`umx_nnabla.transforms.stft`), one
  NNabla graph for the magnitude and every target network (all targets' parameters in one parameter dictionary,
  one scope per target), the Wiener filter chunk by chunk (:mod:`umx_nnabla.filtering`), the inverse STFT. Chunks
  of ``wiener_win_len`` frames stay independent, as upstream (the filter's ``max_abs`` scaling and covariances are
per chunk). The graph is built once per input shape and kept. Demucs's :func:`~umx_nnabla.apply.apply_model` is in
:mod:`umx_nnabla.apply`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import nnabla as nn
import nnabla.functions as F
import numpy as np

from core_spec.configs import UMXSeparatorConfig
from core_spec.reference.separator import check_sources
from core_spec.separator_settings import SeparatorSettings, separator_kwargs

from ._context import GraphCache
from .filtering import wiener, wiener_graph
from .transforms import complex_norm, istft, stft
from .umx import OpenUnmix, open_unmix_stack
from .weights import load_weights

__all__ = ["WIENER_BACKENDS", "Separator"]

WIENER_BACKENDS = ("numpy", "nnabla")


class Separator(SeparatorSettings):
    """Open-Unmix separation of waveforms.

    Args:
        target_models: ``{target name: OpenUnmix}``, in output order. Their parameter dictionaries are gathered
            into :attr:`params`, one scope per target (the layout of the native ``.h5`` file).
        niter: EM iterations of the Wiener filter (0: the networks' magnitudes with the mixture phase).
        softmask: initialise the filter with ratio masks.
        residual: add ``mixture - sum(targets)`` as an extra output (``"residual"``).
        sample_rate: the models' rate in Hz.
        n_fft, n_hop: STFT geometry.
        nb_channels: channels the networks see (1: a mono magnitude, as ``umxse``).
        wiener_win_len: frames per independently filtered chunk (``None``: the whole track at once).
        atan2: ``"upstream"`` (openunmix's phase initialisation, default) or ``"exact"``.
        eps, scale_factor: the filter's constants (upstream's defaults).
        window: STFT/ISTFT window ``(n_fft,)``; ``None``: the periodic Hann window.
        wiener_backend: ``"numpy"`` (default, the faster; see :mod:`umx_nnabla.filtering`) or ``"nnabla"``.
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
        wiener_backend: str = "numpy",
    ):
        if wiener_backend not in WIENER_BACKENDS:
            raise ValueError(f"wiener_backend must be one of {WIENER_BACKENDS}, got {wiener_backend!r}")
        self._set_settings(
            niter, softmask, residual, sample_rate, n_fft, n_hop, nb_channels, wiener_win_len, atan2, eps,
            scale_factor,
        )  # fmt: skip
        self.window = None if window is None else np.asarray(window, dtype=np.float32)
        self.wiener_backend = wiener_backend
        self.params: OrderedDict = OrderedDict()
        self.target_models: dict[str, OpenUnmix] = {}
        for name, model in target_models.items():
            with model.parameter_scope() as own:
                self.params[name] = own  # the model's parameters, now also reachable as params[name]
            model.params, model.scope = self.params, name
            self.target_models[name] = model
        self.graphs = GraphCache(self._build_graph)

    @classmethod
    def from_config(
        cls,
        config: UMXSeparatorConfig,
        weights: Mapping[str, Any] | None = None,
        lstm_impl: str = "auto",
        **overrides: Any,
    ) -> Separator:
        """A separator for a preset (:func:`core_spec.configs.umx_preset`).

        Args:
            config: the preset.
            weights: canonical weights, ``{target: {name: array}}`` or ``{"target_models.<t>.<name>": array}``;
                ``None`` leaves NNabla's initialisation (parameters are created on the first call).
            lstm_impl: see :func:`umx_nnabla.umx.lstm`.
            overrides: constructor arguments replacing the config's (``niter=0``, ``wiener_backend=...``).
        """
        kwargs = separator_kwargs(config, ("window", "wiener_backend"), **overrides)
        sep = config.separator
        models = {t: OpenUnmix.from_config(config.model, lstm_impl=lstm_impl) for t in sep.targets}
        separator = cls(models, **kwargs)
        if weights is not None:
            load_weights(separator, weights)
        return separator

    def get_parameters(self, grad_only: bool = False) -> OrderedDict:
        """``{"<target>/<name>": nn.Variable}`` of every target."""
        with nn.parameter_scope("", self.params):
            return nn.get_parameters(grad_only=grad_only)

    def spectrogram_graph(self, re: nn.Variable, im: nn.Variable) -> nn.Variable:
        """The networks as one graph: mixture STFT ``(B, C, F, T)`` (real and imaginary parts) -> target
        magnitudes ``(T, B, C or 1, F, nb_targets)``, frame-major (the networks' own layout)."""
        X = complex_norm(re, im, mono=self.nb_channels == 1)
        outs = open_unmix_stack(list(self.target_models.values()), X, frame_major=True)
        return F.stack(*outs, axis=4) if len(outs) > 1 else F.reshape(outs[0], (*outs[0].shape, 1))

    def _build_graph(self, shape: tuple[int, ...]) -> tuple[nn.Variable, nn.Variable, nn.Variable]:
        re, im = nn.Variable(shape), nn.Variable(shape)
        return re, im, self.spectrogram_graph(re, im)

    def spectrograms(self, mix_stft: np.ndarray) -> np.ndarray:
        """Target magnitudes of a complex NumPy STFT ``(B, C, F, T)``: ``(B, T, F, C or 1, nb_targets)`` (the
        Wiener filter's layout; a view of the graph's output). The graph is kept per input shape."""
        re, im, out = self.graphs(mix_stft.shape)
        re.d, im.d = mix_stft.real, mix_stft.imag
        out.forward(clear_buffer=True)
        return out.d.copy().transpose(1, 0, 3, 2, 4)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Separate a batch of mixtures (no input checks: see :meth:`separate`).

        Args:
            audio: ``(nb_samples, nb_channels, nb_timesteps)`` at :attr:`sample_rate`, float32.

        Returns:
            ``(nb_samples, nb_sources, nb_channels, nb_timesteps)`` float32, sources in :attr:`target_names`
            order.
        """
        fft = self.stft_config
        check_sources(self.nb_sources, self.niter)  # before the networks run
        audio = np.asarray(audio, dtype=np.float32)
        mix_stft = stft(audio, fft.n_fft, fft.n_hop, fft.center, fft.normalized, self.window)  # (B, C, F, T)
        spectrograms = self.spectrograms(mix_stft)  # (B, T, F, C|1, S)
        targets_stft = self.filter(spectrograms, mix_stft)  # (B, S', C, F, T)
        return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, audio.shape[-1], self.window)

    def filter(self, spectrograms: np.ndarray, mix_stft: np.ndarray) -> np.ndarray:
        """The Wiener step, per batch item and chunk of ``wiener_win_len`` frames.

        Args:
            spectrograms: target magnitudes ``(nb_samples, nb_frames, nb_bins, nb_channels or 1, nb_targets)``.
            mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.

        Returns:
            complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``.
        """
        w = self.wiener_config
        nb_samples, nb_channels, nb_bins, nb_frames = mix_stft.shape
        nb_sources = spectrograms.shape[-1] + int(w.residual)
        win = w.wiener_win_len or nb_frames
        out = np.empty((nb_samples, nb_frames, nb_bins, nb_channels, nb_sources), dtype=mix_stft.dtype)
        mix_all = mix_stft.transpose(0, 3, 2, 1)  # (B, T, F, C)
        for b in range(nb_samples):
            for pos in range(0, nb_frames, win):
                t = slice(pos, min(nb_frames, pos + win))
                v = np.ascontiguousarray(spectrograms[b, t])
                out[b, t] = self._wiener(v, np.ascontiguousarray(mix_all[b, t]))
        return out.transpose(0, 4, 3, 2, 1)

    def _wiener(self, v: np.ndarray, mix: np.ndarray) -> np.ndarray:
        w = self.wiener_config
        args = (w.niter, w.softmask, w.residual, w.scale_factor, w.eps, w.atan2)
        if self.wiener_backend == "numpy":
            return wiener(v, mix, *args)
        v_var = nn.Variable.from_numpy_array(v)
        re, im = wiener_graph(
            v_var, nn.Variable.from_numpy_array(mix.real), nn.Variable.from_numpy_array(mix.imag), *args
        )
        re.persistent = im.persistent = True
        nn.forward_all([re, im], clear_buffer=True)
        return (re.d + 1j * im.d).astype(mix.dtype)

    def separate(self, audio: Any, sample_rate: float | None = None, resample: bool = False) -> np.ndarray:
        """Check and shape ``audio`` (:func:`core_spec.audio.prepare_audio`), then separate it.

        Args:
            audio: ``(nb_timesteps,)``, ``(nb_channels, nb_timesteps)``, ``(nb_timesteps, nb_channels)`` or
                ``(nb_samples, nb_channels, nb_timesteps)``.
            sample_rate: its rate (``None``: the model's).
            resample: resample to the model's rate instead of refusing another rate.

        Returns:
            ``(nb_samples, nb_sources, 2, nb_timesteps)`` float32.
        """
        return self(self.prepare(audio, sample_rate, resample))  # float64 -> float32 in __call__: one rounding
