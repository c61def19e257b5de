"""``unmix.heap``: the JAX commands give the compiler's freed heap back after each compilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from unmix import heap


def test_trim_runs_after_each_jax_compilation(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "release_free_heap", lambda: calls.append(1) or True)
    if not heap.trim_after_jax_compilations():
        pytest.skip("no malloc_trim in this C library")  # not glibc: the command registers nothing either
    assert heap.trim_after_jax_compilations()  # a second call registers nothing more

    def f(x):
        return jnp.sin(x) * 3.0

    x7, x11 = jnp.ones(7), jnp.ones(11)  # made (and their own graphs compiled) before counting
    calls.clear()
    jax.jit(f)(x7)  # a shape never compiled before in this process: a backend compilation
    first = len(calls)
    jax.jit(f)(x7)  # cached in memory: no compilation, no trim
    again = len(calls)
    jax.jit(f)(x11)  # another shape: compiled, trimmed
    assert first >= 1
    assert again == first
    assert len(calls) > again


def test_release_free_heap_runs() -> None:
    assert isinstance(heap.release_free_heap(), bool)
