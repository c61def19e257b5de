"""The one way a forward pass records its intermediate outputs, in the spec and in every port.

A model's forward takes an optional ``trace`` dict; it wraps it in a :class:`Recorder` with the spec's keys
(:data:`core_spec.reference.umx.UMX_TRACE_KEYS`, :func:`core_spec.reference.demucs.demucs_trace_keys`) and passes
every intermediate through it::

    keep = Recorder(trace, UMX_TRACE_KEYS)
    x = keep("fc1", linear(x, w["fc1.weight"]))

The recorder returns the value unchanged, so the forward reads the same with or without a trace. A key that is
not one of the spec's is an error even when nothing is recorded, so a port cannot drift from the spec's names.
A port whose layout differs from the spec's (TF's and JAX's channels-last tensors) passes ``convert``, which turns
a value into the spec's layout before it is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["Recorder"]

V = TypeVar("V")


class Recorder:
    """Stores named intermediate outputs in ``trace`` when one is given; keeps nothing otherwise.

    Args:
        trace: the dict to fill, or ``None`` (record nothing).
        keys: the names that may be recorded (the spec's trace keys).
        convert: applied to every value before it is stored (a port's layout -> the spec's layout).
    """

    def __init__(
        self, trace: dict[str, Any] | None, keys: Iterable[str], convert: Callable[[Any], Any] | None = None
    ) -> None:
        self.trace = trace
        self.keys = frozenset(keys)
        self.convert = convert

    @property
    def active(self) -> bool:
        """Whether values are being recorded (a port may take in-place shortcuts when not)."""
        return self.trace is not None

    def __call__(self, key: str, value: V, convert: Callable[[V], Any] | None = None) -> V:
        """Record ``value`` under ``key`` (after ``convert``, or the recorder's own) and return it unchanged."""
        if key not in self.keys:
            raise KeyError(f"trace key {key!r} is not one of the spec's: {sorted(self.keys)}")
        if self.trace is not None:
            fn = convert or self.convert
            self.trace[key] = fn(value) if fn is not None else value
        return value
