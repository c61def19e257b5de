"""Training of Open-Unmix, Demucs v2 and HTDemucs (demucs 4) in JAX / Flax NNX, with the upstream recipes of
:mod:`core_spec.training`.

The pieces, in the order of the lesson (``core_spec.public_api.LESSONS["train"]``):

- the losses: :func:`spectrogram`, :func:`umx_loss` (MSE between the network's output and the target's magnitude,
  both from the ``center=False`` STFT of upstream's ``scripts/train.py``) and :func:`demucs_loss` (L1, or MSE,
  between the estimates and the centre-trimmed sources, ``demucs/train.py``), :func:`htdemucs_loss` (demucs 4's
  ``solver``: L1 per source over (channels, time) then the batch, weighted by the recipe's per-source ``weights``;
  the network in training mode, at the batch's length: ``HTDemucs(..., training=True)``);
- :func:`make_optimizer`: ``torch.optim.Adam(lr, weight_decay)`` in optax (:func:`torch_adam`), wrapped in
  ``optax.inject_hyperparams`` so that the plateau schedule changes the learning rate without recompiling; for
  HTDemucs demucs 4's two groups (``optax.multi_transform`` over :func:`optimizer_groups`: the cross-transformer
  with its ``t_weight_decay`` / ``t_lr``, every other parameter with the recipe's ``lr`` / ``weight_decay``);
- :class:`Trainer`: the arrays of a run (parameters, statistics, optimiser state) and its ``jax.jit``-compiled
  step; the :class:`core_spec.epochs.EpochTrainer` of the loop. **Data parallelism** (``devices``): a one-axis
  ``jax.sharding.Mesh``; the batch is sharded over its leading axis (``NamedSharding(mesh, P("batch"))``),
  parameters, statistics and optimiser state are replicated, and XLA's SPMD partitioner inserts the all-reduces.
  The step is the single-device step on the global batch, gradients included. For Open-Unmix this means BatchNorm
  normalises with the statistics of the **global** batch (a ``SyncBatchNorm``), not of each replica's shard as
  upstream's plain ``BatchNorm1d`` under PyTorch DDP does: a deliberate choice, so that N devices compute exactly
  what one device computes;
- :func:`loss_and_grads`: one forward and backward pass in train mode (``jax.value_and_grad``), the gradients
  under their canonical (upstream state-dict) names; the gradient-parity tests call it;
- the framework's extras: :func:`ensure_devices` (``--devices N`` on the CPU: N host devices, asked of XLA before
  JAX starts); :class:`ModelLayout`, the functional view of a module. ``nnx.split`` cuts it once into a
  graph definition and flat ``{name: array}`` dicts, the trainable parameters (``nnx.Param``) and the BatchNorm
  statistics (``nnx.BatchStat``); ``nnx.merge`` rebuilds the module inside the traced step. Names are the state
  paths joined by dots (``fc1.kernel``, ``lstm.layers.0.kernel_ih``). **LSTM biases**: the port folds
  ``b_ih + b_hh`` into one bias (:mod:`umx_jax.weights`), but ``torch.optim.Adam`` updates the two separately,
  and with coupled weight decay they move differently (``g + wd b_ih`` vs ``g + wd b_hh``); so the trainable dict
  holds them apart, ``<layer>.bias`` (= ``b_ih``) and ``<layer>.bias_hh``, summed when the module is rebuilt (equal
  gradients). :func:`torch_adam`: *coupled* L2 (``add_decayed_weights`` before ``scale_by_adam``: the decay enters
  the moments), not ``optax.adamw``.

The loop is the tool's: ``unmix-train --framework jax`` (``unmix.train_jax``) builds the run (data, weights, this
trainer, ``--resume`` through :meth:`Trainer.load_checkpoint`) and steps the trainer through its epochs, validation,
plateau schedule and early stopping, the best model (canonical and msgpack) and the checkpoint folder.

Precision: float32 by default; float64 runs (``dtype=np.float64``) enter ``jax.enable_x64`` around every call
(:func:`umx_jax.dtype_scope`), as the separators do. Shapes: UMX batches are waveforms ``x`` (mixture) and ``y``
(target), ``(nb_samples, nb_channels, nb_timesteps)``; Demucs and HTDemucs batches are sources
``(nb_samples, nb_sources, audio_channels, nb_timesteps)``, already augmented. HTDemucs trains with the
cross-transformer's dropout at the config's ``t_dropout`` (0.02 in the released configs; upstream's four places in
every layer, :mod:`umx_jax.htdemucs_transformer`; ``dropout=False`` for the parity steps) and is
validated as demucs 4 validates (``apply_model`` at the model's segment, no overlap, no shifts).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core_spec.configs import DemucsConfig, HTDemucsConfig, STFTConfig, UMXConfig
from core_spec.epochs import Progress, RunFiles, RunRecord, TrainerBase, no_progress, save_best
from core_spec.files import atomic_write
from core_spec.reference.train import ADAM_BETAS, ADAM_EPS
from core_spec.training import DemucsTrainConfig, HTDemucsTrainConfig, UMXTrainConfig, initial_weights, train_stft

from ._scope import canonical_dtype, dtype_scope
from .apply import apply_model
from .build import from_canonical
from .demucs import Demucs, center_trim
from .htdemucs import HTDemucs
from .htdemucs_apply import apply_model as apply_htdemucs
from .transforms import complex_norm, stft
from .umx import OpenUnmix
from .weights import canonical_from_state, save_native, state_from_canonical, to_canonical

__all__ = [
    "FRAMEWORK",
    "ModelLayout",
    "Recipe",
    "Trainer",
    "demucs_loss",
    "ensure_devices",
    "htdemucs_loss",
    "initial_weights",
    "loss_and_grads",
    "make_optimizer",
    "optimizer_groups",
    "spectrogram",
    "torch_adam",
    "train_stft",
    "umx_loss",
]

Recipe = UMXTrainConfig | DemucsTrainConfig | HTDemucsTrainConfig
Model = OpenUnmix | Demucs | HTDemucs
Arrays = dict[str, jax.Array]
FRAMEWORK = "jax"
BN_BUFFERS = ("running_mean", "running_var")


# --- losses -----------------------------------------------------------------------------------------------------


def spectrogram(audio: jax.Array, config: STFTConfig, mono: bool, window: Any = None) -> jax.Array:
    """Magnitude STFT ``(B, C, T)`` -> ``(B, C or 1, F, frames)`` (``mono``: channel mean of the magnitudes)."""
    spec = stft(audio, config.n_fft, config.n_hop, center=config.center, normalized=config.normalized, window=window)
    return complex_norm(spec, mono=mono)


def umx_loss(
    model: OpenUnmix,
    x: jax.Array,
    y: jax.Array,
    config: STFTConfig,
    window: Any = None,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """``mean((model(|STFT(x)|) - |STFT(y)|)^2)``.

    Args:
        model: an :class:`~umx_jax.umx.OpenUnmix` (train or eval mode: see :class:`ModelLayout`).
        x: mixture waveform ``(nb_samples, nb_channels, nb_timesteps)``.
        y: target waveform, same shape.
        config: the training STFT (:func:`train_stft`).
        window: STFT window ``(n_fft,)``; ``None``: the periodic Hann window in the signal's dtype.
        dropout_key: the LSTM's dropout (upstream: 0.4 between layers in training); ``None``: none.
    """
    mono = model.nb_channels == 1
    X = spectrogram(x, config, mono, window)
    Y = spectrogram(y, config, mono, window)
    return jnp.mean(jnp.square(model(X, dropout_key=dropout_key) - Y))


def demucs_loss(model: Demucs, sources: jax.Array, loss: str = "l1") -> jax.Array:
    """Loss of Demucs on ``sources`` ``(B, S, C, T)``: the mixture is their sum; the estimates ``(B, S, C, T')``
    are compared with the centre ``T'`` samples of the sources (L1 or MSE, averaged over every element)."""
    estimates = model(jnp.sum(sources, axis=1))
    error = estimates - center_trim(sources, estimates.shape[-1])
    if loss == "l1":
        return jnp.mean(jnp.abs(error))
    if loss == "mse":
        return jnp.mean(jnp.square(error))
    raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")


# --- the optimiser -----------------------------------------------------------------------------------------------


def _grouped(config: Any) -> bool:
    """Whether ``config`` trains in demucs 4's two groups: an HTDemucs with a transformer."""
    return isinstance(config, HTDemucsConfig) and config.t_layers > 0


def make_optimizer(recipe: Recipe, config: Any = None) -> optax.GradientTransformation:
    """The recipe's Adam (:func:`torch_adam`) with ``learning_rate`` and ``weight_decay`` as injected
    hyper-parameters (``opt_state.hyperparams``): the plateau schedule sets the learning rate between steps.

    HTDemucs with a transformer (``config``): demucs 4's ``get_optimizer``, two of them under
    ``optax.multi_transform`` (:func:`optimizer_groups`): ``"main"`` with the recipe's ``lr`` and ``weight_decay``,
    ``"transformer"`` with ``t_lr`` (the recipe's ``lr`` when ``None``) and ``t_weight_decay``; both coupled,
    betas (0.9, 0.999) as ``torch.optim.Adam``.
    """
    adam = optax.inject_hyperparams(torch_adam)
    if not _grouped(config):
        return adam(learning_rate=recipe.lr, weight_decay=recipe.weight_decay)
    t_lr = recipe.lr if config.t_lr is None else config.t_lr
    groups = {
        "main": adam(learning_rate=recipe.lr, weight_decay=recipe.weight_decay),
        "transformer": adam(learning_rate=t_lr, weight_decay=config.t_weight_decay),
    }
    return optax.multi_transform(groups, optimizer_groups)


def _hyperparams(opt_state: Any) -> dict[str, dict[str, Any]]:
    """The injected hyper-parameters of each group (``{"main": ...}`` for a single optimiser)."""
    if hasattr(opt_state, "inner_states"):  # optax.multi_transform
        return {k: v.inner_state.hyperparams for k, v in opt_state.inner_states.items()}
    return {"main": opt_state.hyperparams}


# --- the trainer ---------------------------------------------------------------------------------------------------


def _as_devices(devices: int | Sequence[jax.Device] | None, platform: str | None = None) -> list[jax.Device] | None:
    if devices is None:
        return None
    if isinstance(devices, int):
        available = jax.devices(platform) if platform else jax.devices()
        if devices > len(available):
            raise ValueError(
                f"{devices} devices asked for, {len(available)} available ({available[0].platform}); on CPU set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before JAX starts"
            )
        return list(available[:devices])
    return list(devices)


@dataclasses.dataclass(frozen=True)
class _StepSpec:
    """The static part of a compiled step (hashable: equal specs share the compiled code across trainers).

    ``layout`` hashes by identity; :meth:`ModelLayout.of` hands out one layout per model kind, config, dtype and
    resampling kernels, so that a new :class:`Trainer` for the same model reuses the compiled step."""

    layout: ModelLayout
    stft: STFTConfig | None
    loss: str
    dropout: bool
    replicated: NamedSharding | None  # data parallel: the outputs are constrained to be replicated
    weights: tuple[float, ...] = ()  # HTDemucs: per-source loss weights
    groups: bool = False  # HTDemucs: demucs 4's two optimiser groups (_ADAM_GROUPS)


def _batch_loss(
    spec: _StepSpec,
    model: nnx.Module,
    batch: tuple[jax.Array, ...],
    window: Any,
    key: jax.Array | None,
    train: bool = True,
) -> jax.Array:
    if spec.layout.kind == "umx":
        x, y = batch
        return umx_loss(model, x, y, spec.stft, window, key)
    if spec.layout.kind == "htdemucs":
        return htdemucs_loss(model, batch[0], spec.weights, spec.loss, window, training=train, dropout_key=key)
    return demucs_loss(model, batch[0], spec.loss)


def _grads(
    spec: _StepSpec, params: Arrays, stats: Arrays, batch: tuple[jax.Array, ...], window: Any, key: jax.Array
) -> tuple[jax.Array, Arrays, Arrays]:
    """``(loss, grads, new_stats)`` of one train-mode forward and backward pass (traced)."""

    def objective(p: Arrays) -> tuple[jax.Array, Arrays]:
        model = spec.layout.merge(p, stats, train=True)
        loss = _batch_loss(spec, model, batch, window, key if spec.dropout else None)
        return loss, spec.layout.stats_of(model)

    (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return loss, grads, new_stats


def _replicated(spec: _StepSpec, tree: Any) -> Any:
    return tree if spec.replicated is None else jax.lax.with_sharding_constraint(tree, spec.replicated)


def _grads_step_fn(spec: _StepSpec, params: Arrays, stats: Arrays, batch: Any, window: Any, key: jax.Array) -> Any:
    return _replicated(spec, _grads(spec, params, stats, batch, window, key))


def _train_step_fn(
    spec: _StepSpec,
    with_grads: bool,
    params: Arrays,
    stats: Arrays,
    opt_state: Any,
    batch: tuple[jax.Array, ...],
    window: Any,
    key: jax.Array,
) -> tuple[Any, ...]:
    """One optimiser step: ``(params, stats, opt_state, loss[, grads])``; the old arrays are donated."""
    loss, grads, stats = _grads(spec, params, stats, batch, window, key)
    updates, opt_state = (_ADAM_GROUPS if spec.groups else _ADAM).update(grads, opt_state, params)
    out = (optax.apply_updates(params, updates), stats, opt_state, loss)
    return _replicated(spec, out + ((grads,) if with_grads else ()))


def _eval_loss_fn(spec: _StepSpec, params: Arrays, stats: Arrays, batch: tuple[jax.Array, ...], window: Any) -> Any:
    return _batch_loss(spec, spec.layout.merge(params, stats, train=False), batch, window, None, train=False)


_HTDEMUCS_XLA_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
"""XLA options of HTDemucs's compiled steps: no YNNPACK library fusions on XLA:CPU (jaxlib 0.10 hands dots,
convolutions and reductions to YNNPACK by default). Its reductions are slow on the backward pass's shapes (a
row-sum of ``(8, 192, 2688)`` softmax products: 40 ms against 2 ms in XLA's own loops; the bias gradients'
column sums): the HTDemucs training step takes 11 s with them and 7 s without, on 2 cores. No effect on other
platforms, no fast-math: the same operations, in XLA's own kernels."""

_grads_step = jax.jit(_grads_step_fn, static_argnums=0)
_train_step = jax.jit(_train_step_fn, static_argnums=(0, 1), donate_argnums=(2, 3, 4))
_eval_loss = jax.jit(_eval_loss_fn, static_argnums=0)
_htdemucs_grads_step = jax.jit(_grads_step_fn, static_argnums=0, compiler_options=_HTDEMUCS_XLA_OPTIONS)
_htdemucs_train_step = jax.jit(
    _train_step_fn, static_argnums=(0, 1), donate_argnums=(2, 3, 4), compiler_options=_HTDEMUCS_XLA_OPTIONS
)
_htdemucs_eval_loss = jax.jit(_eval_loss_fn, static_argnums=0, compiler_options=_HTDEMUCS_XLA_OPTIONS)


class Trainer(TrainerBase):
    """One model under training: its arrays, its optimiser and the compiled steps; the
    :class:`core_spec.epochs.EpochTrainer` of ``unmix-train``'s loop (``set_learning_rate``, ``step``, ``evaluate``,
    ``save_best``, ``save_checkpoint``; ``--resume``: :meth:`load_checkpoint`).

    Args:
        config: ``UMXConfig``, ``DemucsConfig`` or ``HTDemucsConfig``.
        weights: canonical weights to start from (every inventory entry, BatchNorm statistics included).
        recipe: :class:`~core_spec.training.UMXTrainConfig`, :class:`~core_spec.training.DemucsTrainConfig` or
            :class:`~core_spec.training.HTDemucsTrainConfig` (the config's kind).
        stft: UMX: the training STFT (default :func:`train_stft` with ``recipe.stft_center``).
        window: UMX, HTDemucs: STFT window (default: the periodic Hann window in ``dtype``).
        dtype: float32 or float64.
        devices: ``None``: JAX's default device; a count or a list of devices: data-parallel over them (the
            batch size must divide by their number).
        dropout: the training dropouts: UMX's LSTM dropout (upstream's 0.4), HTDemucs's cross-transformer dropout
            (the config's ``t_dropout``); ``False`` for the parity tests.
        seed: of the dropout masks (``jax.random``; a step's key is ``fold_in(key(seed), step)``).
        resample_kernels: Demucs: ``{"up", "down"}`` filters to use instead of the spec's (parity with julius).
        precision: ``jax.default_matmul_precision`` of the steps (``"highest"``: no TF32 on GPUs, as the parity
            tests run); ``None``: JAX's default.

    Attributes ``params``, ``batch_stats``, ``opt_state`` are the current arrays; ``step_count`` the steps taken.
    """

    def __init__(
        self,
        config: UMXConfig | DemucsConfig | HTDemucsConfig,
        weights: Mapping[str, Any],
        recipe: Recipe,
        *,
        stft: STFTConfig | None = None,
        window: Any = None,
        dtype: Any = np.float32,
        devices: int | Sequence[jax.Device] | None = None,
        dropout: bool = True,
        seed: int = 0,
        resample_kernels: Mapping[str, np.ndarray] | None = None,
        precision: str | None = None,
    ):
        self.dtype = canonical_dtype(dtype)
        self.precision = precision
        self.recipe = recipe
        self.config = config
        kinds = {UMXConfig: UMXTrainConfig, DemucsConfig: DemucsTrainConfig, HTDemucsConfig: HTDemucsTrainConfig}
        if not isinstance(recipe, kinds.get(type(config), ())):
            raise TypeError(f"recipe {type(recipe).__name__} does not train a {type(config).__name__}")
        self.devices = _as_devices(devices)
        self.mesh = Mesh(np.asarray(self.devices), ("batch",)) if self.devices and len(self.devices) > 1 else None
        with dtype_scope(self.dtype, self.precision):
            model = from_canonical(config, weights, dtype=self.dtype, device=self.devices[0] if self.devices else None)
            if resample_kernels is not None:
                model.set_resample_kernels(dict(resample_kernels))
            self.layout = ModelLayout.of(model)
            params, stats = self.layout.from_canonical(weights, self.dtype)
            self.optimizer = make_optimizer(recipe, config)
            opt_state = self.optimizer.init(params)
        self.stft = stft or (train_stft(config, recipe.stft_center) if isinstance(config, UMXConfig) else None)
        self.window = None if window is None else np.asarray(window, self.dtype)
        self.seed = int(seed)
        self.step_count = 0
        self.params, self.batch_stats, self.opt_state = self._place((params, stats, opt_state))
        self.spec = _StepSpec(
            layout=self.layout,
            stft=self.stft,
            loss=getattr(recipe, "loss", "mse"),
            dropout=bool(dropout) and (isinstance(config, UMXConfig) or getattr(config, "t_dropout", 0) > 0),
            replicated=None if self.mesh is None else NamedSharding(self.mesh, P()),
            weights=tuple(float(w) for w in getattr(recipe, "weights", ())),
            groups=_grouped(config),
        )
        htdemucs = isinstance(config, HTDemucsConfig)
        self._grads_step = _htdemucs_grads_step if htdemucs else _grads_step
        self._train_step = _htdemucs_train_step if htdemucs else _train_step
        self._eval_loss = _htdemucs_eval_loss if htdemucs else _eval_loss

    @classmethod
    def from_module(cls, model: Model, recipe: Recipe, **kwargs: Any) -> Trainer:
        """A trainer starting from a module's weights and dtype (LSTM biases: folded into ``bias_ih``)."""
        kwargs.setdefault("dtype", model.dtype)
        if isinstance(model, Demucs) and model.resample_kernels:
            kwargs.setdefault("resample_kernels", model.resample_kernels)
        return cls(model.config, to_canonical(model), recipe, **kwargs)

    # placement

    def _place(self, tree: Any) -> Any:
        """Arrays on the trainer's device, or replicated over its mesh (call inside the dtype scope)."""
        # NumPy leaves become JAX arrays first: jax 0.10's device_put of a NumPy array onto a NamedSharding caches
        # its per-device conversion across jax.enable_x64 scopes (float64 arrays with float32 shards)
        tree = jax.tree.map(jnp.asarray, tree)
        if self.mesh is None:
            return jax.device_put(tree, self.devices[0]) if self.devices else tree
        return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def _place_batch(self, batch: tuple[np.ndarray, ...], shard: bool = True) -> tuple[jax.Array, ...]:
        """The batch on the trainer's device, or split over the mesh along its leading axis (``shard``; else
        replicated)."""
        arrays = tuple(np.asarray(b, self.dtype) for b in batch)
        if self.mesh is None or not shard:
            return self._place(arrays)
        n = len(self.devices)
        if arrays[0].shape[0] % n:
            raise ValueError(f"a batch of {arrays[0].shape[0]} does not split over {n} devices")
        sharding = NamedSharding(self.mesh, P("batch"))
        return tuple(jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in arrays)

    def _unpack(self, batch: Any) -> tuple[np.ndarray, ...]:
        """``(x, y)`` (UMX) or ``(sources,)`` (Demucs) from a mapping (the fixtures' ``inputs``), a tuple or an
        array."""
        if isinstance(self.recipe, UMXTrainConfig):
            x, y = (batch["x"], batch["y"]) if isinstance(batch, Mapping) else batch
            return np.asarray(x), np.asarray(y)
        return (np.asarray(batch["sources"] if isinstance(batch, Mapping) else batch),)

    def _key(self) -> jax.Array:
        """The dropout key of the next step: ``fold_in(key(seed), step_count)`` (:data:`DROPOUT_PRNG`)."""
        return jax.random.fold_in(jax.random.key(self.seed, impl=DROPOUT_PRNG), self.step_count)

    def _window(self) -> jax.Array | None:
        return None if self.window is None else jnp.asarray(self.window)

    # public steps

    def loss_and_grads(self, batch: Any) -> tuple[float, dict[str, np.ndarray]]:
        """One forward and backward pass in train mode without an update; the BatchNorm statistics are updated.

        Returns ``(loss, {canonical name: gradient})`` (NumPy, the trainer's dtype)."""
        with dtype_scope(self.dtype, self.precision):
            placed = self._place_batch(self._unpack(batch))
            loss, grads, self.batch_stats = self._grads_step(
                self.spec, self.params, self.batch_stats, placed, self._window(), self._key()
            )
            return float(loss), self.layout.grads_to_canonical(grads)

    def step(self, batch: Any) -> float:
        """One optimiser step on ``batch`` (see :meth:`_unpack`); returns the batch's loss (before the update)."""
        with dtype_scope(self.dtype, self.precision):
            placed = self._place_batch(self._unpack(batch))
            self.params, self.batch_stats, self.opt_state, loss = self._train_step(
                self.spec, False, self.params, self.batch_stats, self.opt_state, placed, self._window(), self._key()
            )
            self.step_count += 1
            return float(loss)

    def step_with_grads(self, batch: Any) -> tuple[float, dict[str, np.ndarray]]:
        """:meth:`step`, also returning the step's gradients by canonical name (as :meth:`loss_and_grads`)."""
        with dtype_scope(self.dtype, self.precision):
            placed = self._place_batch(self._unpack(batch))
            self.params, self.batch_stats, self.opt_state, loss, grads = self._train_step(
                self.spec, True, self.params, self.batch_stats, self.opt_state, placed, self._window(), self._key()
            )
            self.step_count += 1
            return float(loss), self.layout.grads_to_canonical(grads)

    def batch_loss(self, batch: Any) -> float:
        """The loss of one batch in eval mode (BatchNorm on its running statistics, no dropout), no gradients."""
        with dtype_scope(self.dtype, self.precision):
            placed = self._place_batch(self._unpack(batch), shard=False)  # validation items need not split
            return float(self._eval_loss(self.spec, self.params, self.batch_stats, placed, self._window()))

    @property
    def learning_rate(self) -> float:
        """The learning rate of the (first, ``"main"``) group."""
        return float(_hyperparams(self.opt_state)["main"]["learning_rate"])

    @property
    def learning_rates(self) -> dict[str, float]:
        """The learning rate of each optimiser group (``{"main"}``, HTDemucs ``{"main", "transformer"}``)."""
        return {k: float(h["learning_rate"]) for k, h in _hyperparams(self.opt_state).items()}

    def set_learning_rate(self, lr: float) -> None:
        """The learning rate of the next steps (an injected hyper-parameter: no recompilation). HTDemucs: the
        transformer's group keeps its own ``t_lr`` when the config sets one (upstream never changes it), else
        follows ``lr``."""
        t_lr = getattr(self.config, "t_lr", None)
        with dtype_scope(self.dtype, self.precision):
            for group, hyper in _hyperparams(self.opt_state).items():
                value = t_lr if group == "transformer" and t_lr is not None else lr
                hyper["learning_rate"] = self._place(np.asarray(value, hyper["learning_rate"].dtype))

    def evaluate(self, valid_set: Any, progress: Progress = no_progress) -> float:
        """Mean loss over the validation tracks (:func:`_validate`; each track through ``progress``)."""
        return _validate(self, valid_set, progress)

    def save_best(self, folder: RunFiles, run: RunRecord, valid_loss: float) -> None:
        """The best model: canonical and native files (:func:`core_spec.epochs.save_best`)."""
        save_best(folder, run, FRAMEWORK, valid_loss, self.canonical(), self.config, save_native, jax=jax.__version__)

    def save_checkpoint(self, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
        """``checkpoint-<name>-jax/`` (:func:`_save_checkpoint`)."""
        _save_checkpoint(self, folder, run, rng)

    def load_checkpoint(self, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
        """``--resume``: the run's state and ``rng`` from ``checkpoint-<name>-jax/state.json`` (``run.load``), then the
        arrays and the step count from ``train_state.msgpack`` (:meth:`load_bytes`)."""
        _load_checkpoint(self, folder, run, rng)

    def canonical(self) -> dict[str, np.ndarray]:
        """The current weights, canonical names and layouts (NumPy, the trainer's dtype)."""
        with dtype_scope(self.dtype, self.precision):
            return self.layout.to_canonical(self.params, self.batch_stats)

    def module(self) -> Model:
        """An eval-mode module holding the current weights, on one device (for validation and separation)."""
        with dtype_scope(self.dtype, self.precision):
            host = jax.device_get((self.params, self.batch_stats))
            device = self.devices[0] if self.devices else None
            arrays = jax.device_put(host, device) if device is not None else jax.tree.map(jnp.asarray, host)
            return self.layout.merge(*arrays, train=False)

    # checkpoints

    def state_dict(self) -> dict[str, Any]:
        """``{"params", "batch_stats", "opt_state", "step_count"}`` as NumPy arrays (exact, the trainer's dtype)."""
        host = jax.device_get({"params": self.params, "batch_stats": self.batch_stats, "opt_state": self.opt_state})
        return {**serialization.to_state_dict(host), "step_count": self.step_count}

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` as Flax msgpack."""
        return serialization.msgpack_serialize(self.state_dict())

    def load_bytes(self, data: bytes) -> None:
        """Restore what :meth:`to_bytes` wrote (same model, recipe and dtype)."""
        state = serialization.msgpack_restore(data)
        template = jax.device_get({"params": self.params, "batch_stats": self.batch_stats, "opt_state": self.opt_state})
        restored = serialization.from_state_dict(
            template, {k: state[k] for k in ("params", "batch_stats", "opt_state")}
        )
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(template)):
            if np.shape(got) != np.shape(want) or np.asarray(got).dtype != np.asarray(want).dtype:
                raise ValueError(f"checkpoint array {np.shape(got)} {np.asarray(got).dtype} where the trainer holds "
                                 f"{np.shape(want)} {np.asarray(want).dtype}")  # fmt: skip
        with dtype_scope(self.dtype, self.precision):
            self.params, self.batch_stats, self.opt_state = self._place(
                (restored["params"], restored["batch_stats"], restored["opt_state"])
            )
        self.step_count = int(state["step_count"])


def loss_and_grads(
    model: Model,
    batch: Any,
    recipe: Recipe,
    stft_config: STFTConfig | None = None,
    window: Any = None,
    precision: str | None = "highest",
) -> tuple[float, dict[str, np.ndarray]]:
    """One training forward and backward pass of ``model`` (train mode: BatchNorm on the batch statistics, its
    running statistics updated in ``model``; no dropout).

    Args:
        model: :class:`~umx_jax.umx.OpenUnmix`, :class:`~umx_jax.demucs.Demucs` or
            :class:`~umx_jax.htdemucs.HTDemucs` (float32 or float64).
        batch: UMX: ``{"x", "y"}`` or ``(x, y)``, waveforms ``(B, C, T)``; Demucs, HTDemucs: ``{"sources"}`` or the
            array ``(B, S, C, T)``. Cast to the model's dtype.
        recipe: the model's recipe (:mod:`core_spec.training`).
        stft_config: UMX: the STFT (default :func:`train_stft`).
        window: UMX: the STFT window (default: the periodic Hann window in the model's dtype).
        precision: ``jax.default_matmul_precision`` (``"highest"``: no TF32 on GPUs).

    Returns:
        ``(loss, {canonical parameter name: gradient})`` for every trainable parameter, NumPy in the model's dtype;
        an LSTM's ``bias_ih`` and ``bias_hh`` get the same gradient.
    """
    trainer = Trainer.from_module(model, recipe, stft=stft_config, window=window, dropout=False, precision=precision)
    loss, grads = trainer.loss_and_grads(batch)
    if trainer.layout.stat_names:
        with dtype_scope(trainer.dtype):
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
                var[...] = trainer.batch_stats[_name(path)]
    return loss, grads


# --- beyond the lesson: HTDemucs's loss and optimiser groups ---------------------------------------------------------


def htdemucs_loss(
    model: HTDemucs,
    sources: jax.Array,
    weights: Sequence[float] = (),
    loss: str = "l1",
    window: Any = None,
    training: bool = True,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """demucs 4's training loss on ``sources`` ``(B, S, C, T)``: the mixture is their sum, the estimates
    ``(B, S, C, T)`` (``training``: the network at ``T``, upstream's train mode, with the cross-transformer's
    dropout when ``dropout_key`` is given; else the eval forward, at the model's segment).

    ``l1``: ``|e - s|`` averaged over (channels, time), then over the batch, one value per source; ``mse``:
    ``(e - s)^2`` averaged over (channels, time) only (upstream's MSE is summed over the batch); then
    ``sum(loss * weights) / sum(weights)`` (``weights``: one per source, empty: all 1). ``window``: the STFT window
    ``(nfft,)`` (``None``: the periodic Hann window in the model's dtype).
    """
    key = dropout_key if training else None
    estimates = model(jnp.sum(sources, axis=1), window=window, training=training, dropout_key=key)
    axes = tuple(range(2, sources.ndim))
    if loss == "l1":
        per = jnp.mean(jnp.mean(jnp.abs(estimates - sources), axis=axes), axis=0)  # (S,)
    elif loss == "mse":
        per = jnp.mean(jnp.square(estimates - sources), axis=axes)  # (B, S)
    else:
        raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")
    nb_sources = sources.shape[1]
    if weights and len(weights) != nb_sources:
        raise ValueError(f"{len(weights)} source weights for {nb_sources} sources")
    w = jnp.asarray(weights if weights else (1.0,) * nb_sources, per.dtype)
    return jnp.sum(per * w) / jnp.sum(w)


DROPOUT_PRNG = "rbg"
"""The PRNG of the dropout masks: ``rbg`` (XLA's ``RngBitGenerator`` for the bits, threefry only to split and fold
keys). JAX's default threefry computes every random bit in XLA's own arithmetic: HTDemucs's attention-weight masks
alone are 8 x 2688 x 2688 draws per frequency self-attention layer, and with threefry the training step took 9.9 s
against upstream's 9.2 (the step without dropout: 6.7-6.9 s); with ``rbg`` 9.5 s against 9.4. The masks take half
as many random numbers since (:func:`umx_jax.layers.dropout`: 16-bit draws)."""

_TRANSFORMER_PREFIX = "crosstransformer."  # HTDemucs: the parameters of demucs 4's second optimiser group


def optimizer_groups(params: Mapping[str, Any]) -> dict[str, str]:
    """The optimiser group of each trainable name (the labels of ``optax.multi_transform``): ``"transformer"`` for
    the cross-transformer's (``crosstransformer.*``, demucs 4's ``make_optim_group``), ``"main"`` for the rest."""
    return {k: "transformer" if k.startswith(_TRANSFORMER_PREFIX) else "main" for k in params}


# --- validation and checkpoints (the trainer's) --------------------------------------------------------------------


def _validate(trainer: Trainer, valid_set: Any, progress: Progress) -> float:
    """Mean loss over the validation tracks (batch 1, eval mode): UMX: MSE of magnitudes of whole tracks; Demucs:
    L1 (or MSE) of ``apply_model`` (no split, no shifts) on the linear mixture, as demucs' ``validate_model``;
    HTDemucs: demucs 4's ``valid_apply``: ``apply_model`` at the model's segment, ``overlap=0``, no shifts, on the
    track's mixture normalised like its sources, and the training loss (per-source weights) against the sources."""
    recipe = trainer.recipe
    count = len(valid_set)
    total = 0.0
    module = trainer.module() if not isinstance(recipe, UMXTrainConfig) else None
    for index in progress(range(count), count, "valid"):
        if isinstance(recipe, UMXTrainConfig):
            x, y = valid_set[index]
            loss = trainer.batch_loss((np.asarray(x)[None], np.asarray(y)[None]))
        elif isinstance(recipe, HTDemucsTrainConfig):
            loss = _valid_htdemucs(trainer, module, valid_set, index)
        else:
            sources = np.asarray(valid_set[index], trainer.dtype)  # (S, C, T)
            with dtype_scope(trainer.dtype):
                estimates = np.asarray(apply_model(module, sources.sum(axis=0), shifts=0, split=False))
            error = estimates - sources
            loss = float(np.mean(np.abs(error)) if recipe.loss == "l1" else np.mean(np.square(error)))
        total += loss / count
    return total


def _valid_htdemucs(trainer: Trainer, module: HTDemucs, valid_set: Any, index: int) -> float:
    """One track's validation loss (:func:`_validate`): sources ``(S, C, T)`` as a batch of one."""
    sources = np.asarray(valid_set[index], trainer.dtype)  # (S, C, T), normalised
    mix = np.asarray(valid_set.mixture(index), np.float64)  # (C, T)
    if valid_set.normalize:
        mean, std = valid_set.track_statistics(index)
        mix = (mix - mean) / std
    with dtype_scope(trainer.dtype):
        estimates = np.asarray(
            apply_htdemucs(module, mix.astype(trainer.dtype), shifts=0, split=True, overlap=0.0,
                           precision=trainer.precision)
        )  # fmt: skip
    diff = (estimates - sources)[None]  # (1, S, C, T)
    per = np.mean(np.abs(diff) if trainer.recipe.loss == "l1" else np.square(diff), axis=(2, 3))  # (1, S)
    weights = np.asarray(trainer.recipe.weights or (1.0,) * sources.shape[0], np.float64)
    per = per.mean(axis=0) if trainer.recipe.loss == "l1" else per
    return float(np.sum(per * weights) / np.sum(weights))


def _save_checkpoint(trainer: Trainer, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
    """``checkpoint-<name>-jax/``: ``model.msgpack`` + ``model.json`` (the port's native weights, float32),
    ``train_state.msgpack`` (parameters, statistics and optimiser state, exact, Flax msgpack), ``state.json``."""
    folder.checkpoint.mkdir(parents=True, exist_ok=True)
    save_native(folder.checkpoint / "model", trainer.canonical(), trainer.config, force=True)
    state = trainer.to_bytes()
    atomic_write(folder.checkpoint / "train_state.msgpack", lambda tmp: Path(tmp).write_bytes(state), ".msgpack")
    run.save(folder, rng, dtype=trainer.dtype.name)


def _load_checkpoint(trainer: Trainer, folder: RunFiles, run: RunRecord, rng: np.random.Generator) -> None:
    run.load(folder, rng)
    trainer.load_bytes((folder.checkpoint / "train_state.msgpack").read_bytes())


# --- the framework's extras: host devices, the functional view of a module, torch's Adam in optax ---------------


def ensure_devices(count: int, platform: str) -> list[jax.Device]:
    """The first ``count`` devices of ``platform`` (``"cpu"``, ``"gpu"``), for :class:`Trainer`'s ``devices``.

    JAX's data parallelism runs in one process, over the devices it sees; on the CPU, ``count > 1`` asks XLA for
    that many host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=<count>``, unless ``XLA_FLAGS``
    already names a count), which takes effect only if JAX has not started its backend yet.

    Raises:
        ValueError: fewer devices than ``count``.
    """
    if platform == "cpu" and count > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    return _as_devices(count, platform) or []


def _name(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path)


class ModelLayout:
    """How a module's state maps to the flat dicts the step trains, and back to canonical weights.

    Args:
        model: an :class:`OpenUnmix` or a :class:`Demucs` (its graph, not its values, is kept; Demucs' resampling
            kernels are part of the graph).

    Attributes:
        param_names: the trainable names: every ``nnx.Param`` path, plus ``<layer>.bias_hh`` per LSTM layer.
        stat_names: the ``nnx.BatchStat`` paths (BatchNorm ``mean`` / ``var``; none for Demucs).
        lstm_biases: the folded LSTM bias paths (``<layer>.bias``), whose ``_hh`` twins are added on merge.
    """

    @classmethod
    def of(cls, model: Model) -> ModelLayout:
        """The shared layout of ``model``'s kind, config, dtype and resampling kernels (made on first use)."""
        key = (type(model).__name__, model.config, np.dtype(model.dtype).name, getattr(model, "_resample_kernels", ()))
        if key not in _LAYOUTS:
            _LAYOUTS[key] = cls(model)
        return _LAYOUTS[key]

    def __init__(self, model: Model):
        if not isinstance(model, (OpenUnmix, Demucs, HTDemucs)):
            raise TypeError(f"no training for {type(model).__name__}: expected OpenUnmix, Demucs or HTDemucs")
        self.config: UMXConfig | DemucsConfig | HTDemucsConfig = model.config
        self.kind = {OpenUnmix: "umx", Demucs: "demucs", HTDemucs: "htdemucs"}[type(model)]
        self.dtype = np.dtype(model.dtype)
        view = {"raise_if_not_found": False}
        self.graphdef_train = nnx.split(nnx.view(model, use_running_average=False, **view))[0]
        self.graphdef_eval = nnx.split(nnx.view(model, use_running_average=True, **view))[0]
        self.paths: dict[str, tuple[Any, ...]] = {}
        self._templates: dict[str, nnx.Variable] = {}
        params, stats = [], []
        for path, var in nnx.to_flat_state(nnx.state(model)):
            name = _name(path)
            if isinstance(var, nnx.Param):
                params.append(name)
            elif isinstance(var, nnx.BatchStat):
                stats.append(name)
            else:
                raise TypeError(f"{name}: a {type(var).__name__} is neither a parameter nor a batch statistic")
            self.paths[name] = tuple(path)
            self._templates[name] = var.replace(jax.ShapeDtypeStruct(var.shape, var.dtype))
        self.lstm_biases = tuple(
            n for n in params if self.paths[n][-1] == "bias" and _name(self.paths[n][:-1] + ("kernel_hh",)) in params
        )
        self.param_names = tuple(params) + tuple(n + "_hh" for n in self.lstm_biases)
        self.stat_names = tuple(stats)

    # module <-> dicts

    def merge(self, params: Mapping[str, jax.Array], stats: Mapping[str, jax.Array], train: bool) -> nnx.Module:
        """The module holding ``params`` and ``stats`` (traceable): train mode (BatchNorm on batch statistics)
        or eval mode."""
        values = {**stats, **params}
        flat = []
        for name, template in self._templates.items():
            value = values[name]
            if name in self.lstm_biases:
                value = value + values[name + "_hh"]
            flat.append((self.paths[name], template.replace(value)))
        graphdef = self.graphdef_train if train else self.graphdef_eval
        return nnx.merge(graphdef, nnx.from_flat_state(flat))

    def stats_of(self, model: nnx.Module) -> Arrays:
        """The BatchNorm statistics of a (merged) module, by name."""
        return {_name(p): v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}

    def from_module(self, model: nnx.Module) -> tuple[Arrays, Arrays]:
        """``(params, stats)`` of a module: its arrays, LSTM biases whole in ``bias`` and ``bias_hh = 0``."""
        values = {_name(p): v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
        params = {n: values[n] for n in self.param_names if n not in self._hh_names}
        params.update({n + "_hh": jnp.zeros_like(values[n]) for n in self.lstm_biases})
        return {n: params[n] for n in self.param_names}, {n: values[n] for n in self.stat_names}

    @property
    def _hh_names(self) -> set[str]:
        return {n + "_hh" for n in self.lstm_biases}

    # canonical <-> dicts

    def _flat(self, pure: Mapping[Any, Any], prefix: tuple[Any, ...] = ()) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for key, value in pure.items():
            if isinstance(value, Mapping):
                out.update(self._flat(value, prefix + (key,)))
            else:
                out[_name(prefix + (key,))] = np.asarray(value)
        return out

    def _nested(self, values: Mapping[str, Any]) -> dict[Any, Any]:
        root: dict[Any, Any] = {}
        for name in self._templates:
            node = root
            path = self.paths[name]
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = np.asarray(values[name])
        return root

    def from_canonical(self, weights: Mapping[str, Any], dtype: Any = None) -> tuple[Arrays, Arrays]:
        """``(params, stats)`` of canonical weights, ``bias_ih`` and ``bias_hh`` of every LSTM layer kept apart.

        ``dtype``: of the arrays (the layout's by default); float64 needs ``jax.enable_x64``."""
        dtype = self.dtype if dtype is None else canonical_dtype(dtype)
        weights = {k: np.asarray(v, np.float64) for k, v in weights.items()}
        ih_only = {k: (np.zeros_like(v) if _is_bias(k, "bias_hh") else v) for k, v in weights.items()}
        values = self._flat(state_from_canonical(self.config, ih_only))
        if self.lstm_biases:  # b_hh through the same mapping: put it in b_ih's slot, zero in b_hh's
            hh_only = dict(weights)
            for k, v in weights.items():
                if _is_bias(k, "bias_ih"):
                    hh_only[k] = weights[_swap(k)]
                    hh_only[_swap(k)] = np.zeros_like(v)
            hh = self._flat(state_from_canonical(self.config, hh_only))
            values.update({n + "_hh": hh[n] for n in self.lstm_biases})
        params = {n: jnp.asarray(values[n], dtype) for n in self.param_names}
        stats = {n: jnp.asarray(values[n], dtype) for n in self.stat_names}
        return params, stats

    def to_canonical(self, params: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Canonical weights (inventory order, NumPy, the arrays' dtype) with ``bias_ih`` / ``bias_hh`` apart."""
        host = {k: np.asarray(v) for k, v in jax.device_get({**params, **stats}).items()}
        out = canonical_from_state(self.config, self._nested(host))
        if self.lstm_biases:
            hh = canonical_from_state(
                self.config, self._nested({**host, **{n: host[n + "_hh"] for n in self.lstm_biases}})
            )
            for k in out:
                if _is_bias(k, "bias_hh"):
                    out[k] = hh[_swap(k)]
        return out

    def grads_to_canonical(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Gradients by canonical name, for every trainable canonical parameter (BatchNorm buffers excluded)."""
        zeros = {
            n: np.zeros(self._templates[n].shape, np.dtype(jax.tree.leaves(grads)[0].dtype)) for n in self.stat_names
        }
        out = self.to_canonical(grads, zeros)
        return {k: v for k, v in out.items() if k.rsplit(".", 1)[-1] not in BN_BUFFERS}


_LAYOUTS: dict[Any, ModelLayout] = {}


def _is_bias(name: str, kind: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith(kind + "_")


def _swap(name: str) -> str:
    """``...bias_ih_l0`` <-> ``...bias_hh_l0`` (the last component only)."""
    head, _, leaf = name.rpartition(".")
    leaf = "bias_hh_" + leaf[8:] if leaf.startswith("bias_ih_") else "bias_ih_" + leaf[8:]
    return f"{head}.{leaf}" if head else leaf


def torch_adam(
    learning_rate: float,
    weight_decay: float = 0.0,
    b1: float = ADAM_BETAS[0],
    b2: float = ADAM_BETAS[1],
    eps: float = ADAM_EPS,
) -> optax.GradientTransformation:
    """``torch.optim.Adam(lr, betas=(b1, b2), eps, weight_decay)``: ``g <- g + wd p`` (coupled L2, before the
    moments), then Adam with bias correction, ``p <- p - lr m_hat / (sqrt(v_hat) + eps)``. (``optax.adamw`` is the
    decoupled variant, ``torch.optim.AdamW``: not upstream's.)"""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


# update() reads the learning rate and the weight decay from the optimiser state (inject_hyperparams), so one
# transformation serves every recipe, and one two-group transformation every HTDemucs (each group's state holds its
# own hyper-parameters)
_ADAM = make_optimizer(UMXTrainConfig())
_ADAM_GROUPS = optax.multi_transform({"main": _ADAM, "transformer": _ADAM}, optimizer_groups)
