"""Where the port's variables and operations live: a ``tf.device`` name for ``--device cpu|gpu``."""

from __future__ import annotations

import contextlib

import tensorflow as tf

from core_spec.devices import device_name

__all__ = ["device_scope", "tf_device"]


def tf_device(device: str | None) -> str | None:
    """A ``tf.device`` name: ``None`` (TensorFlow's placement), ``"cpu"`` -> ``/CPU:0``, ``"gpu"`` -> ``/GPU:0``;
    names such as ``"/GPU:1"`` pass through.

    Raises:
        RuntimeError: ``"gpu"`` where TensorFlow sees no GPU.
    """
    if device is None or str(device).startswith("/"):
        return device
    if device_name(device) == "cpu":
        return "/CPU:0"
    if not tf.config.list_logical_devices("GPU"):
        raise RuntimeError(f"device {device!r}: TensorFlow sees no GPU (tf.config.list_logical_devices is empty)")
    return "/GPU:0"


def device_scope(device: str | None) -> contextlib.AbstractContextManager:
    """``tf.device(tf_device(device))``, or nothing for ``None``: run a model's calls inside it, as it was built."""
    name = tf_device(device)
    return tf.device(name) if name is not None else contextlib.nullcontext()
