"""Where and in what precision the NNabla port runs.

NNabla 1.39's CPU extension registers float32 (and half) kernels only: ``get_extension_context("cpu",
type_config="double")`` raises "Unknown data type config", and a hand-made ``cpu:double`` context finds no kernel
("Any of [cpu:double] could not be found"). The port therefore computes in **float32**; its NumPy parts (FFT,
Wiener filter, overlap-add) follow the dtype of the arrays they are given.

GPU: install ``nnabla-ext-cuda<version>`` matching the CUDA driver and select ``device="gpu"``: the graphs then
run in the ``cudnn`` context (``F.lstm`` becomes cuDNN's RNN). Not required; not installed by ``make setup``.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import nnabla as nn

__all__ = ["DTYPES", "GraphCache", "device_context", "is_gpu_context", "on_device"]

DTYPES = ("float32",)

# NNabla 1.39's Cython modules are compiled with Python 2 import semantics: every function call made while
# building a graph runs ``import nnabla`` and ``import gc`` as *implicit relative* imports, which first look for
# the modules ``nnabla.nnabla`` and ``nnabla.gc``, fail, and fall back to the absolute import. Failed imports are
# not cached, so each ``F.*`` call pays two searches of the package directory: ~100-400 us per function on these
# machines (F.sigmoid: 127 us -> 12 us with the aliases below), which dominated building the unrolled LSTM graphs
# (4.2 -> 0.7 ms per time step). Registering the two names as aliases of the modules the fallback finds anyway
# makes the relative lookup succeed at once; nothing else changes.
sys.modules.setdefault("nnabla.nnabla", nn)
sys.modules.setdefault("nnabla.gc", gc)


def device_context(device: str = "cpu") -> nn.Context:
    """The extension context of ``device`` (``"cpu"`` or ``"gpu"``), float32.

    Raises:
        RuntimeError: ``"gpu"`` without ``nnabla-ext-cuda`` installed.
    """
    from nnabla.ext_utils import get_extension_context

    if device == "cpu":
        return get_extension_context("cpu", type_config="float")
    if device == "gpu":
        try:
            return get_extension_context("cudnn", type_config="float")
        except Exception as e:  # ImportError from the missing extension, or its own errors
            raise RuntimeError(
                "device 'gpu' needs the NNabla CUDA extension: pip install nnabla-ext-cuda<version> "
                f"(matching your CUDA driver) into .venv-nnabla ({e})"
            ) from None
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def is_gpu_context(ctx: nn.Context | None = None) -> bool:
    """True when ``ctx`` (default: the current default context) runs on a CUDA extension."""
    ctx = ctx or nn.get_current_context()
    return any(b.startswith(("cuda", "cudnn")) for b in ctx.backend)


@contextlib.contextmanager
def on_device(device: str = "cpu") -> Iterator[nn.Context]:
    """Run the graphs built inside the block on ``device`` (``nn.context_scope``)."""
    ctx = device_context(device)
    with nn.context_scope(ctx):
        yield ctx


class GraphCache:
    """The graphs a model built for its last few input shapes: ``cache(shape)`` returns ``build(shape)`` (a tuple
    of Variables: inputs and output), built once while the shape recurs (the chunks of a track share one length),
    the least recently used dropped beyond ``size``. Loading new weights clears it (a graph holds the parameter
    arrays it was built with)."""

    def __init__(self, build: Callable[[tuple[int, ...]], tuple[Any, ...]], size: int = 4):
        self._build = build
        self._size = size
        self._graphs: OrderedDict[tuple[int, ...], tuple[Any, ...]] = OrderedDict()

    def __call__(self, shape: tuple[int, ...]) -> tuple[Any, ...]:
        shape = tuple(int(n) for n in shape)
        if shape in self._graphs:
            self._graphs.move_to_end(shape)
        else:
            self._graphs[shape] = self._build(shape)
            while len(self._graphs) > self._size:
                self._graphs.popitem(last=False)
        return self._graphs[shape]

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()
