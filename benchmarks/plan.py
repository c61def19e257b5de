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

The quick plan (``--quick``) has the same structure on seconds-long inputs and small models (UMX hidden size 32
and one LSTM layer, Demucs channels 8 and depth 3, so that TF and JAX compile quickly; the separator with
``niter 1`` only): it only keeps the command working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FULL", "QUICK", "Plan", "Point", "Sizes", "plan"]

RATE = 44100


@dataclass(frozen=True)
class Sizes:
    """The model sizes of a plan: ``None`` keeps the preset's (umxhq hidden 512, Demucs channels 64)."""

    umx_hidden: int | None = None
    demucs_channels: int = 64
    train_umx_hidden: int | None = None
    train_demucs_channels: int = 16
    umx_layers: int | None = None  # LSTM layers (preset: 3)
    demucs_depth: int | None = None  # encoder/decoder layers (preset: 6)


@dataclass(frozen=True)
class Point:
    """One measured workload at one size.

    Attributes:
        name: unique key (``umx_niter1_60s``).
        kind: ``"separator"`` (UMX separation), ``"apply"`` (Demucs ``apply_model``) or ``"train"`` (one step).
        model: ``"umx"`` or ``"demucs"``.
        seconds: audio length (training: the length of each excerpt).
        niter: Wiener EM iterations (separator).
        batch: excerpts per training batch.
        repeats: at most this many timed calls after the warm-up; fewer once ``max_timed_s`` of them ran.
        long_for: implementations that run this point only with ``--long`` (too slow for the default run), and
            ``long_reason`` why.
        label: how the tables name it.
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
    ),
    sweeps={
        "umx": ("umx_niter1_10s", "umx_niter1_30s", "umx_niter1_60s", "umx_niter1_300s"),
        "demucs": ("demucs_10s", "demucs_60s", "demucs_300s"),
    },
    main=("umx_niter0_30s", "umx_niter1_30s", "demucs_10s", "demucs_60s", "umx_train_step", "demucs_train_step"),
    max_timed_s=30.0,
)

QUICK = Plan(
    "quick",
    Sizes(umx_hidden=32, demucs_channels=8, train_umx_hidden=32, train_demucs_channels=8, umx_layers=1, demucs_depth=3),
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


def plan(quick: bool) -> Plan:
    """The quick or the full plan."""
    return QUICK if quick else FULL
