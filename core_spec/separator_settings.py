"""What every port's Open-Unmix ``Separator`` shares beyond its arithmetic: settings, attribute names and config.

Each port's ``Separator`` (``umx_torch``, ``umx_tf``, ``umx_jax``, ``umx_nnabla``) mixes in
:class:`SeparatorSettings`, calls :meth:`SeparatorSettings._set_settings` from its constructor with upstream's
arguments, and builds itself from a preset with :func:`separator_kwargs`. The attribute names are upstream's
(``openunmix.model.Separator``: ``niter``, ``softmask``, ``residual``, ``wiener_win_len``, ``nb_targets``,
``sample_rate``), so code written against upstream reads the ports unchanged.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .audio import prepare_audio
from .configs import SeparatorConfig, STFTConfig, UMXSeparatorConfig, WienerConfig

__all__ = ["SEPARATOR_ARGUMENTS", "SeparatorSettings", "separator_kwargs"]

# upstream's constructor arguments (and the spec's atan2), all ports alike; ports add their own (window, ...)
SEPARATOR_ARGUMENTS = (
    "niter",
    "softmask",
    "residual",
    "sample_rate",
    "n_fft",
    "n_hop",
    "nb_channels",
    "wiener_win_len",
    "atan2",
    "eps",
    "scale_factor",
)


def separator_kwargs(config: UMXSeparatorConfig, port_arguments: tuple[str, ...] = (), **overrides: Any) -> dict:
    """The ``Separator`` constructor arguments (all but the models) of a preset, ``overrides`` applied.

    Args:
        config: the preset (:func:`core_spec.configs.umx_preset`).
        port_arguments: names of the port's own constructor arguments that ``overrides`` may also set.
        overrides: ``niter=0``, ``wiener_win_len=None``, ...

    Raises:
        TypeError: an override that is neither upstream's nor one of ``port_arguments``.
    """
    sep, w = config.separator, config.separator.wiener
    kwargs: dict[str, Any] = {
        "niter": w.niter,
        "softmask": w.softmask,
        "residual": w.residual,
        "sample_rate": sep.sample_rate,
        "n_fft": sep.stft.n_fft,
        "n_hop": sep.stft.n_hop,
        "nb_channels": config.model.nb_channels,
        "wiener_win_len": w.wiener_win_len,
        "atan2": w.atan2,
        "eps": w.eps,
        "scale_factor": w.scale_factor,
    }
    unknown = set(overrides) - set(SEPARATOR_ARGUMENTS) - set(port_arguments)
    if unknown:
        raise TypeError(
            f"unknown Separator arguments {sorted(unknown)}; known: {[*SEPARATOR_ARGUMENTS, *port_arguments]}"
        )
    kwargs.update(overrides)
    return kwargs


class SeparatorSettings:
    """Mixin: the Wiener/STFT settings of a separator under upstream's attribute names, and its config.

    The host class has ``target_models`` (a mapping ``{target: model}`` whose models have a ``config``
    property returning :class:`core_spec.configs.UMXConfig`); :meth:`_target_order` gives the output order.
    """

    wiener_config: WienerConfig
    stft_config: STFTConfig
    sample_rate: float
    nb_channels: int
    target_models: Mapping[str, Any]

    def _set_settings(
        self,
        niter: int,
        softmask: bool,
        residual: bool,
        sample_rate: float,
        n_fft: int,
        n_hop: int,
        nb_channels: int,
        wiener_win_len: int | None,
        atan2: str,
        eps: float,
        scale_factor: float,
    ) -> None:
        self.wiener_config = WienerConfig(
            niter=niter,
            softmask=softmask,
            residual=residual,
            wiener_win_len=wiener_win_len,
            eps=eps,
            scale_factor=scale_factor,
            atan2=atan2,
        )
        self.sample_rate = float(sample_rate)
        self.stft_config = STFTConfig(n_fft=n_fft, n_hop=n_hop, center=True)
        self.nb_channels = nb_channels

    def _target_order(self) -> tuple[str, ...]:
        """The targets in output order (the mapping's order unless the host keeps it elsewhere)."""
        return tuple(self.target_models)

    # upstream's attribute names
    @property
    def niter(self) -> int:
        return self.wiener_config.niter

    @property
    def residual(self) -> bool:
        return self.wiener_config.residual

    @property
    def softmask(self) -> bool:
        return self.wiener_config.softmask

    @property
    def wiener_win_len(self) -> int | None:
        return self.wiener_config.wiener_win_len

    @property
    def nb_targets(self) -> int:
        return len(self.target_models)

    @property
    def nb_sources(self) -> int:
        """Outputs of the separator: the targets, plus the residual if enabled."""
        return self.nb_targets + int(self.residual)

    @property
    def target_names(self) -> tuple[str, ...]:
        """Names of the outputs, in order: the targets, then ``"residual"`` if enabled."""
        names = self._target_order()
        return names + ("residual",) if self.residual else names

    def prepare(self, audio: Any, sample_rate: float | None = None, resample: bool = False) -> np.ndarray:
        """``audio`` checked and shaped for :meth:`separate` (:func:`core_spec.audio.prepare_audio`): stereo
        ``(nb_samples, 2, nb_timesteps)`` float64 at :attr:`sample_rate` (``sample_rate`` ``None``: already there)."""
        rate = self.sample_rate if sample_rate is None else sample_rate
        return prepare_audio(np.asarray(audio), rate, self.sample_rate, nb_channels=2, resample=resample)

    def to_dict(self, estimates: Any, aggregate_dict: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        """``(nb_samples, nb_sources, ...)`` -> ``{name: (nb_samples, ...)}`` (upstream's ``Separator.to_dict``),
        optionally summed into groups ``{group: [source, ...]}``; works on any array type that indexes and adds."""
        out = {name: estimates[:, k] for k, name in enumerate(self.target_names)}
        if aggregate_dict is not None:
            out = {
                key: functools.reduce(operator.add, (out[t] for t in names)) for key, names in aggregate_dict.items()
            }
        return out

    @property
    def config(self) -> UMXSeparatorConfig:
        """The :class:`core_spec.configs.UMXSeparatorConfig` of this separator."""
        targets = self._target_order()
        if not targets:
            raise ValueError("a separator without target models has no config")
        return UMXSeparatorConfig(
            model=self.target_models[targets[0]].config,
            separator=SeparatorConfig(
                targets=targets,
                sample_rate=self.sample_rate,
                stft=self.stft_config,
                wiener=self.wiener_config,
            ),
        )
