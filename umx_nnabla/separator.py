"""Waveform in, stems out with Open-Unmix: the :class:`Separator` (``openunmix.model.Separator`` semantics;
``core_spec.reference.separator`` is the spec).

The STFT (:func:`umx_nnabla.transforms.stft`), one NNabla graph for the magnitude and every target network (all
targets' parameters in one parameter dictionary, one scope per target), the Wiener filter chunk by chunk
(:func:`filter_chunks`: chunks of ``wiener_win_len`` frames stay independent, as upstream, with their own
``max_abs`` scaling and covariances), the inverse STFT; the graph is built once per input shape and kept. From the
networks to the inverse STFT everything is in the planar layout ``(nb_samples, nb_sources, nb_channels, nb_bins,
nb_frames)``. Demucs's :func:`~umx_nnabla.apply.apply_model` is in :mod:`umx_nnabla.apply`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import nnabla as nn
import nnabla.functions as F
import numpy as np

from core_spec.configs import SeparatorConfig, UMXSeparatorConfig, WienerConfig
from core_spec.reference.separator import check_sources
from core_spec.separator_settings import SeparatorSettings, separator_kwargs
from core_spec.shapes import wiener_chunks

from ._context import GraphCache
from .filtering import wiener_graph, wiener_planar
from .transforms import complex_norm, istft, stft
from .umx import OpenUnmix, open_unmix_stack
from .weights import load_weights

__all__ = ["WIENER_BACKENDS", "Separator", "filter_and_invert", "filter_chunks"]

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
            lstm_impl: see :func:`umx_nnabla.layers.lstm`.
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
        """Target magnitudes of a complex NumPy STFT ``(B, C, F, T)``: ``(B, nb_targets, C or 1, F, T)`` (the
        Wiener filter's planar layout). The graph is kept per input shape."""
        re, im, out = self.graphs(mix_stft.shape)
        re.d, im.d = mix_stft.real, mix_stft.imag
        out.forward(clear_buffer=True)
        return np.ascontiguousarray(out.d.transpose(1, 4, 2, 3, 0))  # (T, B, C, F, S) -> (B, S, C, F, T)

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
        spectrograms = self.spectrograms(mix_stft)  # (B, S, C|1, F, T)
        targets_stft = self.filter(spectrograms, mix_stft)  # (B, S', C, F, T)
        return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, audio.shape[-1], self.window)

    def filter(self, spectrograms: np.ndarray, mix_stft: np.ndarray) -> np.ndarray:
        """The Wiener step with this separator's settings: :func:`filter_chunks`."""
        return filter_chunks(spectrograms, mix_stft, self.wiener_config, self.wiener_backend)

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


def filter_chunks(
    spectrograms: np.ndarray, mix_stft: np.ndarray, wiener: WienerConfig, backend: str = "numpy"
) -> np.ndarray:
    """The Wiener step of the separator: every chunk of ``wiener_win_len`` frames filtered on its own
    (:func:`core_spec.shapes.wiener_chunks`; each chunk has its own ``max_abs`` and EM statistics), one chunk after
    the other (the last one simply shorter), the batch as a leading axis.

    Args:
        spectrograms: target magnitudes ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        wiener: the filter's settings.
        backend: ``"numpy"`` (:func:`~umx_nnabla.filtering.wiener_planar`) or ``"nnabla"``
            (:func:`~umx_nnabla.filtering.wiener_graph`, one graph per batch item and chunk).

    Returns:
        complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``, sources = targets [+ residual].
    """
    if backend not in WIENER_BACKENDS:
        raise ValueError(f"wiener_backend must be one of {WIENER_BACKENDS}, got {backend!r}")
    nb_sources = spectrograms.shape[1] + int(wiener.residual)
    check_sources(nb_sources, wiener.niter)
    filter_chunk = wiener_planar if backend == "numpy" else _wiener_graph_planar
    out = np.empty(mix_stft.shape[:1] + (nb_sources,) + mix_stft.shape[1:], dtype=mix_stft.dtype)
    for t in wiener_chunks(mix_stft.shape[-1], wiener.wiener_win_len).slices():
        out[..., t] = filter_chunk(
            spectrograms[..., t],
            mix_stft[..., t],
            wiener.niter,
            softmask=wiener.softmask,
            residual=wiener.residual,
            scale_factor=wiener.scale_factor,
            eps=wiener.eps,
            atan2=wiener.atan2,
        )
    return out


def filter_and_invert(
    mix_stft: np.ndarray,
    spectrograms: np.ndarray,
    sep: SeparatorConfig,
    nb_timesteps: int,
    window: np.ndarray | None = None,
) -> np.ndarray:
    """The separator after the networks: Wiener filtering chunk by chunk (:func:`filter_chunks`), then the inverse
    STFT.

    Args:
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        spectrograms: target magnitudes ``(nb_samples, nb_channels or 1, nb_bins, nb_frames, nb_targets)``.
        sep: the separator config (STFT and Wiener settings).
        nb_timesteps: length of the output signals.
        window: ISTFT window (``None``: the periodic Hann window).

    Returns:
        ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``, in the precision of ``mix_stft``.
    """
    fft = sep.stft
    targets_stft = filter_chunks(np.moveaxis(spectrograms, -1, 1), mix_stft, sep.wiener)
    return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, nb_timesteps, window)


def _wiener_graph_planar(v: np.ndarray, mix: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
    """:func:`~umx_nnabla.filtering.wiener_graph` (upstream's layout, no batch axis) on planar arrays
    ``v (B, S, C|1, F, T)``, ``mix (B, C, F, T)``: one graph per batch item."""
    out = []
    for vb, mb in zip(v, mix):
        vb = np.ascontiguousarray(vb.transpose(3, 2, 1, 0))  # (T, F, C|1, S)
        mb = np.ascontiguousarray(mb.transpose(2, 1, 0))  # (T, F, C)
        re, im = wiener_graph(
            nn.Variable.from_numpy_array(vb),
            nn.Variable.from_numpy_array(mb.real),
            nn.Variable.from_numpy_array(mb.imag),
            *args,
            **kwargs,
        )
        re.persistent = im.persistent = True
        nn.forward_all([re, im], clear_buffer=True)
        out.append((re.d + 1j * im.d).astype(mix.dtype).transpose(3, 2, 1, 0))  # (S', C, F, T)
    return np.stack(out)
