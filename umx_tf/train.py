"""Training of Open-Unmix, Demucs v2 and HTDemucs (demucs 4) with the upstream recipes, in TensorFlow:
``tf.GradientTape`` gradients of the Keras 3 models of :mod:`umx_tf.umx` / :mod:`umx_tf.demucs` /
:mod:`umx_tf.htdemucs`, a train step compiled with ``tf.function`` (optionally XLA): the ``Trainer`` that
``unmix-train --framework tf`` (:mod:`unmix.train_tf`) steps.

The pieces, top to bottom (the lesson of ``core_spec.public_api.LESSONS["train"]``, then the TensorFlow extras):

- :func:`spectrogram`: ``|STFT(x)|``, UMX's training input and target.
- :func:`umx_loss` / :func:`demucs_loss`: the recipes' losses. UMX: ``mean((model(|STFT(x)|) - |STFT(y)|)^2)`` with
  the un-centred training STFT (``center=False``) and the model in training mode (BatchNorm on batch statistics,
  LSTM dropout 0.4 between layers); Demucs v2: ``mean|model(mix) - center_trim(sources)|`` with ``mix =
  sources.sum(1)``.
- :func:`make_optimizer`: :class:`Adam` over :class:`Parameters`, at the recipe's rate and weight decay; HTDemucs
  with a transformer: demucs 4's two groups (:class:`GroupedAdam`: the cross-transformer's parameters at ``t_lr`` /
  ``t_weight_decay``, the others at the recipe's).
- :class:`Trainer`: model + parameters + optimiser + the compiled step (:class:`core_spec.epochs.EpochTrainer`), on
  one device or replicated over several by ``tf.distribute.MirroredStrategy`` (each replica differentiates its
  shard of the batch; the gradients are averaged, which for an equal split is the full batch's gradient, since
  both losses are means).
- :func:`loss_and_grads`: the one-step function of the gradient-parity tests.

The run (options, data, statistics, the epoch loop, ``--resume``) is the tool's: :mod:`unmix.train_tf` builds the
model and the :class:`Trainer`, and :func:`unmix.train_loop.run_epochs` steps it; the trainer writes the best
model (canonical and Keras formats) and ``checkpoint-<name>-tf/``, and reads the checkpoint back
(:meth:`Trainer.load_checkpoint`).

Extras: :func:`htdemucs_loss` (demucs 4's loss: L1 per source, weighted, the network in training mode at the batch's
length), :func:`optimizer_groups`, :func:`default_stft`, :func:`set_statistics`, :func:`dropouts`,
:func:`make_strategy` and

- :class:`Parameters`: the trainable variables under their canonical (upstream state-dict) names. Keras's LSTM has
  one bias where PyTorch has ``bias_ih`` and ``bias_hh``; both receive the folded bias's gradient, but torch's Adam
  keeps separate moments and a separate weight decay for each, so they are held here as two variables whose sum is
  written to the Keras bias after every update.
- :class:`Adam`: ``torch.optim.Adam`` exactly, with its *coupled* L2 weight decay (``g + wd * p`` enters the
  moments). Keras's ``weight_decay`` argument is decoupled (AdamW) and is not used. :class:`GroupedAdam`: two of them
  over disjoint parameter groups.

Shapes: UMX batches are waveforms ``x`` (mixture) and ``y`` (target) ``(nb_samples, nb_channels, nb_timesteps)``;
Demucs and HTDemucs batches are ``sources`` ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``.

Dropout: the :class:`Trainer`'s step applies the recipes' dropouts (``dropout=True``, the default; ``False`` for the
gradient-parity steps, which no port can run with torch's masks): UMX's LSTM dropout between layers, and HTDemucs's
cross-transformer dropout at the config's ``t_dropout`` (0.02 in the released ``htdemucs`` / ``htdemucs_ft`` /
``htdemucs_6s`` configs), in every transformer layer on the attention weights, on the attention branch
(``dropout1``), inside the feed-forward (``dropout``) and after it (``dropout2``), as upstream
(:mod:`umx_tf.htdemucs_transformer`). Validation and every apply path run the eval forward, without dropout. The
masks come from Keras seed generators seeded when the model is built (``keras.utils.set_random_seed`` first), so a
run is reproducible; their states are saved in the checkpoint and read back, so a resumed run draws on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core_spec import epochs
from core_spec.configs import HTDemucsConfig, STFTConfig, UMXConfig
from core_spec.epochs import Progress, RunFiles, RunRecord, TrainerBase, no_progress
from core_spec.params import lstm_bias_halves
from core_spec.reference.train import ADAM_BETAS, ADAM_EPS
from core_spec.training import DemucsTrainConfig, HTDemucsTrainConfig, UMXTrainConfig, input_scaler_weights, train_stft

from .demucs import Demucs, center_trim
from .htdemucs import HTDemucs
from .transforms import complex_norm, stft
from .umx import OpenUnmix
from .weights import entries, load_weights, save_native

__all__ = [
    "FRAMEWORK",
    "Adam",
    "GroupedAdam",
    "Parameters",
    "Trainer",
    "default_stft",
    "demucs_loss",
    "dropouts",
    "htdemucs_loss",
    "loss_and_grads",
    "make_optimizer",
    "make_strategy",
    "optimizer_groups",
    "set_statistics",
    "spectrogram",
    "umx_loss",
]

FRAMEWORK = "tf"
Recipe = UMXTrainConfig | DemucsTrainConfig | HTDemucsTrainConfig
Model = OpenUnmix | Demucs | HTDemucs


# --- the lesson: losses, optimiser, trainer, one step -----------------------------------------------------------------


def spectrogram(x: tf.Tensor, fft: STFTConfig, mono: bool, window: Any = None) -> tf.Tensor:
    """``|STFT(x)|``: ``(nb_samples, nb_channels, nb_timesteps)`` -> ``(nb_samples, nb_channels or 1, nb_bins,
    nb_frames)`` (upstream's ``nn.Sequential(TorchSTFT, ComplexNorm)`` encoder)."""
    X = stft(x, fft.n_fft, fft.n_hop, center=fft.center, normalized=fft.normalized, window=window)
    return complex_norm(X, mono=mono)


def umx_loss(
    model: OpenUnmix, x: tf.Tensor, y: tf.Tensor, fft: STFTConfig, training: bool = True, window: Any = None
) -> tf.Tensor:
    """Open-Unmix's loss: ``mean((model(|X|) - |Y|)^2)`` over every element (``torch.nn.functional.mse_loss``).

    Args:
        model: the network (``training``: BatchNorm on batch statistics and updating its running statistics,
            dropout between LSTM layers at the layer's rate).
        x, y: mixture and target waveforms ``(nb_samples, nb_channels, nb_timesteps)``.
        fft: the training STFT (``center=False`` in upstream's recipe).
        window: the analysis window (``None``: the periodic Hann window).
    """
    dtype = model.compute_dtype
    mono = model.nb_channels == 1
    X = spectrogram(tf.cast(x, dtype), fft, mono, window)
    Y = spectrogram(tf.cast(y, dtype), fft, mono, window)
    return tf.reduce_mean(tf.square(model(X, training=training) - Y))


def demucs_loss(model: Demucs, sources: tf.Tensor, loss: str = "l1") -> tf.Tensor:
    """Demucs v2's loss: ``mean|model(mix) - center_trim(sources)|`` (``"l1"``) or its square (``"mse"``).

    Args:
        sources: ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``, ``nb_timesteps`` a valid length of the
            model; the mixture is their sum.
    """
    sources = tf.cast(sources, model.compute_dtype)
    estimates = model(tf.reduce_sum(sources, axis=1), training=True)  # (B, S, C, T')
    diff = estimates - center_trim(sources, estimates)
    if loss == "l1":
        return tf.reduce_mean(tf.abs(diff))
    if loss == "mse":
        return tf.reduce_mean(tf.square(diff))
    raise ValueError(f"unknown Demucs loss {loss!r}: expected 'l1' or 'mse'")


def make_optimizer(params: Parameters, recipe: Recipe) -> Adam | GroupedAdam:
    """The recipe's optimiser over the canonical parameters: :class:`Adam` (``torch.optim.Adam``, coupled weight
    decay) at ``recipe.lr``, with ``recipe.weight_decay``.

    HTDemucs with a transformer: demucs 4's ``get_optimizer``, a :class:`GroupedAdam` of two (:func:`optimizer_groups`):
    ``"main"`` with the recipe's ``lr`` and ``weight_decay``, ``"transformer"`` with the config's ``t_lr`` (the
    recipe's ``lr`` when ``None``) and ``t_weight_decay``."""
    config = params.model.config
    if not (isinstance(config, HTDemucsConfig) and config.t_layers > 0):
        return Adam(params.values, recipe.lr, weight_decay=recipe.weight_decay)
    labels = optimizer_groups(params.names)
    index = {g: [i for i, label in enumerate(labels) if label == g] for g in ("main", "transformer")}
    t_lr = recipe.lr if config.t_lr is None else config.t_lr
    groups = {
        "main": Adam([params.values[i] for i in index["main"]], recipe.lr, weight_decay=recipe.weight_decay),
        "transformer": Adam([params.values[i] for i in index["transformer"]], t_lr, weight_decay=config.t_weight_decay),
    }
    return GroupedAdam(groups, index, fixed={"transformer"} if config.t_lr is not None else set())


class Trainer(TrainerBase):
    """One model's training state and step: the :class:`core_spec.epochs.EpochTrainer` of ``unmix-train``.

    Build it (and the model) inside ``strategy.scope()`` when replicating. :meth:`loss_and_grads` is the plain
    (eager or traced) step without the update; :meth:`step` computes, averages over replicas and applies.
    ``MirroredStrategy`` averages the loss inside the step, so the epoch's mean is already the replicas' mean
    (:meth:`~core_spec.epochs.TrainerBase.mean_over_replicas` stays the identity).

    Args:
        model: the network, weights loaded.
        recipe: :class:`~core_spec.training.UMXTrainConfig`, :class:`~core_spec.training.DemucsTrainConfig` or
            :class:`~core_spec.training.HTDemucsTrainConfig`.
        fft: UMX training STFT (:func:`default_stft` if ``None``).
        weights: canonical weights the model was loaded from (for the two LSTM biases, :class:`Parameters`).
        strategy: a ``tf.distribute`` strategy (``None``: the default device).
        jit_compile: XLA-compile the step (single device only).
        dropout: the recipe's dropouts in the step (on): UMX's LSTM dropout, HTDemucs's transformer dropout at the
            config's ``t_dropout`` (:func:`dropouts`); ``False``: a deterministic step (gradient parity).
    """

    def __init__(
        self,
        model: Model,
        recipe: Recipe,
        fft: STFTConfig | None = None,
        weights: Mapping[str, Any] | None = None,
        strategy: tf.distribute.Strategy | None = None,
        jit_compile: bool = False,
        dropout: bool = True,
    ):
        self.model = model
        self.recipe = recipe
        self.is_umx = isinstance(model, OpenUnmix)
        self.fft = (fft or default_stft(model.config, recipe)) if self.is_umx else None
        self.strategy = strategy
        self.dropout = dropout
        self.params = Parameters(model, weights)
        self.optimizer = make_optimizer(self.params, recipe)
        self.jit_compile = bool(jit_compile) and strategy is None
        self._step = tf.function(self._train_step, jit_compile=self.jit_compile, reduce_retracing=True)
        self._valid = tf.function(self._valid_loss, reduce_retracing=True)
        self._grads = tf.function(self._reduced_loss_and_grads, reduce_retracing=True)

    # the loss of one batch: UMX (x, y), Demucs and HTDemucs sources
    def loss(self, batch: Sequence[tf.Tensor], training: bool = True) -> tf.Tensor:
        if self.is_umx:
            x, y = batch
            return umx_loss(self.model, x, y, self.fft, training=training)
        (sources,) = batch
        if isinstance(self.model, HTDemucs):
            return htdemucs_loss(self.model, sources, self.recipe.weights, self.recipe.loss, training=training)
        return demucs_loss(self.model, sources, self.recipe.loss)

    def loss_and_grads(self, batch: Sequence[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """Loss and gradients (one per :attr:`Parameters.names`) of one batch, without updating the parameters
        (BatchNorm running statistics do move, as in upstream's forward)."""
        with tf.GradientTape() as tape:
            loss = self.loss(batch)
        grads = tape.gradient(loss, self.params.sources)
        return loss, self.params.per_name(grads)

    def _shard_loss_and_grads(self, *batch: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        ctx = tf.distribute.get_replica_context()
        n = ctx.num_replicas_in_sync
        if n > 1:
            size = batch[0].shape[0] // n
            i = ctx.replica_id_in_sync_group
            batch = tuple(tf.ensure_shape(b[i * size : (i + 1) * size], [size, *b.shape[1:]]) for b in batch)
        return self.loss_and_grads(batch)

    def _reduced_loss_and_grads(self, *batch: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """Loss and gradients of the whole batch: on one device directly; replicated, each replica's of its shard,
        averaged over the replicas."""
        if self.strategy is None:
            return self.loss_and_grads(batch)
        loss, grads = self.strategy.run(self._shard_loss_and_grads, args=batch)
        mean = tf.distribute.ReduceOp.MEAN
        return self.strategy.reduce(mean, loss, axis=None), [self.strategy.reduce(mean, g, axis=None) for g in grads]

    def _train_step(self, *batch: tf.Tensor) -> tf.Tensor:
        loss, grads = self._reduced_loss_and_grads(*batch)
        self.optimizer.apply(grads)
        self.params.sync()
        return loss

    def _check_split(self, batch: Sequence[Any]) -> None:
        if self.strategy is not None:
            n = self.strategy.num_replicas_in_sync
            if batch[0].shape[0] % n:
                raise ValueError(f"batch of {batch[0].shape[0]} does not split over {n} replicas")

    def _tensors(self, batch: Sequence[Any], split: bool = True) -> tuple[tf.Tensor, ...]:
        """The batch as tensors in the model's dtype (``split``: checked to divide over the replicas)."""
        if split:
            self._check_split(batch)
        dtype = self.model.compute_dtype
        return tuple(
            tf.cast(b, dtype) if tf.is_tensor(b) else tf.convert_to_tensor(np.asarray(b), dtype) for b in batch
        )

    def grads(self, *batch: Any) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and canonical gradients of a batch as :meth:`step` sees them (replicated: averaged over the
        replicas), without an update."""
        with dropouts(self.model, self.dropout):
            loss, grads = self._grads(*self._tensors(batch))
        return float(loss), self.params.canonical([g.numpy() for g in grads])

    def _valid_loss(self, *batch: tf.Tensor) -> tf.Tensor:
        return self.loss(batch, training=False)

    # the epoch loop's calls (unmix.train_loop.run_epochs)
    def set_learning_rate(self, lr: float) -> None:
        """The learning rate of the next steps (a variable: no retracing). HTDemucs: both groups, except the
        transformer's when the config fixes ``t_lr``."""
        self.optimizer.set_lr(lr)

    @property
    def learning_rates(self) -> dict[str, float]:
        """The learning rate of each optimiser group (``{"main"}``, HTDemucs ``{"main", "transformer"}``)."""
        if isinstance(self.optimizer, GroupedAdam):
            return {name: float(opt.lr.numpy()) for name, opt in self.optimizer.groups.items()}
        return {"main": float(self.optimizer.lr.numpy())}

    def step(self, batch: Any) -> float:
        """One optimiser step on a batch: UMX ``(x, y)``, Demucs ``sources`` (one array) or ``(sources,)``; NumPy
        or tensors; split evenly over the replicas."""
        batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        with dropouts(self.model, self.dropout):
            loss = self._step(*self._tensors(batch))
        return float(loss)

    def evaluate(self, valid_set: Any, progress: Progress = no_progress) -> float:
        return _validate(self, valid_set, progress)

    def save_best(self, folder: RunFiles, run: RunRecord, valid_loss: float) -> None:
        epochs.save_best(folder, run, FRAMEWORK, valid_loss, self.params.weights(), self.model.config, save_native,
                         tensorflow=tf.__version__, keras=keras.__version__)  # fmt: skip

    def save_checkpoint(self, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
        _save_checkpoint(self, folder, run, rng)

    def load_checkpoint(self, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
        """Read back what :meth:`save_checkpoint` wrote (``--resume``): ``run`` and ``rng`` from ``state.json``, the
        canonical weights (both LSTM-bias halves), Adam's state and the dropout generators' states."""
        _load_checkpoint(self, folder, run, rng)


def _as_batch(model: Model, batch: Any) -> tuple[np.ndarray, ...]:
    if isinstance(batch, Mapping):
        return (batch["x"], batch["y"]) if isinstance(model, OpenUnmix) else (batch["sources"],)
    if isinstance(model, OpenUnmix):
        x, y = batch
        return (x, y)
    return (batch,) if isinstance(batch, np.ndarray) or tf.is_tensor(batch) else tuple(batch)


def loss_and_grads(
    model: Model,
    batch: Any,
    recipe: Recipe,
    fft: STFTConfig | None = None,
    weights: Mapping[str, Any] | None = None,
    dropout: bool = False,
) -> tuple[float, dict[str, np.ndarray]]:
    """The loss and every trainable parameter's gradient of one training step, under canonical names.

    Args:
        model: :class:`~umx_tf.umx.OpenUnmix`, :class:`~umx_tf.demucs.Demucs` or :class:`~umx_tf.htdemucs.HTDemucs`
            (any dtype), weights loaded.
        batch: UMX ``{"x", "y"}`` or ``(x, y)`` waveforms ``(B, C, T)``; Demucs, HTDemucs ``{"sources"}`` or
            ``sources`` ``(B, S, C, T)``.
        recipe: the training recipe (loss kind for Demucs, STFT centring for UMX).
        fft: UMX's training STFT (:func:`default_stft` if ``None``).
        weights: the canonical weights the model was loaded from (names both LSTM-bias halves' gradients).
        dropout: UMX's LSTM dropout, HTDemucs's transformer dropout (off: a deterministic step).

    Returns:
        ``(loss, {canonical name: gradient})`` in the model's dtype, canonical layouts; a folded LSTM bias's
        gradient is reported for both ``bias_ih`` and ``bias_hh`` (they are equal upstream too). UMX's BatchNorm
        running statistics move as in upstream's training forward.
    """
    trainer = Trainer(model, recipe, fft=fft, weights=weights, dropout=dropout)
    dtype = model.compute_dtype
    tensors = tuple(tf.convert_to_tensor(np.asarray(b), dtype) for b in _as_batch(model, batch))
    with dropouts(model, dropout):
        loss, grads = trainer.loss_and_grads(tensors)
    return float(loss), trainer.params.canonical([g.numpy() for g in grads])


def _seed_states(model: Model) -> list[keras.Variable]:
    """The states of the model's random generators (UMX's LSTM dropout, HTDemucs's transformer dropouts), in the
    model's layer order, saved so that a resumed run draws on."""
    return [layer.seed_generator.state for layer in model._flatten_layers() if hasattr(layer, "seed_generator")]


def _save_checkpoint(trainer: Trainer, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
    """``checkpoint-<name>-tf/``: ``weights.safetensors`` (canonical, both LSTM-bias halves and the BatchNorm
    statistics), ``optimizer.npz`` (Adam's step, lr and moments, the dropout generators' states), ``state.json``."""
    from core_spec.canonical import save_canonical
    from core_spec.files import atomic_write

    folder.checkpoint.mkdir(parents=True, exist_ok=True)
    save_canonical(folder.checkpoint / "weights", trainer.params.weights(), trainer.model.config, force=True)
    arrays = trainer.optimizer.state(trainer.params.names)
    arrays.update({f"seed.{i}": np.asarray(s.numpy()) for i, s in enumerate(_seed_states(trainer.model))})
    atomic_write(folder.checkpoint / "optimizer.npz", lambda path: np.savez(path, **arrays), suffix=".npz")
    run.save(folder, rng)


def _load_checkpoint(trainer: Trainer, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
    from core_spec.canonical import load_canonical

    run.load(folder, rng)
    weights, _, _ = load_canonical(folder.checkpoint / "weights")
    trainer.params.load(weights)
    with np.load(folder.checkpoint / "optimizer.npz") as arrays:
        trainer.optimizer.load_state(arrays, trainer.params.names)
        for i, seed in enumerate(_seed_states(trainer.model)):
            if f"seed.{i}" in arrays:
                seed.assign(arrays[f"seed.{i}"])


def _validate(trainer: Trainer, valid_set: Any, progress: Progress = no_progress) -> float:
    """Mean loss over the validation tracks, one at a time (through ``progress``), inference mode: UMX MSE of the
    magnitudes of the whole track; Demucs L1 (or MSE) of :func:`~umx_tf.apply.apply_model` (no split, no shifts) on
    the sources' sum."""
    from .apply import apply_model

    recipe, model = trainer.recipe, trainer.model
    total, count = 0.0, len(valid_set)
    for index in progress(range(count), count, "valid"):
        if trainer.is_umx:
            x, y = valid_set[index]
            loss = trainer._valid(*trainer._tensors((x[None], y[None]), split=False))
        elif isinstance(model, HTDemucs):
            loss = _valid_htdemucs(trainer, valid_set, index)
        else:
            sources = tf.convert_to_tensor(valid_set[index], model.compute_dtype)  # (S, C, T)
            estimates = apply_model(model, tf.reduce_sum(sources, axis=0), shifts=0, split=False, jit_compile=False)
            diff = estimates - sources
            loss = tf.reduce_mean(tf.abs(diff) if recipe.loss == "l1" else tf.square(diff))
        total += float(loss) / count
    return total


def _valid_htdemucs(trainer: Trainer, valid_set: Any, index: int) -> float:
    """One track's HTDemucs validation loss (demucs 4's ``valid_apply``): ``apply_model`` at the model's segment,
    ``overlap=0``, no shifts, on the track's mixture normalised like its sources, and the training loss (per-source
    weights) against the sources ``(S, C, T)``, a batch of one."""
    from .htdemucs_apply import apply_model

    dtype = np.dtype(trainer.model.compute_dtype)
    sources = np.asarray(valid_set[index], dtype)  # (S, C, T), normalised
    mix = np.asarray(valid_set.mixture(index), np.float64)  # (C, T)
    if valid_set.normalize:
        mean, std = valid_set.track_statistics(index)
        mix = (mix - mean) / std
    estimates = np.asarray(apply_model(trainer.model, mix.astype(dtype), shifts=0, split=True, overlap=0.0))
    diff = (estimates - sources)[None]  # (1, S, C, T)
    per = np.mean(np.abs(diff) if trainer.recipe.loss == "l1" else np.square(diff), axis=(2, 3))  # (1, S)
    weights = np.asarray(trainer.recipe.weights or (1.0,) * sources.shape[0], np.float64)
    per = per.mean(axis=0) if trainer.recipe.loss == "l1" else per
    return float(np.sum(per * weights) / np.sum(weights))


# --- TensorFlow extras: the training STFT, input statistics, the dropout switch, canonical parameters, Adam, replicas -


def htdemucs_loss(
    model: HTDemucs, sources: tf.Tensor, weights: Sequence[float] = (), loss: str = "l1", training: bool = True
) -> tf.Tensor:
    """demucs 4's training loss on ``sources`` ``(B, S, C, T)``: the mixture is their sum, the estimates
    ``(B, S, C, T)`` (``training``: the network at ``T``, upstream's train mode; else the eval forward, at the
    model's segment).

    ``l1``: ``|e - s|`` averaged over (channels, time), then over the batch, one value per source; ``mse``:
    ``(e - s)^2`` averaged over (channels, time) only (upstream's MSE is summed over the batch); then
    ``sum(loss * weights) / sum(weights)`` (``weights``: one per source, empty: all 1).
    """
    sources = tf.cast(sources, model.compute_dtype)
    estimates = model(tf.reduce_sum(sources, axis=1), training=training)
    axes = list(range(2, sources.shape.rank))
    if loss == "l1":
        per = tf.reduce_mean(tf.reduce_mean(tf.abs(estimates - sources), axis=axes), axis=0)  # (S,)
    elif loss == "mse":
        per = tf.reduce_mean(tf.square(estimates - sources), axis=axes)  # (B, S)
    else:
        raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")
    nb_sources = sources.shape[1]
    if weights and len(weights) != nb_sources:
        raise ValueError(f"{len(weights)} source weights for {nb_sources} sources")
    w = tf.constant(weights if weights else (1.0,) * nb_sources, per.dtype)
    return tf.reduce_sum(per * w) / tf.reduce_sum(w)


_TRANSFORMER_PREFIX = "crosstransformer."  # HTDemucs: the parameters of demucs 4's second optimiser group


def optimizer_groups(names: Sequence[str]) -> list[str]:
    """The optimiser group of each canonical name: ``"transformer"`` for the cross-transformer's
    (``crosstransformer.*``, demucs 4's ``make_optim_group``), ``"main"`` for the rest."""
    return ["transformer" if n.startswith(_TRANSFORMER_PREFIX) else "main" for n in names]


def default_stft(config: UMXConfig, recipe: UMXTrainConfig | None = None) -> STFTConfig:
    """The training STFT of a UMX model (:func:`core_spec.training.train_stft`), ``center`` from the recipe
    (``False``, upstream's training default)."""
    return train_stft(config, recipe.stft_center if recipe else False)


def set_statistics(model: OpenUnmix, mean: np.ndarray, scale: np.ndarray) -> None:
    """Write a UMX model's input scaler from the training data's statistics, upstream's convention:
    ``input_mean = -mean``, ``input_scale = 1 / scale``, cropped to ``max_bin``
    (:func:`core_spec.training.input_scaler_weights`).

    Args:
        model: the :class:`~umx_tf.umx.OpenUnmix` to train (before its :class:`Trainer` is built).
        mean, scale: per-bin mean and standard deviation of the training magnitudes (``nb_bins``).
    """
    for name, value in input_scaler_weights(mean, scale, model.config).items():
        variable = getattr(model, name)
        variable.assign(value.astype(variable.dtype))


@contextlib.contextmanager
def dropouts(model: Model, enabled: bool) -> Iterator[None]:
    """Switch every training dropout of ``model`` off (``enabled=False``: each at rate 0) for a deterministic step
    (the gradient-parity tests: no port can reproduce torch's masks): UMX's between-layer LSTM dropout, HTDemucs's
    cross-transformer dropouts (:mod:`umx_tf.htdemucs_transformer`); on, each acts at its model's rate. Effective
    for calls traced inside the block; a no-op for a model without dropout."""
    layers = (
        [] if enabled else [x for x in model._flatten_layers() if hasattr(x, "seed_generator") and hasattr(x, "rate")]
    )
    rates = [layer.rate for layer in layers]
    for layer in layers:
        layer.rate = 0.0
    try:
        yield
    finally:
        for layer, rate in zip(layers, rates, strict=True):
            layer.rate = rate


class Parameters:
    """The trainable parameters of ``model`` under their canonical names, in inventory order.

    ``names[i]`` is held by ``values[i]`` (a ``tf.Variable`` in Keras layout: the model's own, or for a folded LSTM
    bias one of two variables ``bias_ih`` / ``bias_hh`` whose sum is the Keras bias). ``sources`` are the model's
    trainable variables, the ones to differentiate; :meth:`per_name` maps their gradients to ``names``.
    BatchNorm running statistics are not parameters (they are buffers upstream).

    Args:
        model: an :class:`~umx_tf.umx.OpenUnmix` or :class:`~umx_tf.demucs.Demucs` with its weights loaded.
        weights: canonical weights the model was loaded from, for upstream's two LSTM biases; without them (or
            if they do not sum to the model's bias) ``bias_ih`` takes the Keras bias and ``bias_hh`` is zero.
    """

    def __init__(self, model: Model, weights: Mapping[str, Any] | None = None):
        self.model = model
        self.names: list[str] = []
        self.values: list[tf.Variable] = []
        self.sources: list[keras.Variable] = []
        self._index: list[int] = []  # names[i]'s gradient is that of sources[_index[i]]
        self._layout: list[Callable[[np.ndarray], np.ndarray]] = []  # Keras -> canonical
        self._to_keras: list[Callable[[np.ndarray], np.ndarray]] = []  # canonical -> Keras
        self._folds: list[tuple[keras.Variable, int, int]] = []
        for entry in entries(model):
            if not entry.variable.trainable:
                continue
            source = len(self.sources)
            self.sources.append(entry.variable)
            if len(entry.names) == 1:
                self._add(entry.names[0], entry.variable.value, source, entry)
                continue
            folded = np.asarray(entry.variable.numpy())
            ih, hh = folded, np.zeros_like(folded)
            if weights is not None and all(n in weights for n in entry.names):
                ih, hh = (h.astype(folded.dtype) for h in lstm_bias_halves(folded, *(weights[n] for n in entry.names)))
            first = len(self.values)
            for name, value in zip(entry.names, (ih, hh)):
                var = tf.Variable(value, trainable=False, name=name.replace(".", "/"))
                self._add(name, var, source, entry)
            self._folds.append((entry.variable, first, first + 1))

    def _add(self, name: str, value: tf.Variable, source: int, entry: Any) -> None:
        self.names.append(name)
        self.values.append(value)
        self._index.append(source)
        self._layout.append(entry.to_canonical)
        self._to_keras.append(entry.to_keras)

    def per_name(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Gradients of :attr:`sources` -> one per name (a folded bias's gradient goes to both its halves)."""
        return [grads[i] for i in self._index]

    def sync(self) -> None:
        """Write ``bias_ih + bias_hh`` to every folded Keras bias (after an update of :attr:`values`)."""
        for variable, ih, hh in self._folds:
            variable.assign(self.values[ih] + self.values[hh])

    def canonical(self, tensors: Sequence[Any]) -> dict[str, np.ndarray]:
        """Per-name tensors in Keras layout (e.g. :meth:`per_name` gradients) -> ``{canonical name: array}``."""
        return {n: f(np.asarray(t)) for n, f, t in zip(self.names, self._layout, tensors)}

    def weights(self) -> dict[str, np.ndarray]:
        """Every canonical weight (BatchNorm running statistics included), in the model's dtype."""
        own = dict(zip(self.names, (np.asarray(v.numpy()) for v in self.values)))
        out: dict[str, np.ndarray] = {}
        for entry in entries(self.model):
            for name in entry.names:
                value = own[name] if name in own else np.asarray(entry.variable.numpy())
                out[name] = np.ascontiguousarray(entry.to_canonical(value))
        return out

    def load(self, weights: Mapping[str, Any]) -> None:
        """Assign canonical ``weights`` to the model and to the LSTM-bias halves."""
        load_weights(self.model, weights)
        for name, value, layout in zip(self.names, self.values, self._to_keras):
            if name in weights and ("bias_ih_" in name or "bias_hh_" in name):  # the two halves of a Keras bias
                value.assign(layout(np.asarray(weights[name], np.float64)).astype(value.dtype.as_numpy_dtype))


class Adam:
    """``torch.optim.Adam`` (``amsgrad=False``) with PyTorch's *coupled* weight decay, over a list of variables.

    At step ``t``, for every parameter ``p`` with gradient ``g``::

        g = g + weight_decay * p                          # L2 in the gradient (torch's Adam; AdamW differs)
        m = m + (1 - beta1) * (g - m)                     # torch's lerp_
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The bias corrections are computed in float64 (torch: Python floats) and cast to the parameter's dtype.
    ``lr`` is a variable (set it with :meth:`set_lr`: no retracing); the state is ``step``, ``m``, ``v``.
    """

    def __init__(
        self,
        params: Sequence[tf.Variable],
        lr: float,
        betas: tuple[float, float] = ADAM_BETAS,
        eps: float = ADAM_EPS,
        weight_decay: float = 0.0,
    ):
        self.params = list(params)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.lr = tf.Variable(float(lr), dtype=tf.float64, trainable=False, name="adam/lr")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="adam/step")
        self.m = [
            tf.Variable(tf.zeros(p.shape, p.dtype), trainable=False, name=f"adam/m{i}") for i, p in enumerate(params)
        ]
        self.v = [
            tf.Variable(tf.zeros(p.shape, p.dtype), trainable=False, name=f"adam/v{i}") for i, p in enumerate(params)
        ]

    def set_lr(self, lr: float) -> None:
        self.lr.assign(float(lr))

    def apply(self, grads: Sequence[tf.Tensor]) -> None:
        """One update of every parameter with its gradient (same order as ``params``)."""
        t = tf.cast(self.step.assign_add(1), tf.float64)
        step_size = self.lr / (1.0 - tf.pow(tf.constant(self.beta1, tf.float64), t))
        bias2_sqrt = tf.sqrt(1.0 - tf.pow(tf.constant(self.beta2, tf.float64), t))
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            dtype = p.dtype
            g = tf.cast(g, dtype)
            if self.weight_decay:
                g = g + tf.constant(self.weight_decay, dtype) * p
            m_new = m + tf.constant(1.0 - self.beta1, dtype) * (g - m)
            v_new = tf.constant(self.beta2, dtype) * v + tf.constant(1.0 - self.beta2, dtype) * g * g
            denom = tf.sqrt(v_new) / tf.cast(bias2_sqrt, dtype) + tf.constant(self.eps, dtype)
            m.assign(m_new)
            v.assign(v_new)
            p.assign(p - tf.cast(step_size, dtype) * (m_new / denom))

    def state(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """``{"step", "lr", "m.<name>", "v.<name>"}`` (Keras layout) for a checkpoint."""
        out = {"step": np.asarray(self.step.numpy()), "lr": np.asarray(self.lr.numpy())}
        for name, m, v in zip(names, self.m, self.v):
            out[f"m.{name}"] = np.asarray(m.numpy())
            out[f"v.{name}"] = np.asarray(v.numpy())
        return out

    def load_state(self, state: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
        self.step.assign(int(state["step"]))
        self.lr.assign(float(state["lr"]))
        for name, m, v in zip(names, self.m, self.v):
            m.assign(np.asarray(state[f"m.{name}"]).astype(m.dtype.as_numpy_dtype))
            v.assign(np.asarray(state[f"v.{name}"]).astype(v.dtype.as_numpy_dtype))


class GroupedAdam:
    """:class:`Adam` per parameter group (demucs 4's two groups for HTDemucs), one interface for the trainer.

    Args:
        groups: ``{group: Adam}`` over the group's parameters.
        index: ``{group: [i, ...]}``, the positions of each group's parameters among all of them.
        fixed: groups whose learning rate :meth:`set_lr` leaves alone (the transformer's when ``t_lr`` is set).
    """

    def __init__(self, groups: Mapping[str, Adam], index: Mapping[str, Sequence[int]], fixed: set[str] | None = None):
        self.groups = dict(groups)
        self.index = {k: list(v) for k, v in index.items()}
        self.fixed = set(fixed or ())
        self.step = self.groups["main"].step

    @property
    def lr(self) -> tf.Variable:
        return self.groups["main"].lr

    def set_lr(self, lr: float) -> None:
        for name, opt in self.groups.items():
            if name not in self.fixed:
                opt.set_lr(lr)

    def apply(self, grads: Sequence[tf.Tensor]) -> None:
        for name, opt in self.groups.items():
            opt.apply([grads[i] for i in self.index[name]])

    def state(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """:meth:`Adam.state` of every group: the moments under their names, ``step`` / ``lr`` of the main group,
        ``<key>.<group>`` of the others."""
        out: dict[str, np.ndarray] = {}
        for group, opt in self.groups.items():
            state = opt.state([names[i] for i in self.index[group]])
            for key in ("step", "lr"):
                value = state.pop(key)
                out[key if group == "main" else f"{key}.{group}"] = value
            out.update(state)
        return out

    def load_state(self, state: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
        for group, opt in self.groups.items():
            own = dict(state)
            if group != "main":
                own["step"], own["lr"] = state[f"step.{group}"], state[f"lr.{group}"]
            opt.load_state(own, [names[i] for i in self.index[group]])


def make_strategy(devices: int, device: str = "cpu") -> tf.distribute.Strategy | None:
    """``MirroredStrategy`` over ``devices`` replicas (``None`` for one).

    On CPU the host is split into ``devices`` logical devices (``tf.config.set_logical_device_configuration``), which
    must happen before TensorFlow initialises its devices: call this first in the process.
    """
    if devices <= 1:
        return None
    if device == "gpu":
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) < devices:
            raise RuntimeError(f"--devices {devices} on gpu: only {len(gpus)} GPU(s) visible")
        return tf.distribute.MirroredStrategy([g.name for g in gpus[:devices]])
    cpu = tf.config.list_physical_devices("CPU")[0]  # listing physical devices does not initialise them
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as error:  # already initialised: fine if it was split as wanted before
        if len(tf.config.list_logical_devices("CPU")) < devices:
            raise RuntimeError(
                f"--devices {devices}: TensorFlow's devices are already initialised in this process; split the CPU "
                "before any TensorFlow op runs (make_strategy first)"
            ) from error
    names = [d.name for d in tf.config.list_logical_devices("CPU")[:devices]]
    return tf.distribute.MirroredStrategy(names)
