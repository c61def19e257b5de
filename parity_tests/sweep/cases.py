"""The cases of the parity sweep: seeded weights at the real shapes on excerpts of real music, every stage of every
port judged by the tolerance table against the float64 reference, the float32 ratio rows against upstream's own
float32 error on the same case (``unmix.parity.stages``: what ``unmix-parity`` runs, in this process).

The fixtures prove parity on the seeds and inputs they were made with; the sweep asks the same rows to hold on
other seeds and on real music: the stempeg example at several offsets and lengths, and one excerpt mixed down to
mono and upmixed to two equal channels (what ``unmix-separate`` does with a mono file: the Wiener filter's mixture
covariance is then near-singular).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from core_spec.canonical import join_targets
from core_spec.configs import DemucsConfig, HTDemucsConfig, UMXSeparatorConfig, umx_preset
from core_spec.seeded import random_weights
from core_spec.tolerances import RECORDED
from unmix.parity.clip import read_example_stems
from unmix.parity.runner import Result, run
from unmix.parity.stages import Row, judge_all

Config = UMXSeparatorConfig | DemucsConfig | HTDemucsConfig


@dataclasses.dataclass(frozen=True)
class Excerpt:
    """``seconds`` of the stempeg example's four stems summed (its linear mixture), from ``start``."""

    name: str
    start: float
    seconds: float
    mono: bool = False  # mixed down to mono, then two equal channels

    def audio(self) -> np.ndarray:
        """``(1, 2, L)`` float64 at 44.1 kHz."""
        stems, rate = _example()
        a, b = round(self.start * rate), round((self.start + self.seconds) * rate)
        mix = sum(stems.values())[:, a:b]  # (2, L)
        if mix.shape[-1] != b - a:
            raise ValueError(
                f"excerpt {self.name}: the stempeg example has only {sum(stems.values()).shape[-1]} samples"
            )
        if self.mono:
            mix = np.repeat(mix.mean(axis=0, keepdims=True), 2, axis=0)
        return mix[None]


@functools.cache
def _example() -> tuple[dict[str, np.ndarray], int]:
    return read_example_stems()


# three different stretches of real music (the example is 6.08 s long), 3-4 s each for CI's time
EXCERPTS = (
    Excerpt("0.0-4.0s", 0.0, 4.0),
    Excerpt("2.5-6.0s", 2.5, 3.5),
    Excerpt("1.0-4.0s-mono", 1.0, 3.0, mono=True),
)

# Demucs v2 at its released structure (depth 6, kernel 8, stride 4, the BLSTM, x2 resampling, GLU) with 8 channels
# instead of 64 (the released 265 M parameters take minutes per case in the float64 reference on two cores), and
# 1-s segments so that every excerpt is split into overlapping chunks
DEMUCS = DemucsConfig(channels=8, segment_length=44100)


# HTDemucs at its released structure (nfft 4096: 2048 bins down to 8 rows, depth 4, DConv in encoder and decoder
# with dconv_comp 8, the 1x1 samplers, 5 transformer layers of 8 heads) with 16 channels instead of 48, a 64-wide
# transformer instead of 512, and a 1-s segment instead of 7.8 s (the float64 reference at the released size takes
# a minute a segment on two cores), so that every excerpt is split into overlapping chunks
HTDEMUCS = HTDemucsConfig(channels=16, nfft=4096, bottom_channels=64, dconv_mode=3, segment=(1, 1))


@dataclasses.dataclass(frozen=True)
class Case:
    """One model (seeded weights) on one excerpt."""

    model: str  # "umxhq", "demucs" or "htdemucs"
    seeds: tuple[int, ...]  # umxhq: one per target, in the preset's target order; demucs, htdemucs: one
    excerpt: Excerpt

    @property
    def id(self) -> str:
        return f"{self.model}-seed{'+'.join(map(str, self.seeds))}-{self.excerpt.name}"

    def model_of(self) -> tuple[Config, dict[str, np.ndarray]]:
        if self.model == "umxhq":
            config = umx_preset("umxhq")
            targets = config.separator.targets
            if len(self.seeds) != len(targets):
                raise ValueError(f"{self.id}: {len(targets)} seeds needed, one per target")
            per = {t: random_weights(config.model, seed=s) for t, s in zip(targets, self.seeds)}
            return config, join_targets(per)
        config = HTDEMUCS if self.model == "htdemucs" else DEMUCS
        return config, random_weights(config, seed=self.seeds[0])


def _umx_seeds(seed: int) -> tuple[int, ...]:
    return tuple(range(seed, seed + 4))


UMX_CASES = (
    # issue 22's reproduction: seeds 7 + i, the first 4 s (NNabla's wiener stage was 108.8 dB, bound 112.1)
    Case("umxhq", _umx_seeds(7), EXCERPTS[0]),
    *(Case("umxhq", _umx_seeds(100 + 4 * k), EXCERPTS[k % len(EXCERPTS)]) for k in range(8)),
)
DEMUCS_CASES = tuple(Case("demucs", (200 + k,), EXCERPTS[k % len(EXCERPTS)]) for k in range(4))
HTDEMUCS_CASES = tuple(Case("htdemucs", (300 + k,), EXCERPTS[k % len(EXCERPTS)]) for k in range(3))

# every port in every dtype it has; NNabla runs in .venv-nnabla (unmix.parity.runner)
PORT_DTYPES = {"torch": ("float32", "float64"), "tf": ("float32", "float64"), "jax": ("float32", "float64"),
               "nnabla": ("float32",)}  # fmt: skip
# the ports that have HTDemucs (TensorFlow and NNabla: issue 26)
HTDEMUCS_PORTS = ("torch", "tf", "jax", "nnabla")


@dataclasses.dataclass
class Baseline:
    """The reference's capture (every port's inputs and expected outputs) and upstream's float32 capture."""

    case: Case
    config: Config
    weights: dict[str, np.ndarray]
    audio: np.ndarray
    reference: Result
    upstream: Result


_LAST: dict[str, Baseline] = {}


def baseline(case: Case) -> Baseline:
    """The reference and upstream on ``case``, kept for the ports of the same case (one case at a time)."""
    if case.id not in _LAST:
        _LAST.clear()
        config, weights = case.model_of()
        audio = case.excerpt.audio()
        (reference,) = run("reference", config, weights, audio, ["float64"], "cpu")
        if reference.captures is None:
            raise RuntimeError(f"{case.id}: the reference did not run: {reference.error}")
        (upstream,) = run("upstream", config, weights, audio, ["float32"], "cpu", reference.captures)
        if upstream.captures is None:
            raise RuntimeError(f"{case.id}: upstream did not run: {upstream.error}")
        _LAST[case.id] = Baseline(case, config, weights, audio, reference, upstream)
    return _LAST[case.id]


def judge_port(case: Case, name: str, dtypes: Sequence[str]) -> list[Row]:
    """Every stage of port ``name`` on ``case`` in ``dtypes``, judged; raises if the port did not run."""
    b = baseline(case)
    rows: list[Row] = []
    for result in run(name, b.config, b.weights, b.audio, list(dtypes), "cpu", b.reference.captures):
        if result.captures is None:
            raise RuntimeError(f"{case.id}: {name} {result.dtype} did not run: {result.error or result.note}")
        upstream = b.upstream.captures if result.dtype == "float32" else None
        rows += judge_all(name, result.dtype, "cpu", b.config, result.captures, b.reference.captures, upstream)
    return rows


def judge_upstream(case: Case) -> list[Row]:
    """Upstream's own float32 rows on ``case`` (absolute floors; it is the ratio rows' baseline)."""
    b = baseline(case)
    return judge_all("upstream", "float32", "cpu", b.config, b.upstream.captures, b.reference.captures)


def record(case: Case, rows: Sequence[Row]) -> None:
    """Append ``rows`` to the suite's report (:data:`core_spec.tolerances.RECORDED`), as the suite's checks do."""
    for r in rows:
        row = {"what": f"sweep {case.id}: {r.implementation} {r.key}", "stage": r.tolerance_row, "dtype": r.dtype,
               "device": r.device, "ok": r.ok, "max_abs": r.max_abs, "rel": r.rel, "snr_db": r.snr_db}  # fmt: skip
        if r.snr_bound_db is not None:
            row.update(upstream_snr_db=r.upstream_snr_db, snr_bound_db=r.snr_bound_db)
        RECORDED.append(row)


def describe(rows: Sequence[Row]) -> str:
    lines = []
    for r in rows:
        bound = f", bound {r.snr_bound_db:.1f} dB (upstream {r.upstream_snr_db:.1f})" if r.snr_bound_db else ""
        lines.append(
            f"{r.implementation} {r.dtype} {r.key}: snr {r.snr_db:.1f} dB, rel {r.rel:.2e}{bound}; {r.tolerance}"
        )
    return "\n".join(lines)
