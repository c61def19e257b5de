"""What ``python -m benchmarks`` measures: the points (workload x length) of the full and the quick plan.

A :class:`Point` is one workload at one size; every implementation runs it on the same input (written once by
:mod:`benchmarks.inputs`). Full plan (float32, CPU; models with seeded weights, :mod:`benchmarks.workloads`):

- ``umx_niter0_30s`` / ``umx_niter1_30s``: the Open-Unmix separator, umxhq shapes (4 targets), 30 s of stereo
  music, Wiener ``niter`` 0 / 1; upstream ``openunmix.model.Separator``, ports ``Separator.separate``;
- ``demucs_10s`` / ``demucs_60s``: Demucs v2, channels 64 (265.7 M parameters), ``apply_model(split=True,
  shifts=0)`` on the normalised track;
- ``umx_train_step``: one training step (forward, MSE on magnitudes, backward, Adam) of one umxhq target, batch 16
  of 6-s excerpts, LSTM dropout 0.4; ``demucs_train_step``: Demucs channels 16, batch 4 of ``valid_length(2 s)``
  samples of 4 sources, L1;
- the length sweep: the separator with ``niter 1`` at 10, 30, 60 and 300 s and ``apply_model`` at 10, 60 and 300 s
  (the 30 s, 10 s and 60 s points are the ones above), to see whether time and memory grow linearly.

The full plan's default run has to finish in 25 minutes on a 2-core machine, so the longest points run only with
``--long``: Demucs on 300 s (about 3-7 minutes a call for upstream and each port, some 25 minutes for the point),
and for NNabla (single-threaded kernels) the Demucs 60 s and UMX 300 s points as well (3.5 minutes a call at
60 s, 20 minutes at 300 s).

HTDemucs (demucs v4; ``--points htdemucs`` selects them): upstream is demucs 4.1.0, run in its own worker process
(:data:`benchmarks.impls.UPSTREAM4`), and the ports are those of :data:`HTDEMUCS_IMPLS`. Seeded
weights at the released ``htdemucs`` shapes (:func:`core_spec.configs.htdemucs_preset`: 42 M parameters a model):

- ``htdemucs_7.8s`` / ``htdemucs_60s``: v4 ``apply_model(shifts=0, split=True, overlap=0.25)`` on the normalised
  track (upstream's default is ``shifts=1``, unseeded random offsets: 0 keeps every implementation on the same
  samples and the same work). With the 25 % overlap the stride is 5.85 s, so 7.8 s runs two 7.8-s forwards (the
  second chunk padded with zeros to the segment) and 60 s eleven;
- ``htdemucs_ft_30s``: the ``htdemucs_ft`` bag (four models, one-hot source weights) on 30 s: every model runs
  the whole track (6 chunks each), as upstream's ``BagOfModels``;
- ``htdemucs_train_step``: one training step of htdemucs (demucs 4's solver: the mixture of a batch of one 7.8-s
  excerpt of 4 sources, the network in train mode at that length, L1 per source, backward, Adam in demucs 4's two
  groups; transformer dropout 0.02 as released, so the first losses differ by the masks). JAX: only once its
  trainer has HTDemucs (its row says "not available" until then).

These add about 15 minutes to the default run on a 2-core machine (the bag point alone some 7).

The quick plan (``--quick``) has the same structure on seconds-long inputs and small models (UMX hidden size 32
and one LSTM layer, Demucs channels 8 and depth 3, so that TF and JAX compile quickly; the separator with
``niter 1`` only): it only keeps the command working. Its HTDemucs points (a small HTDemucs of 0.5-s segments,
:data:`benchmarks.models.HTDEMUCS_SMALL`) run only when asked for (``--quick --points htdemucs``), so that
``--quick`` alone keeps its v2 points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FULL", "HTDEMUCS_IMPLS", "QUICK", "QUICK_HTDEMUCS", "Plan", "Point", "Sizes", "plan"]

RATE = 44100

HTDEMUCS_IMPLS = ("upstream", "torch", "tf", "jax", "nnabla")
"""The implementations with HTDemucs (upstream: demucs 4.1.0)."""


@dataclass(frozen=True)
class Sizes:
    """The model sizes of a plan: ``None`` keeps the preset's (umxhq hidden 512, Demucs channels 64)."""

    umx_hidden: int | None = None
    demucs_channels: int = 64
    train_umx_hidden: int | None = None
    train_demucs_channels: int = 16
    umx_layers: int | None = None  # LSTM layers (preset: 3)
    demucs_depth: int | None = None  # encoder/decoder layers (preset: 6)
    htdemucs_small: bool = False  # HTDemucs: benchmarks.models.HTDEMUCS_SMALL instead of the released shapes


@dataclass(frozen=True)
class Point:
    """One measured workload at one size.

    Attributes:
        name: unique key (``umx_niter1_60s``).
        kind: ``"separator"`` (UMX separation), ``"apply"`` (Demucs ``apply_model``) or ``"train"`` (one step).
        model: ``"umx"``, ``"demucs"`` (v2), ``"htdemucs"`` or ``"htdemucs_ft"`` (the bag of four).
        seconds: audio length (training: the length of each excerpt).
        niter: Wiener EM iterations (separator).
        batch: excerpts per training batch.
        repeats: at most this many timed calls after the warm-up; fewer once ``max_timed_s`` of them ran.
        long_for: implementations that run this point only with ``--long`` (too slow for the default run), and
            ``long_reason`` why.
        label: how the tables name it.
        impls: the implementations that have this workload (empty: all); the others do not run it.
    """

    name: str
    kind: str
    model: str
    seconds: float
    niter: int = 1
    batch: int = 1
    repeats: int = 3
    long_for: tuple[str, ...] = ()
    long_reason: str = ""
    label: str = ""
    impls: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # from JSON: lists
        object.__setattr__(self, "long_for", tuple(self.long_for))
        object.__setattr__(self, "impls", tuple(self.impls))

    @property
    def htdemucs(self) -> bool:
        """An HTDemucs (demucs v4) workload: upstream is demucs 4.1.0, in its own process."""
        return self.model.startswith("htdemucs")

    @property
    def nb_timesteps(self) -> int:
        """Samples of the input (training: of each excerpt): ``round(seconds * 44100)`` (7.8 s: 343 980)."""
        return round(self.seconds * RATE)

    def runs(self, impl: str) -> bool:
        """Whether ``impl`` has this workload."""
        return not self.impls or impl in self.impls

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio one call processes (training: the whole batch): the real-time factor's divisor."""
        return self.seconds * self.batch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    """A benchmark run's points, sizes and sweeps.

    Attributes:
        name: ``"full"`` or ``"quick"``.
        points: in the order they run.
        sweeps: model -> names of its sweep points, shortest first.
        main: names of the points of the main table (the README's).
        max_timed_s: a point stops its timed calls once they took this long (at least one runs).
    """

    name: str
    sizes: Sizes
    points: tuple[Point, ...]
    sweeps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    main: tuple[str, ...] = ()
    max_timed_s: float = 60.0

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"no point {name!r} in the {self.name} plan; known: {[p.name for p in self.points]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sizes": dataclasses.asdict(self.sizes),
            "points": [p.to_dict() for p in self.points],
            "sweeps": {k: list(v) for k, v in self.sweeps.items()},
            "main": list(self.main),
            "max_timed_s": self.max_timed_s,
        }


def separator(seconds: float, niter: int, repeats: int, **kw: Any) -> Point:
    return Point(f"umx_niter{niter}_{seconds:g}s", "separator", "umx", float(seconds), niter=niter, repeats=repeats,
                 label=f"UMX separator niter {niter}, {seconds:g} s", **kw)  # fmt: skip


def apply(seconds: float, repeats: int, **kw: Any) -> Point:
    return Point(f"demucs_{seconds:g}s", "apply", "demucs", float(seconds), repeats=repeats,
                 label=f"Demucs apply_model, {seconds:g} s", **kw)  # fmt: skip


def train(model: str, batch: int, seconds: float, repeats: int) -> Point:
    label = f"{'UMX' if model == 'umx' else 'Demucs'} training step"
    return Point(f"{model}_train_step", "train", model, seconds, batch=batch, repeats=repeats, label=label)


_LONG_NNABLA_HT = {
    "long_for": ("nnabla",),
    "long_reason": "NNabla's single-threaded kernels take about 20 s a 7.8-s segment of the released HTDemucs",
}


def htdemucs_apply(seconds: float, repeats: int, bag: bool = False) -> Point:
    model = "htdemucs_ft" if bag else "htdemucs"
    what = "HTDemucs ft bag of 4" if bag else "HTDemucs"
    long = {} if seconds <= 7.8 and not bag else _LONG_NNABLA_HT  # NNabla: one segment by default
    return Point(f"{model}_{seconds:g}s", "apply", model, float(seconds), repeats=repeats, impls=HTDEMUCS_IMPLS,
                 label=f"{what} apply_model, {seconds:g} s", **long)  # fmt: skip


def htdemucs_train(batch: int, seconds: float, repeats: int) -> Point:
    return Point("htdemucs_train_step", "train", "htdemucs", float(seconds), batch=batch, repeats=repeats,
                 impls=HTDEMUCS_IMPLS, label="HTDemucs training step", **_LONG_NNABLA_HT)  # fmt: skip


_ALL = ("upstream", "torch", "tf", "tf_graph", "tf_xla", "jax", "nnabla")
_LONG_DEMUCS = {
    "long_for": _ALL,
    "long_reason": "Demucs on 300 s takes upstream and each port 3-7 min a call: about 25 min for the point",
}
_LONG_NNABLA = {
    "long_for": ("nnabla",),
    "long_reason": "NNabla's single-threaded kernels take 3.5 min a call for Demucs on 60 s, 4 min for UMX on 300 s",
}

FULL = Plan(
    "full",
    Sizes(),
    points=(
        separator(30, 0, 3),
        separator(30, 1, 3),
        apply(10, 3),
        apply(60, 1, **_LONG_NNABLA),
        train("umx", 16, 6.0, 3),
        train("demucs", 4, 2.0, 3),
        separator(10, 1, 3),
        separator(60, 1, 2),
        separator(300, 1, 1, **_LONG_NNABLA),
        apply(300, 1, **_LONG_DEMUCS),
        htdemucs_apply(7.8, 3),
        htdemucs_apply(60, 2),
        htdemucs_apply(30, 1, bag=True),
        htdemucs_train(1, 7.8, 3),
    ),
    sweeps={
        "umx": ("umx_niter1_10s", "umx_niter1_30s", "umx_niter1_60s", "umx_niter1_300s"),
        "demucs": ("demucs_10s", "demucs_60s", "demucs_300s"),
        "htdemucs": ("htdemucs_7.8s", "htdemucs_60s"),
    },
    main=(
        "umx_niter0_30s",
        "umx_niter1_30s",
        "demucs_10s",
        "demucs_60s",
        "umx_train_step",
        "demucs_train_step",
        "htdemucs_7.8s",
        "htdemucs_60s",
        "htdemucs_ft_30s",
        "htdemucs_train_step",
    ),
    max_timed_s=30.0,
)

QUICK = Plan(
    "quick",
    Sizes(
        umx_hidden=32,
        demucs_channels=8,
        train_umx_hidden=32,
        train_demucs_channels=8,
        umx_layers=1,
        demucs_depth=3,
        htdemucs_small=True,
    ),
    points=(
        separator(1, 1, 1),
        separator(2, 1, 1),
        apply(1, 1),
        apply(2, 1),
        train("umx", 2, 1.0, 1),
        train("demucs", 2, 1.0, 1),
    ),
    sweeps={"umx": ("umx_niter1_1s", "umx_niter1_2s"), "demucs": ("demucs_1s", "demucs_2s")},
    main=("umx_niter1_1s", "umx_niter1_2s", "demucs_1s", "demucs_2s", "umx_train_step", "demucs_train_step"),
    max_timed_s=5.0,
)


QUICK_HTDEMUCS = dataclasses.replace(
    QUICK,
    points=(
        *QUICK.points,
        htdemucs_apply(1, 1),
        htdemucs_apply(2, 1),
        htdemucs_apply(1, 1, bag=True),
        htdemucs_train(1, 0.5, 1),
    ),
    sweeps={**QUICK.sweeps, "htdemucs": ("htdemucs_1s", "htdemucs_2s")},
    main=(*QUICK.main, "htdemucs_1s", "htdemucs_2s", "htdemucs_ft_1s", "htdemucs_train_step"),
)
"""The quick plan with its HTDemucs points (small models): what ``--quick`` selects from when ``--points`` names
``htdemucs`` or one of them."""


def _names_htdemucs(names: Sequence[str]) -> bool:
    return any(name == "htdemucs" or name.startswith("htdemucs_") for name in names)


def plan(quick: bool, names: Sequence[str] | None = None) -> Plan:
    """The full plan, or the quick one; the quick one with its HTDemucs points when ``names`` (``--points``) asks
    for them (module docstring)."""
    if not quick:
        return FULL
    return QUICK_HTDEMUCS if names and _names_htdemucs(names) else QUICK
