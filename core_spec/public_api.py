"""The public names every port exports, module by module: the contract that lets a reader put the four ports side
by side (``umx_torch``, ``umx_tf``, ``umx_jax``, ``umx_nnabla``) and call them the same way.

A port may export more (framework-specific helpers: a graph builder in NNabla, a Keras layer in TensorFlow); it may
not export less. ``parity_tests/spec/test_public_api.py`` checks every port importable in the environment.
"""

from __future__ import annotations

__all__ = ["PORTS", "PUBLIC_NAMES"]

PORTS = {"umx_torch": "torch", "umx_tf": "tensorflow", "umx_jax": "jax", "umx_nnabla": "nnabla"}

PUBLIC_NAMES: dict[str, tuple[str, ...]] = {
    "transforms": ("ShortSignalError", "complex_norm", "istft", "stft"),
    "umx": ("OpenUnmix",),
    "demucs": ("Demucs", "center_trim", "valid_length"),
    "resample": ("resample_frac",),
    "filtering": ("expectation_maximization", "upstream_atan2", "wiener"),
    "separator": ("Separator", "apply_model", "separate_track"),
    "weights": (
        "FORMAT",
        "WeightsMismatchError",
        "from_canonical",
        "from_canonical_file",
        "load_module",
        "load_native",
        "load_weights",
        "native_paths",
        "save_native",
        "to_canonical",
    ),
    # the package itself: the models, the functions of a separation, and the weights entry points
    "": (
        "Demucs",
        "OpenUnmix",
        "Separator",
        "apply_model",
        "center_trim",
        "complex_norm",
        "expectation_maximization",
        "from_canonical",
        "from_canonical_file",
        "istft",
        "load_module",
        "load_native",
        "load_weights",
        "resample_frac",
        "save_native",
        "separate_track",
        "stft",
        "to_canonical",
        "valid_length",
        "wiener",
    ),
}
