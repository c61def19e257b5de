"""Training of Open-Unmix, Demucs v2 and HTDemucs (demucs 4) in NNabla, with the upstream recipes of
:mod:`core_spec.training`.

The pieces, in the order of the lesson (``core_spec.public_api.LESSONS["train"]``), then NNabla's own:

- :func:`spectrogram` and the losses as graphs: :class:`UMXStep` (MSE between the network's output and the
  target's magnitude; both magnitudes come from the ``center=False`` STFT of upstream's ``scripts/train.py``,
  computed with the port's NumPy FFT: no gradient flows into the STFT) and :class:`DemucsStep` (L1, or MSE, between
  the estimates and the centre-trimmed sources, ``demucs/train.py``) and :class:`HTDemucsStep` (demucs 4's loss,
  :func:`htdemucs_loss`: L1 per source averaged over channels, time and batch, weighted; the network in training
  mode at the batch's length, its frequency branch inverted in the graph, the cross-transformer's dropout at the
  config's ``t_dropout``). Each builds one ``nn.Variable`` graph per batch shape, the model in training mode
  (:meth:`umx_nnabla.umx.OpenUnmix.__call__` ``train=True``: BatchNorm on batch statistics with torch's
  running-statistics update, LSTM dropout, the two upstream LSTM biases as parameters), and runs ``loss.forward()``
  / ``loss.backward()``;
- :func:`make_optimizer` (:class:`TorchAdam`, below; for HTDemucs demucs 4's two groups, :func:`optimizer_groups`:
  the cross-transformer with its ``t_weight_decay`` / ``t_lr``, the rest with the recipe's) and :class:`Trainer`, the
  port's
  :class:`core_spec.epochs.EpochTrainer` (step, learning rate, per-epoch dropout seed, validation, files);
- :func:`loss_and_grads`: one forward and backward pass, the gradients under their canonical (upstream state-dict)
  names; the gradient-parity tests call it;
- what a training run needs from the port besides the :class:`Trainer` (``unmix-train --framework nnabla`` builds
  the model, the data and the optimiser, then steps the trainer in its epoch loop): :func:`batch_shape` (the graph
  a batch needs), :func:`set_statistics` (UMX's input scaler), :func:`save_checkpoint` / :func:`load_checkpoint`
  (the checkpoint folder: ``params.h5`` from ``nn.save_parameters``, ``solver.protobuf`` from
  ``solver.save_states``, the run's ``state.json``) and the validation loss (behind :meth:`Trainer.evaluate`); the
  best model goes out in the canonical format and as an NNabla ``.h5`` (:func:`umx_nnabla.weights.save_native`);
- the trained parameters (:func:`is_trainable`, :func:`trainable_parameters`, :func:`sync_lstm_biases`,
  :func:`canonical_grads`);
- :class:`TorchAdam`: ``torch.optim.Adam(lr, weight_decay)`` exactly. NNabla's ``S.Adam`` differs from torch's in
  one place: it folds both bias corrections into the step size, ``alpha_t = alpha sqrt(1 - b2^t) / (1 - b1^t)``,
  and adds ``eps`` to ``sqrt(v)`` *uncorrected*, i.e. ``w -= alpha_t m / (sqrt(v) + eps)``, where torch computes
  ``w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``: the same update with ``eps`` scaled by
  ``sqrt(1 - b2^t)`` (0.03 at step 1), which moves parameters with small gradients visibly differently (measured
  in ``parity_tests/nnabla/test_train.py``). :class:`TorchAdam` therefore keeps ``S.Adam`` for what it does the
  same (the moment buffers, in NNabla's own solver-state format, so ``solver.save_states`` / ``load_states`` write
  and read them; the coupled weight decay ``solver.weight_decay(wd)``: ``g += wd w`` before the moments, as
  ``torch.optim.Adam(weight_decay=...)``) and computes torch's update on the parameter arrays in NumPy;
- data parallelism: NNabla's is multi-process with MPI, gradients all-reduced by
  ``nnabla.communicators.MultiProcessCommunicator`` (wrapped by :class:`Communicator`), which has CUDA (NCCL)
  kernels only: it needs ``nnabla-ext-cuda`` and an MPI launcher (``mpirun -n N``); on the CPU, training is
  single-process and ``--devices > 1`` stops with :class:`DataParallelUnavailable`.
  :func:`data_parallel_loss_and_grads` runs the arithmetic of a data-parallel step (each replica's shard, the
  gradients averaged as ``all_reduce(division=True)`` does) in one process, for the tests.

float32 only (NNabla's CPU extension has no float64 kernels, :mod:`umx_nnabla._context`): the gradient-parity
tests compare with upstream's float64 fixtures at the float32 tolerances.

Dropout, as upstream trains: UMX's LSTM dropout between layers (``lstm_dropout``: ``None`` upstream's 0.4, 0 off);
HTDemucs's cross-transformer dropout at the config's ``t_dropout`` (0.02 in the released ``htdemucs`` /
``htdemucs_ft`` / ``htdemucs_6s`` configs; ``t_dropout``: ``None`` the config's, 0 off) in every transformer layer on
the attention weights, on the attention branch (``dropout1``), inside the feed-forward (``dropout``) and after it
(``dropout2``) (:mod:`umx_nnabla.htdemucs_transformer`). The gradient-parity steps run with 0 (no port draws torch's
masks); validation and every apply path build eval graphs without dropout. The masks come from NNabla's global
generator, which :meth:`Trainer.start_epoch` reseeds from the recipe's seed and the epoch: a run is reproducible
and ``--resume`` continues exactly.

Shapes: UMX batches are waveforms ``x`` (mixture) and ``y`` (target), ``(nb_samples, nb_channels, nb_timesteps)``;
Demucs batches are sources ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``, already augmented.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import nnabla as nn
import nnabla.functions as F
import nnabla.solvers as S
import numpy as np

from core_spec import shapes
from core_spec.configs import STFTConfig, config_to_json
from core_spec.epochs import Progress, RunFiles, RunRecord, TrainerBase, no_progress, save_best
from core_spec.files import atomic_write
from core_spec.params import fold_lstm_bias
from core_spec.reference.train import ADAM_BETAS, ADAM_EPS
from core_spec.training import (
    DemucsTrainConfig,
    HTDemucsTrainConfig,
    UMXTrainConfig,
    initial_weights,
    input_scaler_weights,
    shard_batch,
    train_stft,
)

from ._context import device_context
from .demucs import Demucs
from .htdemucs import HTDemucs, network_inputs, training_graph
from .transforms import stft
from .umx import OpenUnmix
from .weights import canonical_from_parameters, save_native, to_canonical

__all__ = [
    "FRAMEWORK",
    "Communicator",
    "DataParallelUnavailable",
    "DemucsStep",
    "GroupedTorchAdam",
    "HTDemucsStep",
    "Recipe",
    "TorchAdam",
    "Trainer",
    "UMXStep",
    "batch_shape",
    "canonical_grads",
    "data_parallel_loss_and_grads",
    "htdemucs_loss",
    "initial_weights",
    "is_trainable",
    "load_checkpoint",
    "loss_and_grads",
    "make_optimizer",
    "make_step",
    "optimizer_groups",
    "save_checkpoint",
    "set_statistics",
    "spectrogram",
    "sync_lstm_biases",
    "train_stft",
    "trainable_parameters",
]


Recipe = UMXTrainConfig | DemucsTrainConfig | HTDemucsTrainConfig
Model = OpenUnmix | Demucs | HTDemucs
FRAMEWORK = "nnabla"


# --- the losses and the step ------------------------------------------------------------------------------------------


def spectrogram(audio: np.ndarray, config: STFTConfig, mono: bool) -> np.ndarray:
    """Magnitude STFT, float32: ``(B, C, T)`` -> ``(B, C or 1, nb_bins, nb_frames)`` (``mono``: the channel mean of
    the magnitudes, as openunmix's ``ComplexNorm(mono=True)``)."""
    spec = stft(np.asarray(audio, dtype=np.float32), config.n_fft, config.n_hop, config.center, config.normalized)
    mag = np.abs(spec)
    if mono:
        mag = mag.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(mag, dtype=np.float32)


def _unpack(batch: Any, recipe: Recipe) -> tuple[np.ndarray, ...]:
    """``(x, y)`` for UMX, ``(sources,)`` for Demucs, from a mapping (the fixtures' ``inputs``), a tuple or an array;
    float32."""
    if isinstance(recipe, UMXTrainConfig):
        x, y = (batch["x"], batch["y"]) if isinstance(batch, Mapping) else batch
        return np.asarray(x, np.float32), np.asarray(y, np.float32)
    sources = batch["sources"] if isinstance(batch, Mapping) else batch
    return (np.asarray(sources, np.float32),)


class UMXStep:
    """The training graph of Open-Unmix: ``mean((model(|STFT(x)|) - |STFT(y)|)^2)``, built once per batch shape.

    Args:
        model: the network (its parameters are read by reference: optimiser updates are seen by the graph).
        stft_config: the training STFT (:func:`train_stft`).
        lstm_dropout: LSTM dropout (``None``: upstream's 0.4; 0 for gradient parity).
    """

    def __init__(self, model: OpenUnmix, stft_config: STFTConfig, lstm_dropout: float | None = None):
        self.model, self.stft_config, self.lstm_dropout = model, stft_config, lstm_dropout
        self._graphs: dict[tuple[int, ...], tuple[nn.Variable, nn.Variable, nn.Variable]] = {}

    def graph(self, shape: tuple[int, ...]) -> tuple[nn.Variable, nn.Variable, nn.Variable]:
        """``(X, Y, loss)`` for magnitudes of ``shape`` ``(B, C, nb_bins, nb_frames)``."""
        shape = tuple(int(n) for n in shape)
        if shape not in self._graphs:
            X, Y = nn.Variable(shape), nn.Variable(shape)
            estimate = self.model(X, train=True, lstm_dropout=self.lstm_dropout)
            loss = F.mean(F.squared_error(estimate, Y))
            loss.persistent = True
            self._graphs[shape] = (X, Y, loss)
        return self._graphs[shape]

    def __call__(self, batch: Any, recipe: UMXTrainConfig) -> float:
        """Forward and backward one batch (``(x, y)`` waveforms); the gradients are *added* to the parameters'
        (zero them first). BatchNorm's running statistics move once. Returns the loss."""
        x, y = _unpack(batch, recipe)
        mono = self.model.config.nb_channels == 1
        X = spectrogram(x, self.stft_config, mono)
        Y = spectrogram(y, self.stft_config, mono)
        Xv, Yv, loss = self.graph(X.shape)
        Xv.d, Yv.d = X, Y
        loss.forward(clear_no_need_grad=True)
        loss.backward(clear_buffer=True)
        return float(loss.d)


class DemucsStep:
    """The training graph of Demucs: ``mean|model(sum(sources)) - center_trim(sources)|`` (``"l1"``) or the squared
    error (``"mse"``), built once per batch shape."""

    def __init__(self, model: Demucs, loss: str = "l1"):
        if loss not in ("l1", "mse"):
            raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")
        self.model, self.loss = model, loss
        self._graphs: dict[tuple[int, ...], tuple[nn.Variable, nn.Variable, nn.Variable]] = {}

    def graph(self, shape: tuple[int, ...]) -> tuple[nn.Variable, nn.Variable, nn.Variable]:
        """``(mix, target, loss)`` for sources of ``shape`` ``(B, S, C, T)``; ``target`` is ``(B, S, C, T')``."""
        shape = tuple(int(n) for n in shape)
        if shape not in self._graphs:
            batch, _, channels, length = shape
            mix = nn.Variable((batch, channels, length))
            estimates = self.model(mix, train=True)
            target = nn.Variable(estimates.shape)
            error = F.absolute_error(estimates, target) if self.loss == "l1" else F.squared_error(estimates, target)
            loss = F.mean(error)
            loss.persistent = True
            self._graphs[shape] = (mix, target, loss)
        return self._graphs[shape]

    def __call__(self, batch: Any, recipe: DemucsTrainConfig) -> float:
        (sources,) = _unpack(batch, recipe)
        mix, target, loss = self.graph(sources.shape)
        start, stop = shapes.center_trim_bounds(sources.shape[-1], target.shape[-1])
        mix.d = sources.sum(axis=1)
        target.d = sources[..., start:stop]
        loss.forward(clear_no_need_grad=True)
        loss.backward(clear_buffer=True)
        return float(loss.d)


def make_optimizer(model: Model, recipe: Recipe) -> TorchAdam:
    """Upstream's optimiser for the model's :func:`trainable_parameters`: ``Adam(lr, weight_decay)`` as torch.

    HTDemucs: demucs 4's ``get_optimizer``: one group of every parameter outside the cross-transformer (the recipe's
    ``lr`` and ``weight_decay``), one of the cross-transformer's (``weight_decay = t_weight_decay``, ``lr = t_lr``
    when set): a :class:`GroupedTorchAdam`."""
    params = trainable_parameters(model)
    if isinstance(model, HTDemucs):
        c = model.config
        groups = optimizer_groups(params)
        hyper = {"main": (None, recipe.weight_decay), "transformer": (c.t_lr, c.t_weight_decay)}
        return GroupedTorchAdam(params, groups, hyper, lr=recipe.lr)
    return TorchAdam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


class Trainer(TrainerBase):
    """The NNabla port's :class:`core_spec.epochs.EpochTrainer`: the model, its training graph, the optimiser and
    (data-parallel) the MPI communicator of this replica (:class:`Communicator`).

    Args:
        model: the network (:class:`~umx_nnabla.umx.OpenUnmix` or :class:`~umx_nnabla.demucs.Demucs`).
        step: its training graph (:func:`make_step`).
        optimizer: :func:`make_optimizer`'s :class:`TorchAdam` on the model's :func:`trainable_parameters`.
        recipe: the training recipe (its seed reseeds NNabla's dropout generator every epoch: UMX's LSTM dropout,
            HTDemucs's transformer dropouts, as ``step`` builds them).
        stft_config: UMX: the training STFT (validation magnitudes); Demucs: ``None``.
        comm: the communicator of a data-parallel run (``None``: one process).
        rank: this replica.
        buffers: the model's non-trained parameters (BatchNorm statistics, folded LSTM biases): rank 0's are
            broadcast before every validation.
    """

    def __init__(
        self,
        model: Model,
        step: UMXStep | DemucsStep,
        optimizer: TorchAdam,
        recipe: Recipe,
        stft_config: STFTConfig | None,
        comm: Communicator | None = None,
        rank: int = 0,
        buffers: list[nn.Variable] | tuple[nn.Variable, ...] = (),
    ):
        self.model, self._step, self.optimizer, self.recipe = model, step, optimizer, recipe
        self.stft_config, self.comm, self.rank, self.buffers = stft_config, comm, rank, list(buffers)

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.set_learning_rate(lr)

    def start_epoch(self, epoch: int) -> None:
        """NNabla's global generator (dropout masks) cannot be saved: it is reseeded per epoch (and replica), so a
        ``--resume`` continues exactly."""
        nn.seed(int(np.random.default_rng([self.recipe.seed, epoch, self.rank]).integers(2**31 - 1)))

    def step(self, batch: Any) -> float:
        """Zero the gradients, forward and backward ``batch``, average the gradients over the replicas, update."""
        self.optimizer.zero_grad()
        loss = self._step(batch, self.recipe)
        if self.comm is not None:
            self.comm.average_grads(self.optimizer.params)
        self.optimizer.step()
        return loss

    def mean_over_replicas(self, value: float) -> float:
        return self.comm.mean(value) if self.comm is not None else value

    def evaluate(self, valid_set: Any, progress: Progress = no_progress) -> float:
        """Every replica validates, on rank 0's BatchNorm statistics (broadcast first)."""
        if self.comm is not None:
            self.comm.broadcast(self.buffers)
        return _validate(self.model, valid_set, self.recipe, self.stft_config, progress)

    def save_best(self, folder: RunFiles, run: RunRecord, valid_loss: float) -> None:
        sync_lstm_biases(self.model)
        save_best(folder, run, FRAMEWORK, valid_loss, to_canonical(self.model), self.model.config, save_native,
                  nnabla=nn.__version__)  # fmt: skip

    def save_checkpoint(self, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
        save_checkpoint(self.model, self.optimizer, folder, run, rng)


def loss_and_grads(
    model: Model,
    batch: Any,
    recipe: Recipe,
    stft_config: STFTConfig | None = None,
    lstm_dropout: float | None = None,
    t_dropout: float | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """One training forward and backward pass (builds the graph: for a loop, keep a :func:`make_step`).

    The model runs in training mode (UMX: BatchNorm on the batch statistics, running statistics updated; LSTM
    dropout ``lstm_dropout``, upstream's 0.4 if ``None``); the gradients are zeroed, then the loss is
    back-propagated and left on the parameters, so an optimiser step can follow.

    Args:
        model: :class:`~umx_nnabla.umx.OpenUnmix` or :class:`~umx_nnabla.demucs.Demucs`.
        batch: UMX: ``{"x", "y"}`` or ``(x, y)``, waveforms ``(B, C, T)``; Demucs: ``{"sources"}`` or the array
            ``(B, S, C, T)``. Cast to float32.
        recipe: :class:`~core_spec.training.UMXTrainConfig` or :class:`~core_spec.training.DemucsTrainConfig`.
        stft_config: UMX: the STFT (default :func:`train_stft`).
        lstm_dropout: UMX: the LSTM dropout (0 for parity: no two frameworks draw the same masks).
        t_dropout: HTDemucs: the transformer's dropout (``None``: the config's ``t_dropout``; 0 for parity).

    Returns:
        ``(loss, {canonical parameter name: gradient})``, float32 NumPy arrays.
    """
    step = make_step(model, recipe, stft_config, lstm_dropout, t_dropout)
    step.graph(batch_shape(step, batch, recipe))  # creates bias_ih / bias_hh if the model lacks them
    params = trainable_parameters(model)
    _zero_grads(model)
    loss = step(batch, recipe)
    return loss, canonical_grads(model, {k: v.g.copy() for k, v in params.items()})


def htdemucs_loss(estimates: nn.Variable, sources: nn.Variable, weights: Any = None, loss: str = "l1") -> nn.Variable:
    """demucs 4's training loss as a graph on ``estimates`` and ``sources`` ``(B, S, C, T)``
    (:func:`core_spec.reference.train.htdemucs_loss`): ``l1``: ``|e - s|`` averaged over (channels, time), then over
    the batch, one value per source; ``mse``: ``(e - s)^2`` averaged over (channels, time) only (upstream's MSE is
    summed over the batch); then ``sum(loss * w) / sum(w)`` with the per-source ``weights`` (empty: all 1)."""
    nb_sources = sources.shape[1]
    w = np.ones(nb_sources) if weights is None or len(weights) == 0 else np.asarray(weights, np.float64)
    if w.shape != (nb_sources,):
        raise ValueError(f"{len(w)} source weights for {nb_sources} sources")
    if loss == "l1":
        per = F.mean(F.absolute_error(estimates, sources), axis=(0, 2, 3))  # (S,)
        w_var = (w / w.sum()).astype(np.float32)
    elif loss == "mse":
        per = F.mean(F.squared_error(estimates, sources), axis=(2, 3))  # (B, S)
        w_var = np.broadcast_to(w / w.sum(), per.shape).astype(np.float32)
    else:
        raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")
    return F.sum(per * nn.Variable.from_numpy_array(np.ascontiguousarray(w_var)))


class HTDemucsStep:
    """The training graph of HTDemucs: :func:`htdemucs_loss` of the network in training mode
    (:func:`umx_nnabla.htdemucs.training_graph`: at the batch's length, no padding, the cross-transformer's dropout)
    on the mixture ``sum(sources)``, built once per batch shape. The spectrogram and the input statistics are NumPy
    (no gradient flows into the input).

    Args:
        model: the network.
        recipe: the training recipe (loss, source weights).
        t_dropout: the transformer's dropout rate (``None``: the config's ``t_dropout``; 0 for gradient parity).
    """

    def __init__(self, model: HTDemucs, recipe: HTDemucsTrainConfig, t_dropout: float | None = None):
        self.model, self.weights, self.loss = model, tuple(recipe.weights), recipe.loss
        self.t_dropout = float(model.config.t_dropout if t_dropout is None else t_dropout)
        self._graphs: dict[tuple[int, ...], tuple[dict[str, nn.Variable], nn.Variable, nn.Variable]] = {}

    def graph(self, shape: tuple[int, ...]) -> tuple[dict[str, nn.Variable], nn.Variable, nn.Variable]:
        """``(inputs, target, loss)`` for sources of ``shape`` ``(B, S, C, T)``."""
        shape = tuple(int(n) for n in shape)
        if shape not in self._graphs:
            batch, _, _, length = shape
            inputs, estimates = training_graph(self.model, batch, length, self.t_dropout)
            target = nn.Variable(estimates.shape)
            loss = htdemucs_loss(estimates, target, self.weights, self.loss)
            loss.persistent = True
            self._graphs[shape] = (inputs, target, loss)
        return self._graphs[shape]

    def __call__(self, batch: Any, recipe: HTDemucsTrainConfig) -> float:
        (sources,) = _unpack(batch, recipe)
        inputs, target, loss = self.graph(sources.shape)
        arrays = network_inputs(self.model, sources.sum(axis=1))
        for name, var in inputs.items():
            var.d = arrays[name]
        target.d = sources
        loss.forward(clear_no_need_grad=True)
        loss.backward(clear_buffer=True)
        return float(loss.d)


_TRANSFORMER_PREFIX = "crosstransformer/"


def optimizer_groups(params: Mapping[str, Any]) -> dict[str, str]:
    """The optimiser group of each trainable NNabla name: ``"transformer"`` for the cross-transformer's
    (``crosstransformer/...``, demucs 4's ``make_optim_group``), ``"main"`` for the rest."""
    return {k: "transformer" if k.startswith(_TRANSFORMER_PREFIX) else "main" for k in params}


def _zero_grads(model: Model) -> None:
    for var in model.get_parameters(grad_only=False).values():
        var.grad.zero()


def batch_shape(step: UMXStep | DemucsStep, batch: Any, recipe: Recipe) -> tuple[int, ...]:
    """The shape ``step.graph`` takes for ``batch``: the magnitudes' ``(B, C or 1, nb_bins, nb_frames)`` (UMX), the
    sources' ``(B, S, C, T)`` (Demucs). Building that graph first creates the LSTMs' ``bias_ih`` / ``bias_hh``, which
    :func:`trainable_parameters` then finds."""
    arrays = _unpack(batch, recipe)
    if isinstance(step, DemucsStep | HTDemucsStep):
        return arrays[0].shape
    c = step.stft_config
    b, channels, length = arrays[0].shape
    return (b, 1 if step.model.config.nb_channels == 1 else channels, c.nb_bins, c.nb_frames(length))


# --- what the run needs: input statistics, checkpoints, validation ----------------------------------------------------


def set_statistics(model: OpenUnmix, mean: np.ndarray, scale: np.ndarray) -> None:
    """Write UMX's input scaler from the training set's statistics, upstream's convention
    (:func:`core_spec.training.input_scaler_weights`): ``input_mean = -mean``, ``input_scale = 1 / scale``, cropped
    to ``max_bin``."""
    params = model.get_parameters(grad_only=False)
    for name, value in input_scaler_weights(mean, scale, model.config).items():
        params[name].d = value


def _config_json(model: Model) -> str:
    return config_to_json(model.config)


def save_checkpoint(
    model: Model, optimizer: TorchAdam, folder: RunFiles, run: RunRecord, rng: np.random.Generator
) -> None:
    """``checkpoint-<name>-nnabla/``: ``params.h5`` (every parameter of the model, BatchNorm statistics and both
    LSTM bias forms included, ``nn.save_parameters``), ``solver.protobuf`` (``solver.save_states``), ``state.json``
    (``run.save``, with the learning rate and the model's config)."""
    folder.checkpoint.mkdir(parents=True, exist_ok=True)
    sync_lstm_biases(model)
    params = model.get_parameters(grad_only=False)
    # NNabla's writers pick the format by the extension: the temporary files keep it
    atomic_write(folder.checkpoint / "params.h5", lambda p: nn.save_parameters(p, params), ".h5")
    atomic_write(folder.checkpoint / "solver.protobuf", optimizer.save_states, ".protobuf")
    run.save(folder, rng, lr=optimizer.lr, config=json.loads(_config_json(model)))


def load_checkpoint(
    model: Model, optimizer: TorchAdam, folder: RunFiles, run: RunRecord, rng: np.random.Generator
) -> None:
    """Read ``checkpoint-<name>-nnabla/`` (:func:`save_checkpoint`) back into ``model`` (parameter arrays overwritten in
    place, so graphs built on them stay valid), ``optimizer``, ``run`` and ``rng``.

    Raises:
        ValueError: the checkpoint holds a model of another config, or lacks one of the model's parameters.
    """
    state = run.load(folder, rng)
    if state.get("config") is not None and state["config"] != json.loads(_config_json(model)):
        raise ValueError(f"--resume: {folder.checkpoint} holds a model of another config")
    loaded: OrderedDict = OrderedDict()
    with nn.parameter_scope("", loaded):
        nn.load_parameters(str(folder.checkpoint / "params.h5"))
        arrays = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    params = model.get_parameters(grad_only=False)
    missing = sorted(set(params) - set(arrays))
    if missing:
        raise ValueError(f"--resume: {folder.checkpoint / 'params.h5'} lacks {missing}")
    for name, var in params.items():
        var.d = arrays[name]
    optimizer.load_states(folder.checkpoint / "solver.protobuf")
    optimizer.set_learning_rate(state["lr"])


def _validate(
    model: Model, valid_set: Any, recipe: Recipe, stft_config: STFTConfig | None, progress: Progress
) -> float:
    """Mean loss over the validation tracks (batch 1, eval mode: BatchNorm's running statistics, no dropout): UMX:
    MSE of the magnitudes of whole tracks; Demucs: L1 (or MSE) of ``apply_model`` (no split, no shifts) on the
    linear mixture, as ``demucs/train.py``'s ``validate_model``. The tracks go through ``progress``."""
    from .apply import apply_model

    sync_lstm_biases(model)
    total, count = 0.0, len(valid_set)
    for index in progress(range(count), count, "valid"):
        if isinstance(recipe, UMXTrainConfig):
            x, y = valid_set[index]
            mono = model.config.nb_channels == 1
            X = spectrogram(np.asarray(x)[None], stft_config, mono)
            Y = spectrogram(np.asarray(y)[None], stft_config, mono)
            error = model.infer(X).astype(np.float64) - Y
            loss = float(np.mean(error * error))
        elif isinstance(recipe, HTDemucsTrainConfig):
            loss = _valid_htdemucs(model, valid_set, index, recipe)
        else:
            sources = np.asarray(valid_set[index], np.float32)  # (S, C, T)
            estimates = apply_model(model, sources.sum(axis=0), shifts=0, split=False).astype(np.float64)
            error = estimates - sources
            loss = float(np.mean(np.abs(error)) if recipe.loss == "l1" else np.mean(error * error))
        total += loss / count
    return total


def _valid_htdemucs(model: HTDemucs, valid_set: Any, index: int, recipe: HTDemucsTrainConfig) -> float:
    """demucs 4's validation of one track (``valid_apply``): ``apply_model`` at the model's segment, ``overlap=0``,
    no shifts, on the track's mixture normalised like its sources, and the training loss (per-source weights)
    against the sources (:func:`core_spec.reference.train.htdemucs_loss`)."""
    from core_spec.reference.train import htdemucs_loss as reference_loss

    from .htdemucs_apply import apply_model as apply_htdemucs

    sources = np.asarray(valid_set[index], np.float32)  # (S, C, T), normalised
    mix = np.asarray(valid_set.mixture(index), np.float32) if hasattr(valid_set, "mixture") else sources.sum(axis=0)
    if getattr(valid_set, "normalize", False):
        mean, std = valid_set.track_statistics(index)
        mix = (mix - np.float32(mean)) / np.float32(std)
    estimates = apply_htdemucs(model, mix, shifts=0, split=True, overlap=0.0)
    return reference_loss(estimates[None], sources[None], recipe.weights, recipe.loss)


# --- NNabla extras: the trained parameters and the LSTM's two biases --------------------------------------------------


def is_trainable(name: str) -> bool:
    """Whether the NNabla parameter ``name`` is one upstream trains: not BatchNorm's running ``mean`` / ``var``
    (buffers) and not the folded LSTM ``bias`` (training reads ``bias_ih`` + ``bias_hh``, as upstream). The others
    are the model's buffers (a data-parallel run broadcasts rank 0's before validating)."""
    parts = name.split("/")
    if parts[-1] in ("mean", "var"):
        return False
    return not (parts[-1] == "bias" and len(parts) > 1 and parts[-2] == "lstm")


def trainable_parameters(model: Model) -> OrderedDict[str, nn.Variable]:
    """``{NNabla name: Variable}`` of the parameters the optimiser updates (names relative to the model's scope).
    Call after building a training graph (:class:`UMXStep` / :class:`DemucsStep`), which creates ``bias_ih`` /
    ``bias_hh`` when the model has none."""
    params = model.get_parameters(grad_only=False)
    return OrderedDict((k, v) for k, v in params.items() if is_trainable(k))


def _lstm_scopes(names: Any) -> list[str]:
    return sorted({k.rsplit("/", 1)[0] for k in names if k.endswith("/bias_ih")})


def sync_lstm_biases(model: Model) -> None:
    """Write ``bias_ih + bias_hh`` (:func:`core_spec.params.fold_lstm_bias`) into every LSTM's folded ``bias``, the
    one inference graphs read (created if absent). Training updates the two upstream biases; call this before
    evaluating or saving."""
    params = model.get_parameters(grad_only=False)
    with model.parameter_scope():
        for scope in _lstm_scopes(params):
            total = fold_lstm_bias(params[f"{scope}/bias_ih"].d, params[f"{scope}/bias_hh"].d, np.float32)
            folded = params.get(f"{scope}/bias")
            if folded is None:
                nn.parameter.set_parameter(f"{scope}/bias", nn.Variable.from_numpy_array(total, need_grad=False))
            else:
                folded.d[...] = total


def _canonical_name_is_trainable(name: str) -> bool:
    return name.rsplit(".", 1)[-1] not in ("running_mean", "running_var", "num_batches_tracked")


def canonical_grads(model: Model, grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NNabla gradients ``{name: array}`` (of :func:`trainable_parameters`) -> ``{canonical name: array}`` for every
    parameter upstream trains (``bias_ih_l<k>`` / ``bias_hh_l<k>`` from the two kept biases; BatchNorm's running
    statistics are buffers and have none). The mapping is :func:`umx_nnabla.weights.canonical_from_parameters`'s."""
    params = model.get_parameters(grad_only=False)
    values = {k: np.asarray(grads[k]) if k in grads else np.zeros(v.shape, np.float32) for k, v in params.items()}
    for scope in _lstm_scopes(values):
        # the pair's own fold: canonical_from_parameters then keeps the two gradients apart
        values[f"{scope}/bias"] = fold_lstm_bias(values[f"{scope}/bias_ih"], values[f"{scope}/bias_hh"], np.float32)
    canonical = canonical_from_parameters(values, model.config)
    return {k: v for k, v in canonical.items() if _canonical_name_is_trainable(k)}


# --- the optimiser ----------------------------------------------------------------------------------------------------


class TorchAdam:
    """``torch.optim.Adam(params, lr, betas, eps, weight_decay)`` (coupled L2 decay) with NNabla parameters.

    Per step ``t`` and parameter ``w`` with gradient ``g`` (torch's single-tensor Adam, float32 NumPy on the
    arrays)::

        g = g + weight_decay * w               solver.weight_decay(wd): NNabla's own, the same coupled decay
        m = m + (1 - b1) (g - m)               torch's lerp
        v = b2 v + (1 - b2) g^2
        w = w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    NNabla's ``S.Adam.update()`` computes ``w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``: ``eps``
    without the bias correction, a different update wherever ``sqrt(v)`` is not much larger than ``eps`` (see the
    module docstring), so it is not called. The ``S.Adam`` instance :attr:`solver` holds the moments (its states
    ``mean`` / ``var`` are ``m`` / ``v``, updated in place) and its ``t``, so :meth:`save_states` /
    :meth:`load_states` are NNabla's own files. On a GPU context the NumPy update goes through host memory.

    Args:
        params: ``{name: nn.Variable}`` to optimise (e.g. :func:`trainable_parameters`).
        lr, betas, eps, weight_decay: torch's arguments.
    """

    def __init__(
        self,
        params: Mapping[str, nn.Variable],
        lr: float = 1e-3,
        betas: tuple[float, float] = ADAM_BETAS,
        eps: float = ADAM_EPS,
        weight_decay: float = 0.0,
    ):
        self.params = OrderedDict(params)
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(betas), float(eps), float(weight_decay)
        self.solver = S.Adam(alpha=self.lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps)
        self.solver.set_parameters(self.params)
        self.t = 0

    def zero_grad(self) -> None:
        self.solver.zero_grad()

    def set_learning_rate(self, lr: float) -> None:
        self.lr = float(lr)
        self.solver.set_learning_rate(self.lr)

    def step(self) -> None:
        """Apply one update with the gradients the parameters hold (after ``loss.backward()``)."""
        if self.weight_decay:
            self.solver.weight_decay(self.weight_decay)
        self.t += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1.0 - beta1**self.t)
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**self.t)
        states = self.solver.get_states()
        for name, param in self.params.items():
            state = states[name].pstate
            # views of the solver's buffers, float32 (a state read from a .protobuf file comes back as float64)
            m, v = state["mean"].data.cast(np.float32), state["var"].data.cast(np.float32)
            g, w = param.g, param.d  # views: the updates below are in place
            m += (1.0 - beta1) * (g - m)
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
            w -= step_size * (m / denom)

    def state_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """``{name: {"m": array, "v": array}}`` (copies), for inspection."""
        states = self.solver.get_states()
        return {k: {"m": s.pstate["mean"].d.copy(), "v": s.pstate["var"].d.copy()} for k, s in states.items()}

    def save_states(self, path: str | os.PathLike) -> None:
        """``solver.save_states`` with the step count stored as every state's ``t``. Use ``.protobuf``: NNabla
        1.39's ``.h5`` solver-state reader gives a parameter the states of another whose name extends its own
        (``lstm/lstm/weight`` receives ``lstm/lstm/weight_l0``'s); :meth:`load_states` checks the shapes."""
        states = self.solver.get_states()
        for state in states.values():
            state.t = self.t
        self.solver.set_states(states)
        self.solver.save_states(str(path))

    def load_states(self, path: str | os.PathLike) -> None:
        self.solver.load_states(str(path))
        states = self.solver.get_states()
        for name, param in self.params.items():
            shapes_read = {k: v.shape for k, v in states[name].pstate.items()}
            if any(shape != param.shape for shape in shapes_read.values()):
                raise ValueError(f"{path}: solver states of {name} are {shapes_read}, the parameter is {param.shape}")
            for state in states[name].pstate.values():
                state.data.cast(np.float32)  # .protobuf states are read back as float64
        ts = {int(s.t) for s in states.values()}
        if len(ts) != 1:
            raise ValueError(f"{path}: solver states disagree on the step count ({sorted(ts)})")
        self.t = ts.pop()


class GroupedTorchAdam(TorchAdam):
    """``torch.optim.Adam`` with parameter groups (demucs 4's two): each parameter steps with its group's learning
    rate and coupled weight decay; the moments live in one ``S.Adam`` (one solver-state file), as
    :class:`TorchAdam`.

    Args:
        params: ``{name: nn.Variable}``.
        groups: ``{name: group}`` for every parameter.
        hyper: ``{group: (lr, weight_decay)}``; an ``lr`` of ``None`` follows the optimiser's ``lr`` (and
            :meth:`set_learning_rate`), a number stays (upstream's ``t_lr``).
        lr: the learning rate of the groups without their own.
    """

    def __init__(
        self,
        params: Mapping[str, nn.Variable],
        groups: Mapping[str, str],
        hyper: Mapping[str, tuple[float | None, float]],
        lr: float = 1e-3,
        betas: tuple[float, float] = ADAM_BETAS,
        eps: float = ADAM_EPS,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
        missing = sorted(set(self.params) - set(groups))
        if missing:
            raise ValueError(f"GroupedTorchAdam: no group for {missing}")
        self.groups = {k: groups[k] for k in self.params}
        self.hyper = {g: (None if h[0] is None else float(h[0]), float(h[1])) for g, h in hyper.items()}

    @property
    def learning_rates(self) -> dict[str, float]:
        """The learning rate of each group."""
        return {g: self.lr if lr is None else lr for g, (lr, _) in self.hyper.items()}

    def step(self) -> None:
        """One update; each group's coupled decay ``g += wd w`` (float32, as ``solver.weight_decay``) first."""
        self.t += 1
        beta1, beta2 = self.betas
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**self.t)
        states = self.solver.get_states()
        rates = self.learning_rates
        for name, param in self.params.items():
            group = self.groups[name]
            decay = self.hyper[group][1]
            step_size = rates[group] / (1.0 - beta1**self.t)
            state = states[name].pstate
            m, v = state["mean"].data.cast(np.float32), state["var"].data.cast(np.float32)
            g, w = param.g, param.d
            if decay:
                g += np.float32(decay) * w
            m += (1.0 - beta1) * (g - m)
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
            w -= step_size * (m / denom)


def make_step(
    model: Model,
    recipe: Recipe,
    stft_config: STFTConfig | None = None,
    lstm_dropout: float | None = None,
    t_dropout: float | None = None,
):
    """The loss graph of ``recipe`` for ``model`` (:class:`UMXStep`, :class:`DemucsStep` or :class:`HTDemucsStep`);
    ``lstm_dropout`` / ``t_dropout``: UMX's / HTDemucs's dropout (``None``: the model's; 0: off)."""
    if isinstance(recipe, UMXTrainConfig):
        return UMXStep(model, stft_config or train_stft(model.config, recipe.stft_center), lstm_dropout)
    if isinstance(recipe, HTDemucsTrainConfig):
        return HTDemucsStep(model, recipe, t_dropout)
    return DemucsStep(model, recipe.loss)


# --- data parallelism -------------------------------------------------------------------------------------------------


class DataParallelUnavailable(RuntimeError):
    """``--devices > 1`` where NNabla cannot run data-parallel training (the CPU, or no CUDA extension / MPI)."""


DATA_PARALLEL_HELP = (
    "NNabla's data-parallel training is multi-process: one process per GPU, started by MPI (mpirun -n N), gradients "
    "all-reduced by nnabla.communicators.MultiProcessCommunicator, which has CUDA/NCCL kernels only (NNabla 1.39's "
    "CPU extension registers none: 'Any of [cpu:float] could not be found'). It needs nnabla-ext-cuda<version> "
    "(built with NCCL, matching the CUDA driver) and an MPI installation (Open MPI); run "
    "'mpirun -n N python -m unmix.train_cli --framework nnabla --device gpu --devices N ...'. "
    "On the CPU, train single-process (--devices 1). See docs/training.md."
)


class Communicator:
    """The MPI communicator of a data-parallel run (``nnabla.communicators.MultiProcessCommunicator``, CUDA): this
    process's ``rank`` of ``size``, its extension context ``ctx`` (the GPU of its local rank), and the three
    collective operations the :class:`Trainer` needs.

    Args:
        devices: ``--devices``, the number of processes MPI must have started.
        device: ``--device``: ``"gpu"`` / ``"cuda"`` (anything else raises).

    Raises:
        DataParallelUnavailable: not a GPU device, no ``nnabla-ext-cuda``, no MPI communicator (not started by
            ``mpirun``), or MPI started another number of processes than ``devices``.
    """

    def __init__(self, devices: int, device: str):
        if device not in ("gpu", "cuda"):
            raise DataParallelUnavailable(f"--devices {devices} with --device {device}: {DATA_PARALLEL_HELP}")
        try:
            import nnabla_ext.cuda  # noqa: F401
        except ImportError as e:
            raise DataParallelUnavailable(f"--devices {devices}: nnabla-ext-cuda is not installed ({e}). "
                                          f"{DATA_PARALLEL_HELP}") from None  # fmt: skip
        import nnabla.communicators as C

        self.ctx = device_context("gpu")
        try:
            self.comm = C.MultiProcessCommunicator(self.ctx)
            self.comm.init()
        except Exception as e:  # no MPI, or not started by mpirun
            raise DataParallelUnavailable(
                f"--devices {devices}: no MPI communicator ({e}). {DATA_PARALLEL_HELP}"
            ) from e
        if self.comm.size != devices:
            raise DataParallelUnavailable(
                f"--devices {devices} but MPI started {self.comm.size} process(es): run 'mpirun -n {devices} ...'"
            )
        self.rank, self.size = self.comm.rank, self.comm.size
        self.ctx.device_id = str(self.comm.local_rank)

    def average_grads(self, params: Mapping[str, nn.Variable]) -> None:
        self.comm.all_reduce([v.grad for v in params.values()], division=True, inplace=False)

    def mean(self, value: float) -> float:
        var = nn.NdArray.from_numpy_array(np.array([value], np.float32))
        self.comm.all_reduce([var], division=True, inplace=False)
        return float(var.data[0])

    def broadcast(self, variables: list[nn.Variable]) -> None:
        """Rank 0's arrays to every replica (parameters at the start, BatchNorm statistics before validation)."""
        if variables:
            self.comm.bcast([v.data for v in variables], src=0, inplace=False)


def data_parallel_loss_and_grads(
    model: Model,
    batch: Any,
    recipe: Recipe,
    replicas: int = 2,
    stft_config: STFTConfig | None = None,
    lstm_dropout: float | None = None,
    t_dropout: float | None = None,
) -> tuple[list[float], dict[str, np.ndarray]]:
    """The arithmetic of one data-parallel step, run replica after replica in this process: each replica's
    contiguous shard of ``batch`` forward and backward on the same weights, the gradients averaged (what
    ``all_reduce(division=True)`` computes across MPI processes). BatchNorm normalises with each shard's own
    statistics (as upstream's DDP without SyncBatchNorm); the running statistics kept are replica 0's.

    Returns ``([loss of each shard], {canonical name: averaged gradient})``. Demucs (no normalisation layers): the
    full batch's gradient.
    """
    running = {k: v for k, v in model.get_parameters(grad_only=False).items() if not is_trainable(k)}
    start = {k: v.d.copy() for k, v in running.items()}
    losses, total, kept = [], None, None
    for rank in range(replicas):
        for k, v in running.items():
            v.d = start[k]
        shard = shard_batch(batch, rank, replicas)
        loss, grads = loss_and_grads(model, shard, recipe, stft_config, lstm_dropout, t_dropout)
        losses.append(loss)
        total = grads if total is None else {k: total[k] + g for k, g in grads.items()}
        if rank == 0:
            kept = {k: v.d.copy() for k, v in running.items()}
    for k, v in running.items():
        v.d = kept[k]
    return losses, {k: g / replicas for k, g in total.items()}
