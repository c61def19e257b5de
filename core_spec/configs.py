"""Framework-neutral configurations and the presets named like upstream.

Every port builds its models from these dataclasses, and every canonical weight file stores one of them as JSON
beside its arrays, so that a file is self-describing (the idea of demucs's ``capture_init``).

Open-Unmix presets follow ``openunmix/__init__.py`` of openunmix 1.3.0; Demucs presets follow
``demucs/pretrained.py`` of demucs 2.0.3 (branch ``v2``); HTDemucs (v4) presets follow the kwargs of the released
demucs 4.x checkpoints and the bag yamls of ``demucs/remote`` (``../shared/reference/htdemucs-notes.md`` §1.1, §3.3).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "DEMUCS_PRESETS",
    "HTDEMUCS_PRESETS",
    "UMX_PRESETS",
    "BagConfig",
    "DemucsConfig",
    "HTDemucsConfig",
    "STFTConfig",
    "SeparatorConfig",
    "UMXConfig",
    "UMXSeparatorConfig",
    "WienerConfig",
    "UMX_LSTM_DROPOUT",
    "bandwidth_to_max_bin",
    "config_from_arguments",
    "config_from_json",
    "config_to_json",
    "constructor_kwargs",
    "demucs_preset",
    "htdemucs_preset",
    "segment_fraction",
    "umx_preset",
]


def bandwidth_to_max_bin(rate: float, n_fft: int, bandwidth: float) -> int:
    """Number of STFT bins the UMX network reads: every bin whose centre frequency is <= ``bandwidth`` Hz.

    ``max(where(linspace(0, rate / 2, n_fft // 2 + 1) <= bandwidth)) + 1``: 1487 for 44.1 kHz, n_fft 4096 and
    16 kHz; 513 (the full band) for 16 kHz, n_fft 1024.
    """
    freqs = np.linspace(0, float(rate) / 2, n_fft // 2 + 1, endpoint=True)
    return int(np.max(np.where(freqs <= bandwidth)[0])) + 1


@dataclass(frozen=True)
class STFTConfig:
    """STFT with the ``torch.stft`` conventions used by Open-Unmix.

    Periodic Hann window of length ``n_fft``, hop ``n_hop``, reflect padding of ``n_fft // 2`` on both sides when
    ``center``, one-sided spectrum, no normalisation (``normalized=True`` scales by ``1 / sqrt(n_fft)``).
    """

    n_fft: int = 4096
    n_hop: int = 1024
    center: bool = True
    normalized: bool = False

    @property
    def nb_bins(self) -> int:
        return self.n_fft // 2 + 1

    def nb_frames(self, nb_timesteps: int) -> int:
        """Frames for a signal of ``nb_timesteps`` samples (``1 + L // n_hop`` when centred)."""
        if self.center:
            return 1 + nb_timesteps // self.n_hop
        return 1 + (nb_timesteps - self.n_fft) // self.n_hop


# dropout between the LSTM layers of Open-Unmix in training (``nn.LSTM(dropout=0.4)`` when nb_layers > 1)
UMX_LSTM_DROPOUT = 0.4


@dataclass(frozen=True)
class UMXConfig:
    """Constructor arguments of ``openunmix.model.OpenUnmix`` (one target), plus the STFT it expects.

    ``nb_bins`` is the number of STFT bins of the input (``n_fft // 2 + 1``); ``max_bin`` the number the network
    reads (the bandwidth crop). ``nb_channels`` is the number of channels the network sees (1 for ``umxse``, whose
    separator down-mixes magnitudes).
    """

    nb_bins: int = 2049
    nb_channels: int = 2
    hidden_size: int = 512
    nb_layers: int = 3
    unidirectional: bool = False
    max_bin: int | None = 1487

    kind: str = field(default="umx", init=False)

    def __post_init__(self) -> None:
        if self.max_bin is not None and not 0 < self.max_bin <= self.nb_bins:
            raise ValueError(f"max_bin must lie in [1, nb_bins={self.nb_bins}], got {self.max_bin}")
        if not self.unidirectional and self.hidden_size % 2:
            raise ValueError(f"a bidirectional UMX needs an even hidden_size, got {self.hidden_size}")

    @property
    def crop_bins(self) -> int:
        """Width of the network's input after the bandwidth crop (``max_bin or nb_bins``)."""
        return self.max_bin or self.nb_bins

    @property
    def lstm_hidden_size(self) -> int:
        return self.hidden_size if self.unidirectional else self.hidden_size // 2

    @property
    def nb_directions(self) -> int:
        return 1 if self.unidirectional else 2

    @property
    def lstm_dropout(self) -> float:
        """Upstream's dropout between LSTM layers in training: :data:`UMX_LSTM_DROPOUT`, none for one layer."""
        return UMX_LSTM_DROPOUT if self.nb_layers > 1 else 0.0


@dataclass(frozen=True)
class WienerConfig:
    """Post-processing of the UMX separator (``openunmix.filtering.wiener``).

    ``niter``: EM iterations (0 = the initial estimate only). ``softmask``: initialise with a ratio mask instead of
    the mixture phase. ``residual``: add ``mixture - sum(targets)`` as an extra source. ``wiener_win_len``: frames
    per independently filtered chunk (``None``: the whole track at once). ``atan2``: ``"upstream"`` reproduces
    openunmix's own ``atan2`` (it sets the real part of every exactly-zero mixture bin to 1.0 inside the filter,
    and uses pi rounded to float32); ``"exact"`` uses the true ``atan2`` and leaves the mixture untouched (see
    ``core_spec.reference.filtering``).
    """

    niter: int = 1
    softmask: bool = False
    residual: bool = False
    wiener_win_len: int | None = 300
    eps: float = 1e-10
    scale_factor: float = 10.0
    batch_size: int = 200
    atan2: str = "upstream"

    def __post_init__(self) -> None:
        if self.atan2 not in ("upstream", "exact"):
            raise ValueError(f"atan2 must be 'upstream' or 'exact', got {self.atan2!r}")
        if self.niter < 0:
            raise ValueError(f"niter must be >= 0, got {self.niter}")


@dataclass(frozen=True)
class SeparatorConfig:
    """Everything the UMX separator needs beyond the per-target weights."""

    targets: tuple[str, ...] = ("vocals", "drums", "bass", "other")
    sample_rate: float = 44100.0
    nb_audio_channels: int = 2
    stft: STFTConfig = STFTConfig()
    wiener: WienerConfig = WienerConfig()

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))


@dataclass(frozen=True)
class UMXSeparatorConfig:
    """A whole UMX preset: the network config (same for every target) and the separator config."""

    model: UMXConfig
    separator: SeparatorConfig

    kind: str = field(default="umx_separator", init=False)


def _umx(hidden_size: int, **sep: Any) -> UMXSeparatorConfig:
    stft = sep.pop("stft", STFTConfig())
    rate = sep.get("sample_rate", 44100.0)
    nb_channels = sep.pop("nb_channels", 2)
    model = UMXConfig(
        nb_bins=stft.nb_bins,
        nb_channels=nb_channels,
        hidden_size=hidden_size,
        nb_layers=3,
        unidirectional=False,
        max_bin=bandwidth_to_max_bin(rate, stft.n_fft, 16000),
    )
    return UMXSeparatorConfig(model=model, separator=SeparatorConfig(stft=stft, **sep))


MUSIC_TARGETS = ("vocals", "drums", "bass", "other")

UMX_PRESETS: dict[str, UMXSeparatorConfig] = {
    "umx": _umx(512, targets=MUSIC_TARGETS),
    "umxhq": _umx(512, targets=MUSIC_TARGETS),
    "umxl": _umx(1024, targets=MUSIC_TARGETS),
    "umxse": _umx(
        256,
        targets=("speech", "noise"),
        sample_rate=16000.0,
        nb_channels=1,
        stft=STFTConfig(n_fft=1024, n_hop=512),
    ),
}


@dataclass(frozen=True)
class DemucsConfig:
    """Constructor arguments of ``demucs.model.Demucs`` of demucs 2.0.x (the v2 waveform model).

    The seed paper's v1 model is the same network with ``resample=False`` and ``normalize=False``: preset
    ``demucs_v1``. ``segment_length`` is in samples (40 s for the released v2 models).
    """

    sources: tuple[str, ...] = ("drums", "bass", "other", "vocals")
    audio_channels: int = 2
    channels: int = 64
    depth: int = 6
    rewrite: bool = True
    glu: bool = True
    rescale: float = 0.1
    resample: bool = True
    kernel_size: int = 8
    stride: int = 4
    growth: float = 2.0
    lstm_layers: int = 2
    context: int = 3
    normalize: bool = False
    samplerate: int = 44100
    segment_length: int = 4 * 10 * 44100

    kind: str = field(default="demucs", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))

    def layer_channels(self) -> list[tuple[int, int]]:
        """``(in_channels, channels)`` of every encoder layer, outermost first."""
        out, chin, ch = [], self.audio_channels, self.channels
        for _ in range(self.depth):
            out.append((chin, ch))
            chin, ch = ch, int(self.growth * ch)
        return out


DEMUCS_PRESETS: dict[str, DemucsConfig] = {
    "demucs": DemucsConfig(channels=64),
    "demucs48_hq": DemucsConfig(channels=48),
    "demucs_extra": DemucsConfig(channels=64),
    "demucs_unittest": DemucsConfig(channels=4),
    # arXiv 1909.01174: no resampling, no normalisation, C1 = 64 (the released v1 "demucs" used 100).
    "demucs_v1": DemucsConfig(channels=64, resample=False, normalize=False),
}


def segment_fraction(value: Any) -> Fraction:
    """A segment length in seconds as an exact :class:`~fractions.Fraction`.

    Accepts a ``Fraction``, an int, a ``(numerator, denominator)`` pair (how configs store it, so that JSON round
    trips), a string (``"39/5"``, ``"7.8"``) or a float (read through its shortest repr: ``7.8`` -> ``39/5``).
    """
    if isinstance(value, bool):
        raise TypeError(f"a segment is a number of seconds, not {value!r}")
    if isinstance(value, Fraction | int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a segment must be finite, got {value}")
        return Fraction(repr(value))
    if isinstance(value, str):
        return Fraction(value)
    if isinstance(value, tuple | list) and len(value) == 2 and all(type(v) is int for v in value):
        return Fraction(value[0], value[1])
    raise TypeError(f"cannot read a segment from {value!r}: give a Fraction, int, (num, den), str or float")


def _fraction_pair(value: Any) -> tuple[int, int]:
    f = segment_fraction(value)
    if f <= 0:
        raise ValueError(f"a segment must be positive, got {f}")
    return (f.numerator, f.denominator)


@dataclass(frozen=True)
class HTDemucsConfig:
    """Constructor arguments of ``demucs.htdemucs.HTDemucs`` of demucs 4.1.0 (Hybrid Transformer Demucs, v4).

    Every argument of the constructor, under its name, with the constructor's default (so that a checkpoint's
    ``kwargs`` read with :func:`config_from_arguments` mean what they mean upstream: a missing key takes upstream's
    default). The released models differ from these defaults (``dconv_mode`` 3, ``bottom_channels`` 512 for
    ``htdemucs``, a 7.8-s segment): see :data:`HTDEMUCS_PRESETS`.

    ``segment`` (seconds; upstream a ``fractions.Fraction``) is stored as an exact ``(numerator, denominator)``
    pair so that JSON round trips; it accepts what :func:`segment_fraction` reads. :attr:`segment_fraction` gives
    the ``Fraction`` back, and :func:`constructor_kwargs` passes it as one. ``multi_freqs`` and
    ``t_cape_glob_loc_scale`` are tuples here, lists upstream.
    """

    sources: tuple[str, ...] = ("drums", "bass", "other", "vocals")
    # channels
    audio_channels: int = 2
    channels: int = 48
    channels_time: int | None = None
    growth: float = 2
    # STFT
    nfft: int = 4096
    wiener_iters: int = 0
    end_iters: int = 0
    wiener_residual: bool = False
    cac: bool = True
    # main structure
    depth: int = 4
    rewrite: bool = True
    # frequency branch
    multi_freqs: tuple[float, ...] | None = None
    multi_freqs_depth: int = 3
    freq_emb: float = 0.2
    emb_scale: float = 10
    emb_smooth: bool = True
    # convolutions
    kernel_size: int = 8
    time_stride: int = 2
    stride: int = 4
    context: int = 1
    context_enc: int = 0
    # normalisation
    norm_starts: int = 4
    norm_groups: int = 4
    # DConv residual branch
    dconv_mode: int = 1
    dconv_depth: int = 2
    dconv_comp: float = 8
    dconv_init: float = 1e-3
    # before the transformer
    bottom_channels: int = 0
    # cross-transformer
    t_layers: int = 5
    t_emb: str = "sin"
    t_hidden_scale: float = 4.0
    t_heads: int = 8
    t_dropout: float = 0.0
    t_max_positions: int = 10000
    t_norm_in: bool = True
    t_norm_in_group: bool = False
    t_group_norm: bool = False
    t_norm_first: bool = True
    t_norm_out: bool = True
    t_max_period: float = 10000.0
    t_weight_decay: float = 0.0
    t_lr: float | None = None
    t_layer_scale: bool = True
    t_gelu: bool = True
    t_weight_pos_embed: float = 1.0
    t_sin_random_shift: int = 0
    t_cape_mean_normalize: bool = True
    t_cape_augment: bool = True
    t_cape_glob_loc_scale: tuple[float, ...] = (5000.0, 1.0, 1.4)
    t_sparse_self_attn: bool = False
    t_sparse_cross_attn: bool = False
    t_mask_type: str = "diag"
    t_mask_random_seed: int = 42
    t_sparse_attn_window: int = 500
    t_global_window: int = 100
    t_sparsity: float = 0.95
    t_auto_sparsity: bool = False
    t_cross_first: bool = False
    # weight init (training only)
    rescale: float = 0.1
    # metadata
    samplerate: int = 44100
    segment: tuple[int, int] = (10, 1)
    use_train_segment: bool = True

    kind: str = field(default="htdemucs", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "segment", _fraction_pair(self.segment))
        if self.multi_freqs is not None:
            object.__setattr__(self, "multi_freqs", tuple(self.multi_freqs))
        object.__setattr__(self, "t_cape_glob_loc_scale", tuple(self.t_cape_glob_loc_scale))
        if not self.sources:
            raise ValueError("an HTDemucs needs at least one source")
        if self.dconv_mode not in (0, 1, 2, 3):
            raise ValueError(f"dconv_mode must be 0, 1, 2 or 3 (bit 1: encoder, bit 2: decoder), got {self.dconv_mode}")
        if self.t_emb not in ("sin", "cape", "scaled"):
            raise ValueError(f"t_emb must be 'sin', 'cape' or 'scaled', got {self.t_emb!r}")

    @property
    def segment_fraction(self) -> Fraction:
        """The training segment in seconds, exactly (upstream's ``model.segment``)."""
        return Fraction(*self.segment)

    @property
    def segment_samples(self) -> int:
        """``int(segment * samplerate)``: the length every forward runs at (343 980 for 39/5 s at 44.1 kHz)."""
        return int(self.segment_fraction * self.samplerate)

    @property
    def hop_length(self) -> int:
        """STFT hop: ``nfft // 4``."""
        return self.nfft // 4

    @property
    def transformer_channels(self) -> int:
        """Width of the cross-transformer: ``bottom_channels``, else the innermost encoder's channels."""
        return self.bottom_channels or int(self.channels * self.growth ** (self.depth - 1))


@dataclass(frozen=True)
class BagConfig:
    """A bag of models (``demucs.apply.BagOfModels`` of demucs 4.x, a ``demucs/remote/*.yaml``).

    ``weights``: one row per model, one weight per source (``None``: all ones, upstream's default); each source's
    estimate is the weighted mean of the models' estimates. ``segment``: the yaml's ``segment`` in seconds, stored
    like :attr:`HTDemucsConfig.segment`, or ``None`` (the models' own). Every model has the same sources, sample
    rate and audio channels.
    """

    models: tuple[HTDemucsConfig, ...]
    weights: tuple[tuple[float, ...], ...] | None = None
    segment: tuple[int, int] | None = None

    kind: str = field(default="bag", init=False)

    def __post_init__(self) -> None:
        models = tuple(self.models)
        object.__setattr__(self, "models", models)
        if not models:
            raise ValueError("a bag needs at least one model")
        first = models[0]
        for index, model in enumerate(models[1:], 1):
            for name in ("sources", "samplerate", "audio_channels"):
                if getattr(model, name) != getattr(first, name):
                    raise ValueError(
                        f"bag model {index} has {name}={getattr(model, name)!r}, model 0 {getattr(first, name)!r}"
                    )
        if self.weights is not None:
            weights = tuple(tuple(float(w) for w in row) for row in self.weights)
            if len(weights) != len(models) or any(len(row) != len(first.sources) for row in weights):
                raise ValueError(
                    f"bag weights must be {len(models)} rows of {len(first.sources)} (one per source), got "
                    f"{[len(row) for row in weights]}"
                )
            object.__setattr__(self, "weights", weights)
        if self.segment is not None:
            object.__setattr__(self, "segment", _fraction_pair(self.segment))

    @property
    def sources(self) -> tuple[str, ...]:
        return self.models[0].sources

    @property
    def samplerate(self) -> int:
        return self.models[0].samplerate

    def source_weights(self) -> tuple[tuple[float, ...], ...]:
        """The weights, all ones where none are given."""
        return self.weights or tuple((1.0,) * len(self.sources) for _ in self.models)


HTDEMUCS_SOURCES_6 = ("drums", "bass", "other", "vocals", "guitar", "piano")

# The released kwargs (notes §1.1): the conf's ``htdemucs`` section with the mmi grid's overrides (``dconv_mode``
# 3, ``t_dropout`` 0.02, training only); ``bottom_channels`` 512 for htdemucs and its fine-tunes, 0 for 6s (a
# 384-wide transformer); segment 39/5 s. A real checkpoint's kwargs are always read from the file.
_HTDEMUCS_RELEASED = HTDemucsConfig(dconv_mode=3, bottom_channels=512, t_dropout=0.02, segment=(39, 5))

HTDEMUCS_PRESETS: dict[str, HTDemucsConfig | BagConfig] = {
    "htdemucs": _HTDEMUCS_RELEASED,
    # four per-source fine-tunes of htdemucs (drums, bass, other, vocals), each contributing only its own stem
    "htdemucs_ft": BagConfig(
        models=(_HTDEMUCS_RELEASED,) * 4,
        weights=tuple(tuple(float(i == j) for j in range(4)) for i in range(4)),
    ),
    "htdemucs_6s": dataclasses.replace(_HTDEMUCS_RELEASED, sources=HTDEMUCS_SOURCES_6, bottom_channels=0),
}


def umx_preset(name: str) -> UMXSeparatorConfig:
    try:
        return UMX_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown Open-Unmix preset {name!r}; known: {sorted(UMX_PRESETS)}") from None


def demucs_preset(name: str) -> DemucsConfig:
    try:
        return DEMUCS_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown Demucs preset {name!r}; known: {sorted(DEMUCS_PRESETS)}") from None


def htdemucs_preset(name: str) -> HTDemucsConfig | BagConfig:
    """An HTDemucs (v4) preset: a model config, or a :class:`BagConfig` for ``htdemucs_ft``."""
    try:
        return HTDEMUCS_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown HTDemucs preset {name!r}; known: {sorted(HTDEMUCS_PRESETS)}") from None


# --- constructor arguments ---------------------------------------------------------------------------------


def constructor_kwargs(config: UMXConfig | DemucsConfig | HTDemucsConfig) -> dict[str, Any]:
    """The model constructor's keyword arguments of ``config``: upstream's argument names and values.

    ``OpenUnmix(**constructor_kwargs(umx_config))``, ``Demucs(**constructor_kwargs(demucs_config))`` and
    ``HTDemucs(**constructor_kwargs(htdemucs_config))`` build the model in every port and in upstream (``kind`` is
    not an argument). For HTDemucs the values are upstream's types: ``segment`` a ``Fraction``, sequences lists.
    """
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    if isinstance(config, HTDemucsConfig):
        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        kwargs["segment"] = config.segment_fraction
    return kwargs


def config_from_arguments(cls: type, arguments: dict[str, Any]) -> Any:
    """The config of class ``cls`` from a model constructor's arguments (e.g. its ``locals()``); other names in
    ``arguments`` are ignored, missing ones take the config's defaults."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    return cls(**{name: arguments[name] for name in names if name in arguments})


# --- JSON round trip ------------------------------------------------------------------------------------------

_CLASSES = {
    "STFTConfig": STFTConfig,
    "UMXConfig": UMXConfig,
    "WienerConfig": WienerConfig,
    "SeparatorConfig": SeparatorConfig,
    "UMXSeparatorConfig": UMXSeparatorConfig,
    "DemucsConfig": DemucsConfig,
    "HTDemucsConfig": HTDemucsConfig,
    "BagConfig": BagConfig,
}


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        out: dict[str, Any] = {"__class__": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if f.init:
                out[f.name] = _to_plain(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple):
        return [_to_plain(x) for x in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"cannot store a non-finite float in a config: {obj}")
    return obj


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, dict) and "__class__" in obj:
        name = obj["__class__"]
        if name not in _CLASSES:
            raise ValueError(f"unknown config class {name!r} in JSON; known: {sorted(_CLASSES)}")
        cls = _CLASSES[name]
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(obj) - names - {"__class__"}
        if unknown:
            raise ValueError(f"{name}: unknown fields {sorted(unknown)} in JSON")
        return cls(**{k: _from_plain(v) for k, v in obj.items() if k != "__class__"})
    if isinstance(obj, list):
        return tuple(_from_plain(x) for x in obj)
    return obj


def config_to_json(config: Any) -> str:
    """Serialise any config of this module to JSON (sorted keys, class names recorded)."""
    return json.dumps(_to_plain(config), sort_keys=True, indent=2)


def config_from_json(text: str) -> Any:
    """Inverse of :func:`config_to_json`."""
    return _from_plain(json.loads(text))
