"""What the ports' exported Demucs networks share (``umx_tf.exported``, ``umx_jax.exported``).

:class:`ExportedNetwork` is the framework-neutral part of a port's ``ExportedDemucs``: what ``apply_model`` and
``separate_track`` read of a Demucs v2 (its config's sources, channels, rate, segment and
:func:`core_spec.shapes.valid_length`), and the network on a padded chunk run by the exported graph of that chunk's
shape with its weights. A port adds its dtype attribute and ``compiled_call`` in its own dialect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import shapes
from .configs import DemucsConfig

__all__ = ["ExportedNetwork"]


class ExportedNetwork:
    """A Demucs v2 whose network runs by exported graphs, one per chunk shape, with no model built.

    Args:
        config: the model's config.
        graph: the exported network for a chunk shape ``(nb_samples, audio_channels, valid_length)`` (the caller
            reads or exports and keeps it); called as ``graph(window, weights)``.
        weights: a graph's weight arrays in the port's framework (converted once by the caller).
    """

    def __init__(
        self, config: DemucsConfig, graph: Callable[[tuple[int, ...]], Any], weights: Callable[[Any], Sequence[Any]]
    ):
        self.config = config
        self.sources, self.audio_channels = tuple(config.sources), config.audio_channels
        self.samplerate, self.segment_length = config.samplerate, config.segment_length
        self._graph, self._weights = graph, weights

    def valid_length(self, length: int) -> int:
        """Smallest input length ``>= length`` the model takes whole (:func:`core_spec.shapes.valid_length`)."""
        return shapes.valid_length(length, self.config)

    def forward(self, window: Any) -> Any:
        """The network on a padded chunk ``(nb_samples, audio_channels, valid_length)``: its shape's graph."""
        graph = self._graph(tuple(int(n) for n in window.shape))
        return graph(window, self._weights(graph))
