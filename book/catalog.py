"""The book's table of contents: its component pages in the order data flows, the ``Lesson.page`` values of
:data:`core_spec.public_api.LESSONS` each one hosts, and how the four ports are named on the page.

A lesson is named ``<module>.<name>`` (:func:`lesson_key`): the spec object's name, or the port target's for a
step without a NumPy reference (``weights.load_weights``, ``train.loss_and_grads``).
"""

from __future__ import annotations

from dataclasses import dataclass

from book.source_index import spec_location
from core_spec.public_api import LESSONS, PORTS, Lesson

__all__ = [
    "BUILTIN_DOCS",
    "COMPONENTS",
    "PORT_LABELS",
    "Component",
    "builtin_link",
    "component_of",
    "lesson_key",
    "lessons",
]

PORT_LABELS: dict[str, str] = {
    "umx_torch": "PyTorch",
    "umx_tf": "TensorFlow",
    "umx_jax": "JAX",
    "umx_nnabla": "NNabla",
}
"""Port package -> its tab's title, in :data:`core_spec.public_api.PORTS` order."""

assert list(PORT_LABELS) == list(PORTS)


@dataclass(frozen=True)
class Component:
    """One page of the book.

    Attributes:
        file: the Markdown file under ``book/pages``.
        title: the page's title in the navigation.
        hosts: the :attr:`core_spec.public_api.Lesson.page` values whose lessons appear on this page.
    """

    file: str
    title: str
    hosts: tuple[str, ...]


COMPONENTS: tuple[Component, ...] = (
    Component("stft.md", "STFT and magnitude", ("stft",)),
    Component("umx.md", "Open-Unmix", ("umx.layers", "lstm", "umx")),
    Component("wiener.md", "Wiener filter and EM", ("wiener",)),
    Component("separator.md", "The UMX separator", ("separator",)),
    Component("demucs-encoder.md", "Demucs encoder block", ("demucs.encoder",)),
    Component("demucs-blstm.md", "Demucs BLSTM bottleneck", ("demucs.blstm",)),
    Component("demucs-decoder.md", "Demucs decoder block", ("demucs.decoder", "demucs.conv")),
    Component("valid-length.md", "Demucs forward and valid_length", ("demucs",)),
    Component("resample.md", "The resampler", ("resample",)),
    Component("apply-model.md", "apply_model", ("apply_model",)),
    Component("htdemucs.md", "HTDemucs (Demucs v4): the model", ("htdemucs",)),
    Component("htdemucs-spec.md", "HTDemucs: the spectrogram", ("htdemucs.spec",)),
    Component("htdemucs-layers.md", "HTDemucs: encoder and decoder layers", ("htdemucs.layers",)),
    Component("htdemucs-transformer.md", "HTDemucs: the cross-transformer", ("htdemucs.transformer",)),
    Component("htdemucs-apply.md", "HTDemucs on whole tracks", ("htdemucs.apply",)),
    Component("weights.md", "Weights layout", ("weights",)),
    Component("train.md", "The training step", ("train",)),
)
"""The component pages, in the order data flows (issue 17's list)."""


def lesson_key(module: str, lesson: Lesson) -> str:
    """``"transforms.stft"``: the module and the spec object's name, or the PyTorch target's for a lesson without
    a spec object."""
    if lesson.spec is not None:
        return f"{module}.{spec_location(lesson.spec)[1]}"
    return f"{module}.{lesson.ports['umx_torch'].split('.')[0]}"


def lessons() -> dict[str, tuple[str, int, Lesson]]:
    """Lesson key -> ``(module, row number from 1, lesson)``, in :data:`LESSONS` order."""
    out: dict[str, tuple[str, int, Lesson]] = {}
    for module, rows in LESSONS.items():
        for row, lesson in enumerate(rows, start=1):
            key = lesson_key(module, lesson)
            if key in out:
                raise ValueError(f"two lessons are named {key}: rows {out[key][1]} and {row} of {module}")
            out[key] = (module, row, lesson)
    return out


def component_of(page: str) -> Component | None:
    """The component page that hosts ``Lesson.page`` value ``page``."""
    return next((c for c in COMPONENTS if page in c.hosts), None)


BUILTIN_DOCS: dict[str, str] = {
    "torch.nn.": "https://docs.pytorch.org/docs/stable/generated/{name}.html",
    "keras.layers.Dense": "https://keras.io/api/layers/core_layers/dense/",
    "keras.layers.Conv1DTranspose": "https://keras.io/api/layers/convolution_layers/convolution1d_transpose/",
    "keras.layers.Conv1D": "https://keras.io/api/layers/convolution_layers/convolution1d/",
    "keras.layers.": "https://keras.io/api/layers/",
    "nnabla.parametric_functions.": (
        "https://nnabla.readthedocs.io/en/latest/python/api/parametric_function.html#{name}"
    ),
    "nnabla.functions.": "https://nnabla.readthedocs.io/en/latest/python/api/function.html#{name}",
    "jax.": "https://docs.jax.dev/en/latest/_autosummary/{name}.html",
    "flax.": "https://flax.readthedocs.io/en/latest/search.html?q={name}",
}
"""Framework layer prefix -> its documentation page (``{name}``: the full dotted name). Links only: nothing is
fetched."""


def builtin_link(name: str) -> str:
    """The documentation address of a framework layer (``"torch.nn.LSTM"``), by the longest matching prefix."""
    prefix = max((p for p in BUILTIN_DOCS if name.startswith(p)), key=len, default=None)
    if prefix is None:
        raise KeyError(f"no documentation address for the framework layer {name!r}: add its prefix to BUILTIN_DOCS")
    return BUILTIN_DOCS[prefix].format(name=name)
