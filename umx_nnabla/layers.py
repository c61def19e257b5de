"""The layers of both networks as NNabla parametric functions and graphs (``core_spec.reference.layers`` is the
spec): what NNabla has built in is used as it is, the rest is written here.

==========================  ======================================================================================
spec (``reference.layers``)  NNabla
==========================  ======================================================================================
``linear``                  ``PF.affine`` (``W (in, out)``; ``base_axis=2`` on frame-major ``(T, B, features)``)
``batch_norm``              :func:`batch_norm` (``PF.batch_normalization(axes=[2])``, statistics ``(1, 1, n)``)
``batch_norm_train``        :func:`batch_norm` with ``train=True`` (torch's running-statistics update)
``lstm``                    :func:`lstm` (``PF.lstm``'s parameters; ``F.lstm`` or an unrolled graph)
``glu``                     :func:`glu` (NNabla has none: two slices and a sigmoid)
``conv1d``                  ``PF.convolution``
``conv_transpose1d``        ``PF.deconvolution`` (``W (in, out, k)``, upstream's layout)
==========================  ======================================================================================

**The LSTM.** :func:`lstm` keeps ``PF.lstm``'s parameters (``weight_l0 (D, 4, H, I + H)``, ``weight (L - 1, D, 4,
H, D H + H)``, one folded ``bias (L, D, 4, H)``, gates ``i, f, g, o`` as ``nnabla/utils/rnn.py``) and computes
either with ``F.lstm`` (``impl="builtin"``) or with an unrolled graph of NNabla functions on the same parameters
(``impl="unrolled"``, :func:`unrolled_lstm`). ``"auto"`` picks ``F.lstm`` on a CUDA context (cuDNN's RNN) and the
unrolled graph on the CPU: NNabla 1.39's CPU ``F.lstm`` takes ~8 ms per time step and direction at hidden 256
(11 s for 300 frames of one umxhq LSTM; ~47 s for a 30 s track, where upstream's torch LSTM takes ~3 s) and
~0.8 s per step at hidden 2048 (Demucs). The unrolled graph computes the input projection of all steps as one
``F.batch_matmul``, advances all directions (and, in :func:`umx_nnabla.umx.open_unmix_stack`, all targets) with one
``F.batch_matmul`` per step on the ``(D, 4H, H)`` recurrent matrices as stored (``transpose_b``: 3x faster than
``F.affine`` for a ``(1, K) x (K, N)`` product on NNabla's CPU kernels), the backward directions on the
time-reversed projection. Building and running one step of one layer for the four umxhq targets together took
~4.7 ms on the shared test machine, against ~11.6 ms as four separate graphs.

Training mode (``train=True``): BatchNorm normalises with the batch statistics and moves its running ones
(``decay_rate = 1 - momentum``; NNabla updates the running variance with the *unbiased* batch variance, as torch);
the LSTM reads its two upstream biases ``bias_ih`` + ``bias_hh`` as trainable parameters and applies dropout.

Importing this module imports :mod:`umx_nnabla._context`, whose ``sys.modules`` aliases make every NNabla function
call made while building a graph cheap (see there).

For HTDemucs (the end of the module): :func:`gelu` (exact, from ``F.erf``; NNabla's ``F.gelu`` is the tanh
approximation), :func:`standardise` (norm statistics from tree sums, applied by a fused eval-mode BatchNorm, or
differentiable inside :func:`differentiable_statistics`), :func:`channel_affine` and :func:`product` (the fast forms
of NNabla's slow CPU ``Mul2``), :func:`parameter` (a parameter of the current scope, its shape checked).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import numpy as np
from nnabla.initializer import ConstantInitializer, UniformInitializer
from nnabla.parametric_functions import parametric_function_api

from core_spec.reference.layers import BATCH_NORM_EPS, BATCH_NORM_MOMENTUM, NORM_EPS

from ._context import is_gpu_context  # also registers NNabla's import aliases before any graph is built

__all__ = [
    "BN_DECAY_RATE",
    "LSTM_IMPLS",
    "batch_norm",
    "channel_affine",
    "differentiable_statistics",
    "feature_affine",
    "gelu",
    "glu",
    "lstm",
    "lstm_parameters",
    "parameter",
    "persistent",
    "product",
    "reshape",
    "resolve_lstm_impl",
    "standardise",
    "unrolled_lstm",
]


# NNabla's decay_rate is torch's 1 - momentum (1 - 0.1 == 0.9 exactly)
BN_DECAY_RATE = 1.0 - BATCH_NORM_MOMENTUM


def batch_norm(x: nn.Variable, train: bool, name: str) -> nn.Variable:
    """``BatchNorm1d`` over the features of ``(T, B, features)``: running statistics in eval mode; in training mode
    the batch's (biased variance) while the running ones move by ``momentum = 1 - decay_rate`` toward the batch
    mean and *unbiased* variance (NNabla's CPU kernel does both as torch)."""
    return PF.batch_normalization(
        x, axes=[2], decay_rate=BN_DECAY_RATE, eps=BATCH_NORM_EPS, batch_stat=train, name=name
    )


@parametric_function_api(
    "lstm",
    [
        ("weight_l0", "Weights of layer 0", "(D, 4, H, I + H)", True),
        ("weight", "Weights of layers 1 and above", "(L - 1, D, 4, H, D * H + H)", True),
        ("bias", "Folded biases (b_ih + b_hh)", "(L, D, 4, H)", True),
    ],
)
def lstm(
    x: nn.Variable,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    impl: str = "auto",
    fix_parameters: bool = False,
    train: bool = False,
    dropout: float = 0.0,
) -> nn.Variable:
    """Multi-layer (bi)LSTM, zero initial state, with ``PF.lstm``'s parameters.

    Args:
        x: ``(nb_frames, nb_samples, input_size)``.
        hidden_size: ``H`` per direction.
        num_layers: ``L``.
        bidirectional: two directions (``D = 2``); the backward one runs over the whole sequence from its end.
        impl: ``"builtin"`` (``F.lstm``), ``"unrolled"`` (a graph of NNabla functions, :func:`unrolled_lstm`) or
            ``"auto"`` (see the module docstring). Both read the same parameters.
        train: training mode: the bias is ``bias_ih + bias_hh`` (see :func:`lstm_parameters`) and ``dropout``
            applies; eval mode (default) reads the folded ``bias`` and ignores ``dropout``.
        dropout: probability of dropping the outputs of every layer but the last (``torch.nn.LSTM``'s ``dropout``).

    Returns:
        ``(nb_frames, nb_samples, D * H)``: the directions concatenated per step.
    """
    _, nb_samples, nb_inputs = x.shape
    directions = 2 if bidirectional else 1
    w0, w, b = lstm_parameters(nb_inputs, hidden_size, num_layers, directions, not fix_parameters, split_bias=train)
    dropout = dropout if train else 0.0
    if resolve_lstm_impl(impl) == "builtin":
        state = F.constant(0.0, (num_layers, directions, nb_samples, hidden_size))
        y, _, _ = F.lstm(x, state, state, w0, w, b, num_layers=num_layers, bidirectional=bidirectional,
                         dropout=dropout or None, training=train)  # fmt: skip
        return y
    return unrolled_lstm([x], [(w0, w, b)], num_layers, dropout=dropout)[0]


def glu(x: nn.Variable, axis: int = 1) -> nn.Variable:
    """Gated linear unit: first half of ``axis`` times the sigmoid of the second half."""
    half = x.shape[axis] // 2
    start = [0] * x.ndim
    stop = list(x.shape)
    stop[axis] = half
    a = F.slice(x, start, stop)
    start[axis], stop[axis] = half, 2 * half
    b = F.slice(x, start, stop)
    return a * F.sigmoid(b)


# --- NNabla extras: the LSTM's implementations and parameters, the fixed-statistics affine, traces ------


LSTM_IMPLS = ("auto", "builtin", "unrolled")


def resolve_lstm_impl(impl: str) -> str:
    if impl not in LSTM_IMPLS:
        raise ValueError(f"lstm impl must be one of {LSTM_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "builtin" if is_gpu_context() else "unrolled"
    return impl


def lstm_parameters(
    input_size: int,
    hidden_size: int,
    num_layers: int,
    directions: int,
    need_grad: bool = True,
    split_bias: bool = False,
) -> tuple[nn.Variable, nn.Variable | None, nn.Variable]:
    """``(weight_l0, weight, bias)`` of an LSTM in the current parameter scope (created if absent), ``PF.lstm``'s
    names and shapes; the initialisation is PyTorch's (the released weights replace it).

    ``split_bias``: ``bias`` is the graph ``bias_ih + bias_hh`` of the two upstream biases kept beside the folded
    one (``(L, D, 4, H)`` each, trainable), not the stored folded ``bias``; training uses this so that the
    optimiser updates both as upstream does (:mod:`umx_nnabla.train` writes their sum back into ``bias``)."""
    bound = 1.0 / np.sqrt(hidden_size)
    get = nn.parameter.get_parameter_or_create
    w0 = get(
        "weight_l0",
        (directions, 4, hidden_size, input_size + hidden_size),
        UniformInitializer((-bound, bound)),
        need_grad,
    )
    w = None
    if num_layers > 1:
        shape = (num_layers - 1, directions, 4, hidden_size, directions * hidden_size + hidden_size)
        w = get("weight", shape, UniformInitializer((-bound, bound)), need_grad)
    bias_shape = (num_layers, directions, 4, hidden_size)
    if split_bias:
        b_ih = get("bias_ih", bias_shape, UniformInitializer((-bound, bound)), need_grad)
        b_hh = get("bias_hh", bias_shape, UniformInitializer((-bound, bound)), need_grad)
        return w0, w, b_ih + b_hh
    b = get("bias", bias_shape, ConstantInitializer(0.0), need_grad)
    return w0, w, b


def _split(x: nn.Variable, axis: int) -> list[nn.Variable]:
    """``F.split`` that also takes an axis of size 1 (``F.split`` needs two outputs or more)."""
    if x.shape[axis] == 1:
        return [F.reshape(x, x.shape[:axis] + x.shape[axis + 1 :])]
    return list(F.split(x, axis=axis))


def _reverse_backward(x: nn.Variable, directions: int) -> nn.Variable:
    """``x (G * D, T, ...)``: reverse the time axis of every backward direction (``d = 1``)."""
    if directions == 1:
        return x
    groups = x.shape[0] // directions
    x = F.reshape(x, (groups, directions, *x.shape[1:]))
    forward, backward = F.split(x, axis=1)
    x = F.stack(forward, F.flip(backward, axes=[1]), axis=1)
    return F.reshape(x, (groups * directions, *x.shape[2:]))


def _unrolled_layer(xs: list[nn.Variable], ws: list[nn.Variable], bs: list[nn.Variable | None]) -> list[nn.Variable]:
    """One (bi)LSTM layer of ``G`` independent LSTMs of the same shape, as one graph of NNabla functions.

    Args:
        xs: ``G`` inputs ``(T, B, I)``.
        ws: ``G`` weights ``(D, 4, H, I + H)``: per direction and gate ``[W_ih | W_hh]``.
        bs: ``G`` biases ``(D, 4, H)`` (or None).

    Returns:
        ``G`` outputs ``(T, B, D * H)``, the directions concatenated per step (the backward one in forward time
        order).

    The ``G * D`` recurrences advance together: one ``F.batch_matmul`` per step for all of them (the separator
    runs its targets' LSTMs this way), so the per-function overhead of NNabla is paid once per step, not per
    model. The input projection of every step is one ``F.batch_matmul`` up front; the backward directions run on
    the time-reversed projection.
    """
    nb_frames, nb_samples, nb_inputs = xs[0].shape
    directions, _, hidden, _ = ws[0].shape
    groups = len(xs)
    gd = groups * directions
    w = F.concatenate(*ws, axis=0) if groups > 1 else ws[0]
    w = F.reshape(w, (gd, 4 * hidden, nb_inputs + hidden))
    w_ih = F.slice(w, (0, 0, 0), (gd, 4 * hidden, nb_inputs))  # (G D, 4H, I)
    w_hh = F.slice(w, (0, 0, nb_inputs), (gd, 4 * hidden, nb_inputs + hidden))  # (G D, 4H, H)
    rows = F.stack(*xs, axis=0) if groups > 1 else F.reshape(xs[0], (1, nb_frames, nb_samples, nb_inputs))
    rows = F.broadcast(F.reshape(rows, (groups, 1, nb_frames * nb_samples, nb_inputs)),
                       (groups, directions, nb_frames * nb_samples, nb_inputs))  # fmt: skip
    proj = F.batch_matmul(F.reshape(rows, (gd, nb_frames * nb_samples, nb_inputs)), w_ih, transpose_b=True)
    if bs[0] is not None:
        b = F.concatenate(*bs, axis=0) if groups > 1 else bs[0]
        proj = proj + F.reshape(b, (gd, 1, 4 * hidden))
    proj = _reverse_backward(F.reshape(proj, (gd, nb_frames, nb_samples, 4 * hidden)), directions)
    h = c = None
    outputs = []
    for gates in _split(proj, axis=1):  # (G D, B, 4H) per step
        if h is not None:
            gates = gates + F.batch_matmul(h, w_hh, transpose_b=True)
        i, f, g, o = F.split(F.reshape(gates, (gd, nb_samples, 4, hidden)), axis=2)
        c = F.sigmoid(i) * F.tanh(g) if c is None else F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
        h = F.sigmoid(o) * F.tanh(c)
        outputs.append(h)
    y = F.stack(*outputs, axis=1) if len(outputs) > 1 else F.reshape(outputs[0], (gd, 1, nb_samples, hidden))
    y = _reverse_backward(y, directions)  # (G D, T, B, H)
    y = F.transpose(F.reshape(y, (groups, directions, nb_frames, nb_samples, hidden)), (0, 2, 3, 1, 4))
    y = F.reshape(y, (groups, nb_frames, nb_samples, directions * hidden))
    return _split(y, axis=0)


def unrolled_lstm(
    xs: list[nn.Variable],
    params: list[tuple[nn.Variable, nn.Variable | None, nn.Variable]],
    num_layers: int,
    dropout: float = 0.0,
) -> list[nn.Variable]:
    """``G`` independent multi-layer LSTMs of the same shape in one unrolled graph.

    Args:
        xs: ``G`` inputs ``(nb_frames, nb_samples, input_size)``.
        params: ``G`` triples ``(weight_l0, weight, bias)`` in ``PF.lstm``'s layout (``weight`` None for one layer).
        num_layers: ``L``.
        dropout: ``F.dropout`` probability on the outputs of every layer but the last (``torch.nn.LSTM``'s
            ``dropout`` in training mode); 0: none.

    Returns:
        ``G`` outputs ``(nb_frames, nb_samples, D * H)``.
    """
    per_layer_w = [[w0] + ([] if w is None else _split(w, axis=0)) for w0, w, _ in params]
    per_layer_b = [_split(b, axis=0) if b is not None else [None] * num_layers for _, _, b in params]
    for layer in range(num_layers):
        xs = _unrolled_layer(xs, [w[layer] for w in per_layer_w], [b[layer] for b in per_layer_b])
        if dropout > 0 and layer < num_layers - 1:
            xs = [F.dropout(x, p=dropout) for x in xs]
    return xs


def feature_affine(
    x: nn.Variable,
    scale: nn.Variable,
    shift_before: nn.Variable | None = None,
    shift_after: nn.Variable | None = None,
    train: bool = False,
) -> nn.Variable:
    """``(x + shift_before) * scale + shift_after`` per feature of the last axis, as one
    ``F.batch_normalization`` with fixed statistics (``mean = -shift_before``, ``var = 1``, ``eps = 0``,
    ``gamma = scale``, ``beta = shift_after``): the same float operations, bit for bit, in one pass over ``x``
    instead of two broadcasting ``F.add2`` / ``F.mul2`` (each ~2x slower than the whole normalisation on
    NNabla's CPU kernels). ``train``: the broadcasting arithmetic instead, because ``F.batch_normalization``
    propagates no gradient to its ``mean`` input (``shift_before``, i.e. ``input_mean``)."""
    n = x.shape[-1]
    shape = (1,) * (x.ndim - 1) + (n,)
    if train:
        if shift_before is not None:
            x = x + F.reshape(shift_before, shape)
        x = x * F.reshape(scale, shape)
        return x if shift_after is None else x + F.reshape(shift_after, shape)
    zeros = F.constant(0.0, shape)
    mean = zeros if shift_before is None else F.reshape(-shift_before, shape)
    beta = zeros if shift_after is None else F.reshape(shift_after, shape)
    ones = F.constant(1.0, shape)
    return F.batch_normalization(x, beta, F.reshape(scale, shape), mean, ones, axes=[x.ndim - 1], eps=0.0,
                                 batch_stat=False)  # fmt: skip


def persistent(var: nn.Variable) -> nn.Variable:
    """Mark ``var`` persistent (its data survives a forward that clears buffers) and return it: how a traced
    intermediate output is kept (the ``convert`` of the models' :class:`core_spec.trace.Recorder`)."""
    var.persistent = True
    return var


def parameter(name: str, shape: tuple[int, ...], init: object, need_grad: bool = True) -> nn.Variable:
    """The parameter ``name`` of the current scope, created with ``init`` (an NNabla initializer) if absent; its
    shape is checked (a loaded parameter of another shape is an error, not a silent reshape)."""
    var = nn.parameter.get_parameter_or_create(name, shape, init, need_grad)
    if tuple(var.shape) != tuple(shape):
        raise ValueError(f"parameter {name!r}: expected shape {tuple(shape)}, have {tuple(var.shape)}")
    return var


# --- additions for HTDemucs: fast elementwise ops and accurate norm statistics -----------------------------

_SQRT_HALF = 1.0 / math.sqrt(2.0)

# NNabla 1.39's CPU Mul2 / Sub2 (and Div2) take ~60 ms for 4 M float32 values, with or without broadcasting, where
# Add2 takes 9 ms, MulN 17 ms and a per-channel depthwise 1x1 convolution 5 ms (shared 2-core machine): 15 of the
# 43 s of a released-shape forward were Mul2. The helpers below use the fast ones; the statistics of a training
# graph keep their gradient (:func:`differentiable_statistics`). An eval-mode F.batch_normalization (the trick of
# feature_affine above) is fast too, but a forward(clear_buffer=True) does not free its output.
_DIFFERENTIABLE = contextvars.ContextVar("htdemucs_differentiable_statistics", default=False)


def reshape(x: nn.Variable, shape: tuple[int, ...]) -> nn.Variable:
    """``F.reshape(x, shape, inplace=False)``: NNabla's default in-place reshape keeps its input's buffer alive
    through a ``forward(clear_buffer=True)`` (measured: ten in-place reshapes of a 100 MB chain kept 950 MB, copies
    190 MB), which held every intermediate of the released HTDemucs (5.6 GB); a copy is freed as usual."""
    return F.reshape(x, shape, inplace=False)


@contextlib.contextmanager
def differentiable_statistics() -> Iterator[None]:
    """Build the norms inside the block with their statistics differentiable (a training graph): :func:`standardise`
    then centres and scales with broadcasting ``Sub2`` / ``Mul2`` ops, whose gradient reaches the mean and variance
    (a depthwise convolution's weight gradient would too, but the plain ops are the reference form)."""
    token = _DIFFERENTIABLE.set(True)
    try:
        yield
    finally:
        _DIFFERENTIABLE.reset(token)


def product(a: nn.Variable, b: nn.Variable) -> nn.Variable:
    """``a * b`` for two Variables of one shape (``F.mul_n``: 3.5x faster than ``F.mul2`` on NNabla's CPU).

    In a training graph (:func:`differentiable_statistics`) it is ``F.mul2``: ``F.mul_n`` back-propagates
    ``y / x_i``, NaN where a factor is exactly 0 (the erf GELU's ``1 + erf(x / sqrt 2)`` below about -5.9 in
    float32, zero padding); on the tiny MUSDB the loss was NaN from the second step."""
    return F.mul2(a, b) if _DIFFERENTIABLE.get() else F.mul_n(a, b)


def gelu(x: nn.Variable) -> nn.Variable:
    """Exact GELU, ``x Phi(x) = x (1 + erf(x / sqrt 2)) / 2``, as ``torch.nn.functional.gelu``."""
    return product(x, F.erf(x * _SQRT_HALF) + 1.0) * 0.5


def _divisor_block(n: int) -> int | None:
    """The largest divisor of ``n`` in ``[16, 64]`` (a block that needs no padding), or ``None``."""
    return next((b for b in range(64, 15, -1) if n % b == 0), None)


def _sum_rows(x: nn.Variable) -> nn.Variable:
    """The sum over the last axis of ``x (rows, n)`` (kept: ``(rows, 1)``) as a tree of partial sums of 16-64
    values (the axis split into blocks, summed within blocks, repeated; zero-padded to a multiple of 32 when ``n``
    has no such divisor). NNabla's ``F.sum`` / ``F.mean`` add an axis in one sequential float32 pass: the mean of
    squares over 85 995 steps came out 2.5e-4 off, which put the time branch's DConv GroupNorm 40 dB below
    upstream's float32 run; with the tree it is 1e-7."""
    rows = x.shape[0]
    while x.shape[1] > 64:
        n = x.shape[1]
        block = _divisor_block(n)
        if block is None:
            block = 32
            x = F.pad(x, (0, -n % block))
        x = F.sum(reshape(x, (rows, x.shape[1] // block, block)), axis=2)
    return F.sum(x, axis=1, keepdims=True)


def standardise(x: nn.Variable, axes: tuple[int, ...]) -> nn.Variable:
    """``(x - mean) / sqrt(var + 1e-5)`` over ``axes`` (the trailing axes of ``x``), the biased variance in two
    passes (the mean, then the mean of the squared deviations), every sum a tree (:func:`_sum_rows`).

    NNabla's ``F.group_normalization`` / ``F.layer_normalization`` take the variance in one pass over float32 sums
    (``E[x^2] - E[x]^2``): 3.9e-3 off on 1e5 values of mean 10 and unit variance. The statistics here are
    computed apart and applied per row by depthwise 1x1 convolutions (``x - mean``, then ``* (var + eps)^-1/2``), or,
    in a training graph (:func:`differentiable_statistics`), by ops that carry their gradient to the statistics.
    """
    if tuple(axes) != tuple(range(x.ndim - len(axes), x.ndim)):
        raise ValueError(f"standardise: the axes must be the trailing ones of {x.shape}, got {axes}")
    shape = tuple(x.shape)
    rows = math.prod(shape[: x.ndim - len(axes)])
    n = math.prod(shape[x.ndim - len(axes) :])
    flat = reshape(x, (rows, n))
    mean = _sum_rows(flat) * (1.0 / n)  # (rows, 1)
    if _DIFFERENTIABLE.get():
        centred = flat - mean
        var = _sum_rows(product(centred, centred)) * (1.0 / n)
        return reshape(centred * F.pow_scalar(var + NORM_EPS, -0.5), shape)
    # per-row shift and scale as depthwise 1x1 convolutions over the rows: fast, and their outputs are freed by a
    # forward(clear_buffer=True) (an eval-mode F.batch_normalization keeps its output: 6 GB at the released shapes)
    rows3 = reshape(flat, (1, rows, n))
    ones = nn.Variable.from_numpy_array(np.ones((rows, 1), np.float32))
    centred = F.depthwise_convolution(rows3, ones, reshape(mean, (rows,)) * -1.0)
    var = _sum_rows(product(reshape(centred, (rows, n)), reshape(centred, (rows, n)))) * (1.0 / n)
    out = F.depthwise_convolution(centred, F.pow_scalar(var + NORM_EPS, -0.5))
    return reshape(out, shape)


def channel_affine(x: nn.Variable, weight: nn.Variable, bias: nn.Variable | None = None) -> nn.Variable:
    """``weight[c] x[:, c] + bias[c]`` over the channel axis 1 of ``x (B, C, ...)`` (``weight``, ``bias`` ``(C,)``),
    as a depthwise 1x1 convolution."""
    channels = x.shape[1]
    flat = reshape(x, (x.shape[0], channels, -1))
    y = F.depthwise_convolution(flat, reshape(weight, (channels, 1)), bias)
    return reshape(y, tuple(x.shape))
