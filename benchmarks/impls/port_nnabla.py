"""The NNabla port as the benchmark calls it (in ``.venv-nnabla``), through its public API:
``umx_nnabla.from_canonical``, ``Separator.separate``, ``apply_model``; training: ``umx_nnabla.train.make_step``,
``make_optimizer`` (:class:`~umx_nnabla.train.TorchAdam`) and ``trainable_parameters``, as the port's
:class:`~umx_nnabla.train.Trainer` steps them. NNabla's CPU extension runs single-threaded kernels: no thread
setting applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["apply", "configure", "separator", "train", "versions"]


def configure(threads: int, options: Mapping[str, Any]) -> None:
    import umx_nnabla  # noqa: F401  (its import sets the context that keeps NNabla's graph construction fast)


def versions() -> dict[str, str]:
    import nnabla

    return {"nnabla": nnabla.__version__, "numpy": np.__version__}


def separator(cfg: Any, weights: Any, audio: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    from umx_nnabla import from_canonical

    model = from_canonical(cfg, weights)
    batch = audio[None]
    return lambda: np.asarray(model.separate(batch))


def apply(cfg: Any, weights: Any, mix: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    from core_spec.configs import DemucsConfig
    from umx_nnabla import apply_model, from_canonical
    from umx_nnabla.htdemucs_apply import apply_model as apply_v4

    model = from_canonical(cfg, weights)
    if isinstance(cfg, DemucsConfig):
        return lambda: np.asarray(apply_model(model, mix, shifts=0, split=True))
    return lambda: np.asarray(apply_v4(model, mix, shifts=0, split=True, overlap=0.25))


def _graph_shape(step: Any, arrays: tuple[np.ndarray, ...]) -> tuple[int, ...]:
    """The shape the step's graph is built for: Demucs the sources', UMX the magnitudes' ``(B, C, F, T)``."""
    if len(arrays) == 1:
        return arrays[0].shape
    fft = step.stft_config
    batch, channels, length = arrays[0].shape
    return (batch, 1 if step.model.config.nb_channels == 1 else channels, fft.nb_bins, fft.nb_frames(length))


def train(
    cfg: Any, recipe: Any, weights: Any, batch: Mapping[str, np.ndarray], options: Mapping[str, Any]
) -> tuple[Callable[[], float], int]:
    import nnabla as nn

    from umx_nnabla import from_canonical
    from umx_nnabla import train as port

    nn.seed(0)
    model = from_canonical(cfg, weights)
    data = (batch["x"], batch["y"]) if "x" in batch else (batch["sources"],)
    step = port.make_step(model, recipe)  # UMX: LSTM dropout 0.4, as upstream
    step.graph(_graph_shape(step, data))  # the LSTMs' trainable biases exist from here, before the optimiser
    optimizer = port.make_optimizer(model, recipe)
    arg = data if len(data) == 2 else data[0]

    def one_step() -> float:
        optimizer.zero_grad()
        loss = step(arg, recipe)
        optimizer.step()
        return float(loss)

    return one_step, int(sum(v.size for v in port.trainable_parameters(model).values()))
