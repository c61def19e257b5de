"""The implementations ``python -m benchmarks`` compares, and how each one's worker process is started.

Every implementation module (``benchmarks/impls/<module>.py``) has the same functions, called by
:mod:`benchmarks.worker` in a fresh process: ``configure(threads, options)`` (first: thread settings),
``versions()``, ``separator(cfg, weights, audio, options)`` and ``apply(cfg, weights, mix, options)`` (each
returns the timed call, which returns the output as a NumPy array), ``train(cfg, recipe, weights, batch,
options)`` (returns the timed training step, which returns the loss, and the parameter count). They use the
ports' public API only; a workload an implementation does not have yet raises
:class:`benchmarks.common.NotAvailable`. Stdlib only here: the driver imports this in either environment.

Upstream has two worker variants: demucs 2.0.3 / openunmix (:data:`IMPLS` ``["upstream"]``) and, for the HTDemucs
points, demucs 4.1.0 (:data:`UPSTREAM4`, worker key ``upstream4``), which is the module ``demucs`` too and so runs
in its own process with the oracle folder first on ``PYTHONPATH``. Both write rows under ``upstream`` (the
reference of the ratios); :func:`worker_key` picks the variant of a point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_IMPLS",
    "IMPLS",
    "THREADS",
    "UPSTREAM4",
    "XLA_FLAGS",
    "Impl",
    "common_env",
    "impl_spec",
    "worker_key",
]

THREADS = 2
"""Intra-op threads of every implementation (torch ``set_num_threads``, TF intra/inter-op, XLA, OpenMP/BLAS)."""

XLA_FLAGS = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}"


@dataclass(frozen=True)
class Impl:
    """One implementation.

    Attributes:
        key: its name in the results (``upstream``, ``torch``, ``tf``, ``jax``, ``nnabla``, ``tf_graph``).
        module: the benchmark module with its calls.
        label: how the tables name it.
        env: ``"main"`` (``.venv``) or ``"nnabla"`` (``.venv-nnabla``).
        compiles: its first call traces and compiles: timed on its own (``compile_s``), and the peak memory is
            measured on the second call.
        options: keyword options for the module's calls (e.g. ``jit_compile``).
        env_vars: extra environment variables of its worker process.
        oracle4: its worker runs with the demucs 4.1.0 oracle folder first on ``PYTHONPATH``.
    """

    key: str
    module: str
    label: str
    env: str = "main"
    compiles: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    oracle4: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "module": self.module,
            "env": self.env,
            "compiles": self.compiles,
            "options": dict(self.options),
            "env_vars": dict(self.env_vars),
            "oracle4": self.oracle4,
        }


IMPLS: dict[str, Impl] = {
    "upstream": Impl("upstream", "benchmarks.impls.upstream", "upstream"),
    "torch": Impl("torch", "benchmarks.impls.port_torch", "umx_torch"),
    "tf": Impl("tf", "benchmarks.impls.port_tf", "umx_tf", compiles=True),
    "jax": Impl("jax", "benchmarks.impls.port_jax", "umx_jax", compiles=True, env_vars={"XLA_FLAGS": XLA_FLAGS}),
    "nnabla": Impl("nnabla", "benchmarks.impls.port_nnabla", "umx_nnabla", env="nnabla"),
    # not run by default: TensorFlow without XLA (a plain tf.function graph; the LSTM loops are XLA-compiled
    # either way), and with XLA for training too
    "tf_graph": Impl(
        "tf_graph", "benchmarks.impls.port_tf", "umx_tf (graph)", compiles=True, options={"jit_compile": False}
    ),
    "tf_xla": Impl(
        "tf_xla", "benchmarks.impls.port_tf", "umx_tf (XLA)", compiles=True, options={"train_jit_compile": True}
    ),
}

DEFAULT_IMPLS = ("upstream", "torch", "tf", "jax", "nnabla")

UPSTREAM4 = Impl("upstream", "benchmarks.impls.upstream4", "upstream (demucs 4.1.0)", oracle4=True)
"""Upstream of the HTDemucs points: demucs 4.1.0 in its own worker process (worker key ``upstream4``)."""

_VARIANTS = {"upstream4": UPSTREAM4}


def impl_spec(key: str) -> Impl:
    """The implementation of a worker key: a key of :data:`IMPLS`, or ``upstream4`` (:data:`UPSTREAM4`)."""
    return _VARIANTS[key] if key in _VARIANTS else IMPLS[key]


def worker_key(impl: str, htdemucs: bool) -> str:
    """The worker that runs ``impl`` on a point: ``upstream4`` for upstream on an HTDemucs point, else ``impl``."""
    return "upstream4" if impl == "upstream" and htdemucs else impl


def common_env(threads: int = THREADS) -> dict[str, str]:
    """The environment every worker starts with: the same thread counts, the run's OpenMP wait policy
    (:data:`benchmarks.common.TIMING_ENV`, ``--omp-wait``), and glibc's allocator set up for the memory
    measurement (``benchmarks.common.MEMORY_ENV``; the worker switches it for the timed calls)."""
    from benchmarks.common import MEMORY_ENV, TIMING_ENV

    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **TIMING_ENV,
        **MEMORY_ENV,
    }
