"""The TensorFlow port as the benchmark calls it, through its public API: ``umx_tf.from_canonical``,
``Separator.separate`` (one ``tf.function``), ``apply_model`` (HTDemucs: ``umx_tf.htdemucs_apply.apply_model``,
shifts 0, overlap 0.25); training: ``umx_tf.train.Trainer.step`` (the timed call).

Options: ``jit_compile`` for inference (``None``: the port's default: XLA on a CPU for UMX and Demucs v2, the
plain graph for HTDemucs, where XLA measured slower; ``False``: the plain ``tf.function`` graph, implementation
``tf_graph``); ``train_jit_compile`` (default ``False``, the trainer's default; ``True``: implementation ``tf_xla``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["apply", "configure", "separator", "train", "versions"]


def configure(threads: int, options: Mapping[str, Any]) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}


def separator(cfg: Any, weights: Any, audio: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    from umx_tf import from_canonical

    model = from_canonical(cfg, weights, jit_compile=options.get("jit_compile"))
    batch = audio[None]
    return lambda: model.separate(batch).numpy()


def apply(cfg: Any, weights: Any, mix: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    import tensorflow as tf

    from core_spec.configs import DemucsConfig
    from umx_tf import apply_model, from_canonical
    from umx_tf.htdemucs_apply import apply_model as apply_v4

    model = from_canonical(cfg, weights)
    x = tf.constant(mix)
    jit = options.get("jit_compile")
    if isinstance(cfg, DemucsConfig):
        return lambda: apply_model(model, x, shifts=0, split=True, jit_compile=jit).numpy()
    return lambda: apply_v4(model, x, shifts=0, split=True, overlap=0.25, jit_compile=jit).numpy()


def train(
    cfg: Any, recipe: Any, weights: Any, batch: Mapping[str, np.ndarray], options: Mapping[str, Any]
) -> tuple[Callable[[], float], int]:
    import tensorflow as tf

    from umx_tf import from_canonical
    from umx_tf.train import Trainer

    model = from_canonical(cfg, weights)
    trainer = Trainer(model, recipe, weights=weights, jit_compile=bool(options.get("train_jit_compile", False)))
    data = tuple(tf.constant(batch[k]) for k in (("x", "y") if "x" in batch else ("sources",)))
    params = sum(int(np.prod(v.shape)) for v in trainer.params.values)
    return (lambda: trainer.step(data)), params
