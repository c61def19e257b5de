"""Every stage the parity suite compares, captured for one model on one input, and judged by the tolerance table.

:func:`capture` runs one implementation (a :class:`~unmix.parity.adapters.Port`) stage by stage and returns its
outputs by key. The reference runs first, on its own outputs; every other implementation gets the reference's
output of the previous stage as the input of each stage (cast to its precision), so that each figure measures
one stage, as in the parity suite:

Open-Unmix separator (``UMXSeparatorConfig``), input ``audio (1, 2, L)``:

- ``stft`` ``(1, C, F, T)`` complex, ``magnitude`` ``(1, C|1, F, T)``;
- ``umx.<target>.<layer>`` for every key of ``core_spec.reference.umx.UMX_TRACE_KEYS`` and ``umx.<target>.output``
  (the network of each target on the reference's magnitude);
- ``wiener`` ``(1, T, F, C, S')`` complex: the filter on the reference's network outputs and mixture STFT, chunk
  by chunk of ``wiener_win_len`` frames as the separator calls it;
- ``istft`` ``(1, S', C, L)``: the inverse STFT of the reference's filtered spectrograms;
- ``separator`` ``(1, S', C, L)``: waveform in, stems out, the implementation's own chain.

Demucs v2 (``DemucsConfig``), input the track normalised as ``demucs/separate.py`` does (mono mean and unbiased
std, in float64):

- ``demucs.<key>`` for every key of ``core_spec.reference.demucs.demucs_trace_keys`` and ``demucs.output``: the
  forward of the first segment (zero-padded to ``valid_length``);
- ``apply`` ``(S, C, L)``: ``apply_model`` with ``split=True`` (overlap 0.25, transition power 1, no shifts).

HTDemucs (``HTDemucsConfig``, or a bag: ``BagConfig``), input the track normalised as demucs 4.1.0's separation
(``(wav - mean) / (std + 1e-8)`` of the mono mixture, unbiased std, in float64):

- ``htdemucs.<key>`` for every key of ``core_spec.reference.htdemucs.htdemucs_trace_keys`` (``htdemucs.output``
  the network's output): the forward of the first segment (at most the training segment; the network zero-pads
  it on the right to that length). A bag: ``htdemucs.models.<i>.<key>`` for every member, each at the segment it
  runs at in the bag;
- ``htdemucs_apply`` ``(S, C, L)``: demucs 4's ``apply_model`` on the model or the bag (split, overlap 0.25,
  transition power 1, the model's segment, ``shifts`` random shifts drawn by ``default_rng(0)``, none by default).
  An implementation without HTDemucs stages (all four ports have them since issue 26) raises
  :class:`StageUnavailable`.

:func:`judge_all` turns captures into rows: the separated stems per source, every other key as a whole, each
judged by its row of ``core_spec.tolerances`` (the float32 ``wiener`` and ``separator`` rows against upstream's
own float32 error on the same input when upstream ran). NumPy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from core_spec.canonical import per_model, split_targets
from core_spec.configs import BagConfig, DemucsConfig, HTDemucsConfig, UMXSeparatorConfig, WienerConfig
from core_spec.reference.demucs import demucs_trace_keys
from core_spec.reference.htdemucs import htdemucs_trace_keys
from core_spec.reference.htdemucs_apply import SEPARATE_EPS, bag_models
from core_spec.reference.separator import target_names
from core_spec.reference.umx import UMX_TRACE_KEYS
from core_spec.shapes import valid_length
from core_spec.tolerances import judge, tolerance
from unmix.parity.adapters import Port

__all__ = [
    "APPLY",
    "HT_APPLY",
    "HT_STATS",
    "Row",
    "StageUnavailable",
    "capture",
    "judge_all",
    "normalise_track",
    "normalise_track_v4",
    "row_of",
    "sources_of",
    "stage_order",
    "with_upstream_stats",
]

Array = np.ndarray
Config = UMXSeparatorConfig | DemucsConfig | HTDemucsConfig | BagConfig

APPLY = dict(split=True, overlap=0.25, transition_power=1.0)  # demucs/separate.py's defaults
HT_APPLY = dict(split=True, overlap=0.25, transition_power=1.0, segment=None)  # demucs 4.1.0's defaults
HT_STATS = ("mean", "std", "mean_t", "std_t")
SHIFTS_SEED = 0  # the shifts' generator: numpy.random.default_rng(SHIFTS_SEED), upstream replays its draws


class StageUnavailable(NotImplementedError):
    """The implementation has no such model yet (an adapter without the HTDemucs stages): not a failure."""


def _complex_dtype(dtype: str) -> type:
    return np.complex64 if dtype == "float32" else np.complex128


def _stage_fn(port: Port, name: str) -> Callable[..., Any]:
    fn = getattr(port, name)
    if fn is None:
        raise NotImplementedError(f"{port.name} has no '{name}' stage")
    return fn


def sources_of(config: Config) -> tuple[str, ...]:
    """Output names in order: UMX targets (+ ``residual``), Demucs sources."""
    return target_names(config) if isinstance(config, UMXSeparatorConfig) else tuple(config.sources)


def normalise_track(mix: Array) -> Array:
    """``(mix - mean) / std`` of the mono mixture (unbiased std), as ``demucs/separate.py``; float64 ``(C, L)``.

    Raises:
        ValueError: a silent (constant) track, which upstream turns into NaN.
    """
    mix = np.asarray(mix, dtype=np.float64)
    ref = mix.mean(axis=0)
    std = float(ref.std(ddof=1)) if ref.size > 1 else 0.0
    if not std > 0:
        raise ValueError("the track is silent (constant mono mixture): Demucs's normalisation divides by zero")
    return (mix - ref.mean()) / std


def normalise_track_v4(mix: Array) -> tuple[Array, float, float]:
    """``((mix - mean) / (std + 1e-8), mean, std + 1e-8)`` of the mono mixture (unbiased std), as demucs 4.1.0's
    ``Separator.separate_tensor``; float64 ``(C, L)``."""
    mix = np.asarray(mix, dtype=np.float64)
    ref = mix.mean(axis=0)
    std = (float(ref.std(ddof=1)) if ref.size > 1 else math.nan) + SEPARATE_EPS
    return (mix - ref.mean()) / std, float(ref.mean()), std


def _umx_capture(
    port: Port,
    config: UMXSeparatorConfig,
    weights: Mapping[str, Array],
    audio: Array,
    dtype: str,
    inputs: Mapping[str, Array] | None,
) -> dict[str, Array]:
    sep, model = config.separator, config.model
    fft, w = sep.stft, sep.wiener
    default = WienerConfig()
    if (w.eps, w.scale_factor, w.atan2) != (default.eps, default.scale_factor, default.atan2):
        raise ValueError(
            f"the wiener stage runs with upstream's eps, scale_factor and atan2; this model sets {w.eps}, "
            f"{w.scale_factor}, {w.atan2!r}"
        )
    per_target = split_targets(weights, sep.targets)
    cdtype, dev = _complex_dtype(dtype), port.device
    out: dict[str, Array] = {}

    def feed(key: str) -> Array:
        return (inputs if inputs is not None else out)[key]

    x = audio.astype(dtype)
    out["stft"] = _stage_fn(port, "stft")(x, fft, dtype, dev)
    mix = feed("stft")  # (1, C, F, T)
    out["magnitude"] = _stage_fn(port, "complex_norm")(mix.astype(cdtype), model.nb_channels == 1, dtype, dev)
    for target in sep.targets:
        y, trace = _stage_fn(port, "umx")(per_target[target], model, feed("magnitude").astype(dtype), dtype, dev)
        missing = [k for k in UMX_TRACE_KEYS if k not in trace]
        if missing:
            raise RuntimeError(f"{port.name}: the UMX trace lacks {missing}")
        out.update({f"umx.{target}.{k}": np.asarray(trace[k]) for k in UMX_TRACE_KEYS})
        out[f"umx.{target}.output"] = np.asarray(y)
    v = np.stack([feed(f"umx.{t}.output") for t in sep.targets], axis=-1)[0].transpose(2, 1, 0, 3)  # (T, F, C, S)
    m = mix[0].transpose(2, 1, 0)  # (T, F, C)
    nb_frames = m.shape[0]
    win = w.wiener_win_len or nb_frames
    chunks = []
    for pos in range(0, nb_frames, win):  # independent calls, as the separator makes them
        t = slice(pos, min(nb_frames, pos + win))
        args = (v[t].astype(dtype), m[t].astype(cdtype), w.niter, w.softmask, w.residual, dtype, dev)
        chunks.append(np.asarray(_stage_fn(port, "wiener")(*args)))
    out["wiener"] = np.concatenate(chunks, axis=0)[None]  # (1, T, F, C, S')
    Y = feed("wiener")[0].transpose(3, 2, 1, 0)  # (S', C, F, T)
    out["istft"] = np.asarray(_stage_fn(port, "istft")(Y.astype(cdtype), fft, audio.shape[-1], dtype, dev))[None]
    out["separator"] = np.asarray(_stage_fn(port, "separator")(per_target, config, x, dtype, dev))
    return out


def _demucs_capture(
    port: Port, config: DemucsConfig, weights: Mapping[str, Array], audio: Array, dtype: str
) -> dict[str, Array]:
    wav = normalise_track(audio[0])  # (C, L)
    n = min(wav.shape[-1], config.segment_length or wav.shape[-1])
    delta = valid_length(n, config) - n
    segment = np.pad(wav[:, :n], ((0, 0), (delta // 2, delta - delta // 2)))[None]  # (1, C, valid)
    y, trace = _stage_fn(port, "demucs")(weights, config, segment.astype(dtype), dtype, port.device)
    keys = demucs_trace_keys(config)
    missing = [k for k in keys if k not in trace]
    if missing:
        raise RuntimeError(f"{port.name}: the Demucs trace lacks {missing}")
    out = {f"demucs.{k}": np.asarray(trace[k]) for k in keys}
    out["demucs.output"] = np.asarray(y)
    apply_model = _stage_fn(port, "apply_model")
    kwargs = dict(APPLY, segment_length=config.segment_length, dtype=dtype, device=port.device)
    out["apply"] = np.asarray(apply_model(weights, config, wav.astype(dtype), **kwargs))
    return out


Member = tuple[str, HTDemucsConfig, dict[str, Array]]


def _ht_members(config: HTDemucsConfig | BagConfig, weights: Mapping[str, Array]) -> list[Member]:
    """``(key prefix, config as it runs, weights)`` of every network: the model itself, or each member of a bag."""
    if isinstance(config, HTDemucsConfig):
        return [("htdemucs.", config, dict(weights))]
    running, _ = bag_models(config)
    return [(f"htdemucs.models.{i}.", m, w) for i, (m, w) in enumerate(zip(running, per_model(weights, config)))]


def _first_segment(wav: Array, config: HTDemucsConfig) -> Array:
    """``(1, C, n)``: the first ``n = min(L, training segment)`` samples (all of them without the segment rule)."""
    n = min(wav.shape[-1], config.segment_samples) if config.use_train_segment else wav.shape[-1]
    return wav[None, :, :n]


def _htdemucs_capture(
    port: Port,
    config: HTDemucsConfig | BagConfig,
    weights: Mapping[str, Array],
    audio: Array,
    dtype: str,
    shifts: int,
    stats: Mapping[str, Array] | None = None,
) -> dict[str, Array]:
    """The HTDemucs stages (module docstring); ``stats``: a previous capture's ``stats:*`` arrays (upstream's input
    statistics), injected into every forward and network call (the reference only)."""
    if port.htdemucs is None or port.htdemucs_apply is None:
        raise StageUnavailable(f"{port.name} has no HTDemucs yet")
    wav, _, _ = normalise_track_v4(audio[0])  # (C, L)
    out: dict[str, Array] = {}
    members = _ht_members(config, weights)
    for index, (prefix, model, w) in enumerate(members):
        given = None if stats is None else {k: stats[f"stats:forward.{index}.{k}"] for k in HT_STATS}
        y, trace = port.htdemucs(w, model, _first_segment(wav, model).astype(dtype), dtype, port.device, stats=given)
        keys = [k for k in htdemucs_trace_keys(model) if k != "output"]
        missing = [k for k in keys if k not in trace]
        if missing:
            raise RuntimeError(f"{port.name}: the HTDemucs trace lacks {missing}")
        out.update({prefix + k: np.asarray(trace[k]) for k in keys})
        out[prefix + "output"] = np.asarray(y)
        out.update({f"stats:forward.{index}.{k}": np.asarray(trace[f"stats.{k}"]) for k in HT_STATS
                    if f"stats.{k}" in trace})  # fmt: skip
    calls = None
    if stats is not None:
        nb_calls = len({k.split(".")[1] for k in stats if k.startswith("stats:apply.")})
        calls = [{k: stats[f"stats:apply.{c}.{k}"] for k in HT_STATS} for c in range(nb_calls)]
    stems, recorded = port.htdemucs_apply(
        [w for _, _, w in members], config, wav.astype(dtype), shifts, **HT_APPLY, seed=SHIFTS_SEED, dtype=dtype,
        device=port.device, stats=calls,
    )  # fmt: skip
    out["htdemucs_apply"] = np.asarray(stems)
    for c, call in enumerate(recorded or []):
        out.update({f"stats:apply.{c}.{k}": np.asarray(v) for k, v in call.items()})
    return out


def with_upstream_stats(
    config: HTDemucsConfig | BagConfig,
    weights: Mapping[str, Array],
    audio: Array,
    upstream: Mapping[str, Array],
    shifts: int = 0,
) -> dict[str, Array]:
    """The reference's HTDemucs capture given upstream's input statistics (``upstream``: upstream's float64
    capture, with its ``stats:*``): what upstream float64 is judged against. torch's float64 ``std`` is not
    correctly rounded on long inputs (1.3e-11 relative at the released 7.8-s length, 1e-9 in the output); given
    the same statistics the spec and upstream agree to the float64 rows (``core_spec/reference/htdemucs.py``)."""
    from unmix.parity.adapters import load

    return _htdemucs_capture(load("reference"), config, weights, audio, "float64", shifts, stats=upstream)


def capture(
    port: Port,
    config: Config,
    weights: Mapping[str, Array],
    audio: Array,
    dtype: str,
    inputs: Mapping[str, Array] | None = None,
    shifts: int = 0,
) -> dict[str, Array]:
    """Run every stage of ``port`` in ``dtype``; the outputs by key (module docstring).

    Args:
        config: a UMX separator or a Demucs config.
        weights: canonical weights (a separator's with ``target_models.<target>.`` prefixes).
        audio: ``(1, 2, L)`` float64 at the model's rate.
        inputs: the reference's capture: each UMX stage's input is taken from it (``None``: from this run's own
            outputs, which is how the reference itself runs).
        shifts: HTDemucs ``apply_model``'s random shifts (seeded; 0: none).

    Raises:
        StageUnavailable: an HTDemucs model and an implementation without HTDemucs.
    """
    if isinstance(config, UMXSeparatorConfig):
        return _umx_capture(port, config, weights, audio, dtype, inputs)
    if isinstance(config, DemucsConfig):
        return _demucs_capture(port, config, weights, audio, dtype)
    if isinstance(config, (HTDemucsConfig, BagConfig)):
        return _htdemucs_capture(port, config, weights, audio, dtype, shifts)
    raise TypeError(f"unmix-parity verifies UMX separators and Demucs models, not {type(config).__name__}")


# --- judging --------------------------------------------------------------------------------------------------

_STAGE_OF_PREFIX = {"umx": "umx.layer", "demucs": "demucs.layer", "htdemucs": "htdemucs.layer"}
_WHOLE = {"stft": "stft", "magnitude": "magnitude", "wiener": "wiener", "istft": "istft"}
_PER_SOURCE = {"separator": "separator", "apply": "demucs.apply", "htdemucs_apply": "htdemucs.apply"}
# rows of stages whose float32 error on real music differs from the fixtures' (core_spec.tolerances); float64
# outputs are judged by the fixtures' rows
_MUSIC_ROWS = {"separator": "separator.music"}


def row_of(key: str, implementation: str, dtype: str) -> str:
    """The tolerance row a captured key is judged by.

    Upstream in float64 differs from the reference by what it builds in float32 even then: the STFT window
    (``torch.hann_window``, row ``window``) and julius's resampling kernels (rows ``resample.kernels`` and
    ``demucs.own_kernels``). HTDemucs has neither (demucs 4.1.0 in float64 builds its window in float64): its
    upstream float64 stages are judged by the float64 rows against the reference given upstream's input statistics
    (:func:`with_upstream_stats`).
    """
    row = _stage_of(key)
    if implementation == "upstream" and dtype == "float64":
        if row in ("stft", "istft", "separator"):
            return "window"
        if key.startswith("demucs.resample."):
            return "resample.kernels"
        if row.startswith("demucs."):
            return "demucs.own_kernels"
    return _MUSIC_ROWS.get(row, row) if dtype == "float32" else row  # float64: the fixtures' rows hold


def stage_order(config: Config) -> tuple[str, ...]:
    """The stages (table rows) of ``config``'s chain, in order."""
    if isinstance(config, UMXSeparatorConfig):
        return ("stft", "magnitude", "umx.layer", "umx.output", "wiener", "istft", "separator")
    if isinstance(config, (HTDemucsConfig, BagConfig)):
        return ("htdemucs.layer", "htdemucs.output", "htdemucs.apply")
    return ("demucs.layer", "demucs.output", "demucs.apply")


@dataclasses.dataclass
class Row:
    """One comparison: ``implementation`` in ``dtype`` on ``device``, ``key`` against the reference."""

    implementation: str
    dtype: str
    device: str
    stage: str  # the chain's stage (table row)
    key: str  # what is compared: "stft", "vocals fc1", "separator vocals"
    tolerance_row: str
    tolerance: str
    max_abs: float
    rel: float
    snr_db: float
    ok: bool
    upstream_snr_db: float | None = None
    snr_bound_db: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(self).items()}


def _stage_of(key: str) -> str:
    """The chain's stage of a captured key (the table row the parity suite judges it by)."""
    head = key.split(".", 1)[0]
    if head in _WHOLE:
        return _WHOLE[head]
    if head in _PER_SOURCE:
        return _PER_SOURCE[head]
    if key.endswith(".output"):
        return f"{head}.output"
    return _STAGE_OF_PREFIX[head]


def _pieces(key: str, value: Array, sources: tuple[str, ...]) -> list[tuple[str, Array]]:
    """A captured array, split per source for the separated stems."""
    head = key.split(".", 1)[0]
    if head == "separator":
        return [(f"separator {s}", value[:, i]) for i, s in enumerate(sources)]
    if head in ("apply", "htdemucs_apply"):
        return [(f"stems {s}", value[i]) for i, s in enumerate(sources)]
    if head in ("umx", "demucs", "htdemucs"):
        return [(key.split(".", 1)[1].replace(".", " ", 1) if head == "umx" else key.split(".", 1)[1], value)]
    return [(key, value)]


def judge_all(
    implementation: str,
    dtype: str,
    device: str,
    config: Config,
    actual: Mapping[str, Array],
    reference: Mapping[str, Array],
    upstream: Mapping[str, Array] | None = None,
) -> list[Row]:
    """Rows of ``actual`` against ``reference`` (both from :func:`capture`); ``upstream``: upstream's capture in the
    same ``dtype``, for the rows relative to upstream (``None``: only the absolute bounds)."""
    sources = sources_of(config)
    rows = []
    for key, expected in reference.items():
        if key not in actual:
            raise KeyError(f"{implementation} {dtype}: no output for stage key {key!r}")
        tol_row = row_of(key, implementation, dtype)
        theirs = dict(_pieces(key, upstream[key], sources)) if upstream is not None and key in upstream else {}
        for (name, a), (_, e) in zip(_pieces(key, actual[key], sources), _pieces(key, expected, sources)):
            text = tolerance(tol_row, dtype, device).describe()
            nan = math.nan
            row = Row(implementation, dtype, device, _stage_of(key), name, tol_row, text, nan, nan, nan, False)
            try:
                verdict = judge(a, e, tol_row, dtype, device, upstream=theirs.get(name))
            except AssertionError as error:  # a shape mismatch, NaN or Inf: a failed row that says so
                row.tolerance += f" ({error})"
            else:
                m = verdict.metrics
                row.max_abs, row.rel, row.snr_db, row.ok = m.max_abs, m.rel, m.snr_db, verdict.ok
                row.upstream_snr_db, row.snr_bound_db = verdict.upstream_snr_db, verdict.snr_bound_db
            rows.append(row)
    return rows
