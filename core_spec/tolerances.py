"""The one table of tolerances, and the metrics every parity assertion in the project uses.

Three metrics are computed for every comparison and all three are recorded:

- ``max_abs``: ``max |actual - expected|``;
- ``rel``: ``max |actual - expected| / max |expected|`` (relative to the signal's peak, not element-wise, so that
  near-zero entries do not dominate);
- ``snr_db``: ``10 log10(sum expected^2 / sum (actual - expected)^2)`` (``inf`` when equal).

A :class:`Tolerance` bounds one or more of them; every bound that is set must hold. A few float32 rows are
**relative to upstream** (``snr_margin_db``): where upstream's own float32 output on the same input is at hand
(the fixtures carry it; ``unmix-parity`` runs upstream), the port is judged against upstream's float32 error,
``snr(port float32 vs float64 reference) >= snr(upstream float32 vs float64 reference) - snr_margin_db``, i.e.
``err(port) <= k * err(upstream)`` with ``k = 10 ** (snr_margin_db / 20)``; the row's absolute bounds are a floor
that holds everywhere (also where no upstream output exists: a comparison against upstream itself, jit against
eager, GPU against CPU). The table is keyed by
``(stage, dtype, device)``: ``dtype`` is the precision of the computation under test (``"float64"`` or
``"float32"``), ``device`` is ``"cpu"`` or ``"gpu"``. The float64 rows bound both the NumPy reference against the
upstream oracle and float64 ports against the reference. Tests never carry their own numbers: they call
:func:`check` with a stage name from this table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "RECORDED",
    "REGRESSION_DB",
    "SDR_DIFF_DB",
    "TOLERANCES",
    "Metrics",
    "Tolerance",
    "Verdict",
    "check",
    "check_distinct",
    "degrade",
    "judge",
    "metrics",
    "tolerance",
]


@dataclass(frozen=True)
class Tolerance:
    """Upper bounds on ``max_abs`` and ``rel``, lower bound on ``snr_db``; ``None`` = not bounded.

    ``snr_margin_db``: with upstream's output on the same input, also ``snr >= upstream's snr - snr_margin_db``
    (both against the same expected array; see the module docstring).
    """

    rel: float | None = None
    max_abs: float | None = None
    snr_db: float | None = None
    snr_margin_db: float | None = None

    def describe(self) -> str:
        parts = []
        if self.rel is not None:
            parts.append(f"rel <= {self.rel:.2g}")
        if self.max_abs is not None:
            parts.append(f"max_abs <= {self.max_abs:.2g}")
        if self.snr_db is not None:
            parts.append(f"snr >= {self.snr_db:g} dB")
        if self.snr_margin_db is not None:
            parts.append(f"snr >= upstream's - {self.snr_margin_db:g} dB")
        return ", ".join(parts)


@dataclass(frozen=True)
class Metrics:
    max_abs: float
    rel: float
    snr_db: float

    def __str__(self) -> str:
        return f"max_abs={self.max_abs:.3e} rel={self.rel:.3e} snr={self.snr_db:.1f} dB"


# Stages, in the order of the chain of parity. Each stage names what is compared.
#   stft / istft / magnitude        transforms
#   umx.layer                       every intermediate output of OpenUnmix (after fc1, bn1, lstm, fc2, ..., mask)
#   umx.output                      the network output (masked magnitude)
#   wiener                          the Wiener/EM filter output (complex, per source)
#   wiener.em_float64               a float32 filter whose EM runs in float64 (umx_tf), incl. the oracle separation
#   separator                       waveform in -> stems out (UMX): the fixtures
#   separator.music                 the same on real music (unmix-parity), per stem
#   resample                        the julius-compatible resampler (with julius's own kernels)
#   resample.kernels                the resampling kernels computed in float64 vs julius's float32-built ones
#   demucs.own_kernels              Demucs forward / apply_model with the spec's float64 kernels vs upstream
#   demucs.layer / demucs.output    every encoder/decoder/LSTM output, and the forward
#   demucs.apply                    apply_model with split and overlap-add
#   htdemucs.layer                  HTDemucs spec functions vs demucs 4.1.0 (embeddings, channel samplers, ...)
#   round_trip                      STFT -> ISTFT reconstruction of a signal
_F64 = {
    # upstream's STFT window is torch.hann_window in float32, cast to float64: it differs from the float64 Hann
    # window by float32 rounding. Tests of the other stages inject upstream's window (see reference.transforms).
    "window": Tolerance(rel=3e-7),
    # openunmix's own atan2 adds pi rounded to float32 (8.7e-8 rad off): "exact" vs "upstream" phase init
    "wiener.atan2": Tolerance(rel=1e-6),
    "stft": Tolerance(rel=1e-13),
    "istft": Tolerance(rel=1e-13),
    "magnitude": Tolerance(rel=1e-13),
    "round_trip": Tolerance(rel=1e-13),
    "umx.layer": Tolerance(rel=1e-12),
    "umx.output": Tolerance(rel=1e-12),
    # EM inverts 2x2 covariances whose condition number reaches ~1e6 where one source dominates a bin (rank-one
    # R_j, regularised by sqrt(eps) = 1e-5 only): float64 rounding is amplified to ~1e-10 there.
    "wiener": Tolerance(rel=1e-9),
    "separator": Tolerance(rel=1e-9),
    # Demucs / resampler, reference vs demucs 2.0.3 float64 with julius's kernels injected: achieved rel <= 1.7e-15
    # at every stage (2.5e-16 for the resampler alone); bounds at ~60x that.
    "resample": Tolerance(rel=1e-13),
    "demucs.layer": Tolerance(rel=1e-13),
    "demucs.output": Tolerance(rel=1e-13),
    "demucs.apply": Tolerance(rel=1e-13),
    # HTDemucs spec vs demucs 4.1.0 in float64 (parity_tests/upstream/test_htdemucs_*_oracle.py): achieved <= 2.3e-13,
    # the 1-D sinusoidal embedding at 1344 positions (torch's and NumPy's float64 pow differ by an ulp, times the
    # position); the 2-D embedding, ScaledEmbedding and 1x1 channel samplers <= 3e-14
    # Also every stage of the whole forward and apply_model with split, shifts and bags (parity_tests/
    # fixtures_htdemucs.py, unmix-parity), against demucs 4.1.0 run under torch.set_default_dtype(torch.float64).
    # Achieved on the fixtures: small traced models <= 1.5e-14 per stage, the released htdemucs / htdemucs_6s
    # outputs 3.0e-13 / 6.4e-13 (upstream's input statistics injected), apply_model <= 2.9e-14. At the released
    # shapes on real music (unmix-parity, 1 s of the stempeg clip) float64 rounding reaches 1.3e-12 (upstream) and
    # 1.4e-12 (umx_torch) at decoder.2 and 7.8e-13 in apply_model: 1e-12 does not hold in general at the released
    # size, so the rows are 1e-11 (7x above the worst seen).
    "htdemucs.layer": Tolerance(rel=1e-11),
    "htdemucs.output": Tolerance(rel=1e-11),
    "htdemucs.apply": Tolerance(rel=1e-11),
    # julius builds its kernels in float32 even for a float64 run (torch.arange(...).float()); the spec builds
    # them in float64. "resample.kernels": the kernels and the resampled signals, spec kernels vs julius's
    # (achieved 8.0e-8 / 1.3e-7); "demucs.own_kernels": forward and apply_model with the spec's own kernels vs
    # upstream float64 (achieved 6.7e-8). A property of upstream's kernels, not of the resampling.
    "resample.kernels": Tolerance(rel=5e-7),
    "demucs.own_kernels": Tolerance(rel=5e-7),
    # One training step vs upstream with torch autograd in float64 (parity_tests/fixtures_train.py; Demucs with
    # julius's kernels injected). The ports differ from torch only in the order of float64 sums (LSTM and
    # convolution backward, batch-norm statistics over B*T rows); the NumPy reference forward reaches the loss to
    # ~1e-15. "train.grad" is per tensor (rel to the tensor's own peak): backprop through 3 BLSTM layers and
    # BatchNorm with batch statistics (a subtraction of near-equal sums) loses a few digits more than the forward.
    # "train.update": parameters after one / two torch.optim.Adam steps (coupled weight decay); one step is
    # ~lr * sign(g + wd w), so errors stay at the rounding of the parameters themselves.
    "train.loss": Tolerance(rel=1e-11),
    "train.grad": Tolerance(rel=1e-9),
    "train.update": Tolerance(rel=1e-12),
    "train.bn_running": Tolerance(rel=1e-11),
    # a data-parallel replica's step vs the same half of the batch run in one process (the same arithmetic on the
    # same rows; only the all-reduce of the gradients adds a float64 sum of two terms): rounding of the last bits
    "train.replica": Tolerance(rel=1e-14),
    # One HTDemucs training step vs demucs 4.1.0's autograd in float64 (parity_tests/fixtures_htdemucs_train.py: a
    # small model, two Adam groups): no BatchNorm nor LSTM, so the backward loses no more than the forward; achieved
    # loss 0, gradients 6.7e-14 (umx_torch)
    "htdemucs.train.loss": Tolerance(rel=1e-12),
    "htdemucs.train.grad": Tolerance(rel=1e-12),
    # gradients that are zero analytically but not in rounding (UMX's input_mean: a constant shift before fc1 is
    # removed by bn1's batch mean in train mode), compared as values divided by the largest gradient of the model
    "train.grad_zero": Tolerance(max_abs=1e-12),
    # the spec's own sanity check of the fixtures: 4-point central differences (h = 1e-5, O(h^4)) of the NumPy
    # reference loss along random directions vs the stored gradient's projection, ReLU masks and L1 signs frozen
    # at the fixture's weights (achieved 5e-11: rounding of the loss over 2h)
    "train.finite_difference": Tolerance(rel=1e-8),
    # a silent input's separation where upstream's atan2 writes 1.0 into every zero bin and the residual keeps it:
    # such a frame inverts to an impulse at n = 0, where the Hann window is 0, so the waveform is silent up to the
    # rounding of the window's zero (an absolute bound: the expected output is 0, a relative error is undefined)
    "silence": Tolerance(max_abs=1e-12),
    # Open-Unmix input statistics (per-bin mean and std over all frames, unmix.data.umx_statistics): blockwise
    # Chan merging vs one pass over all frames, and vs upstream's encoder in float64 (rounding of sums of ~1e4
    # frames; achieved 3.6e-16 on the tiny MUSDB root)
    "data.statistics": Tolerance(rel=1e-12),
    # mathematical identities evaluated in float64 on values of magnitude <= 1 (the periodic window's symmetry,
    # cos/sin written without transcendentals vs np.cos/np.sin, resampling a constant): rounding only
    "identity": Tolerance(max_abs=1e-15),
}

_F32 = {
    "window": Tolerance(rel=3e-7),
    "wiener.atan2": Tolerance(rel=1e-5),
    "stft": Tolerance(rel=1e-5),
    "istft": Tolerance(rel=1e-5),
    "magnitude": Tolerance(rel=1e-5),
    "round_trip": Tolerance(rel=1e-5),
    "umx.layer": Tolerance(rel=1e-4),
    "umx.output": Tolerance(rel=1e-4, snr_db=70.0),
    # EM inverts near-singular 2x2 covariances (bins where one spatial direction dominates): float32 loses digits
    # in proportion to the input's ill-conditioning, upstream's float32 run as much as a port, and which bins
    # lose them depends on rounding details. So these two rows judge a port against upstream's own float32 error
    # on the same input (port SNR >= upstream's SNR - margin). Measured, port SNR minus upstream's, worst case:
    # - the Wiener and separator fixtures (parity_tests/fixtures_umx.py, random inputs; upstream 131-148 dB and
    #   126-136 dB): wiener torch -1.8, tf -1.9 (niter 0: its float32 phase initialisation; with EM +6 to +11 dB,
    #   its EM runs in float64), jax -1.3, nnabla -1.6 dB; separator torch -0.1, tf +0.8, jax +0.2, nnabla -0.2 dB;
    # - unmix-parity on the stempeg clip (umxhq shapes, seeded weights, three 1-3 s excerpts; upstream 108-117 dB
    #   wiener, 108-123 dB per stem): wiener -2.5 dB (nnabla), separator per stem -7.0 dB (jax), whole -5.3 dB.
    # Margins: wiener 5 dB (k = 1.8) for the fixtures and the real clip alike; separator 3 dB (k = 1.41) on the
    # fixtures (every port within 1 dB of upstream there) and, as its own row "separator.music", 10 dB (k = 3.2)
    # per stem for unmix-parity on real music, where float32 EM alone moves a correct port's stems by up to 7 dB.
    # A port whose SNR drops by REGRESSION_DB (20 dB) fails on every fixture (parity_tests/harness.py checks it
    # for every port, also for tf's wiener, up to 10.7 dB better than upstream there); one that drops by 3 dB
    # (wiener: 5 dB) fails the fixture rows. Floor where no upstream output is at hand (a port against upstream
    # itself on the real clip: 60-67 dB): 60 dB.
    "wiener": Tolerance(snr_db=60.0, snr_margin_db=5.0),
    "separator": Tolerance(snr_db=60.0, snr_margin_db=3.0),
    "separator.music": Tolerance(snr_db=60.0, snr_margin_db=10.0),
    # a float32 Wiener filter whose EM runs in float64 (umx_tf's default, see umx_tf.filtering): bounded by the
    # float32 rounding of its inputs and outputs instead of EM's ill-conditioning on real music. Oracle separation
    # of 3 s of the stempeg clip (float32 STFT, true magnitudes, niter 1, float32 ISTFT) vs the float64 reference:
    # achieved 137.6 dB (67.0 dB with float32 EM, upstream's own float32 run: 67.0 dB); bound ~18 dB below.
    "wiener.em_float64": Tolerance(snr_db=120.0),
    # Demucs / resampler: upstream float32 vs the float64 reference, achieved rel <= 3.8e-7 (resampler) and
    # <= 9.4e-7, snr >= 134 dB (every layer, output, apply_model; also upstream's float64 model whose split
    # overlap-add runs in torch's default float32); bounds at ~10x / 24 dB below that.
    "resample": Tolerance(rel=5e-6),
    "resample.kernels": Tolerance(rel=5e-7),
    "demucs.own_kernels": Tolerance(rel=1e-5, snr_db=110.0),
    "demucs.layer": Tolerance(rel=1e-5),
    "demucs.output": Tolerance(rel=1e-5, snr_db=110.0),
    "demucs.apply": Tolerance(rel=1e-5, snr_db=110.0),
    # HTDemucs in float32 vs the float64 reference: judged against upstream's own float32 error on the same input
    # (demucs 4.1.0 float32 vs float64, parity_tests/fixtures_htdemucs.py). Upstream reaches, per stage: small
    # traced models >= 117 dB (rel <= 1.5e-6; apply_model with split, shifts and bags 127-132 dB); the released
    # shapes on a short input zero-padded to 7.8 s: every stage >= 88 dB (rel <= 8.4e-5, the time decoders), the
    # output 87.5 dB (htdemucs) and 80.3 dB (htdemucs_6s). A float32 port must stay within 10 dB (k = 3.2) of
    # upstream's SNR where upstream's output is at hand, and above 60 dB everywhere (the floor: upstream's worst is
    # 20 dB above it). To tighten once the four ports are measured.
    "htdemucs.layer": Tolerance(snr_db=60.0, snr_margin_db=10.0),
    "htdemucs.output": Tolerance(snr_db=60.0, snr_margin_db=10.0),
    "htdemucs.apply": Tolerance(snr_db=60.0, snr_margin_db=10.0),
    # One training step in float32 vs the float64 fixture. Upstream's own float32 run reaches (per tensor): loss
    # 1.5e-7, gradients rel <= 3.4e-6 (snr >= 111 dB), parameters after one / two Adam steps rel <= 4.3e-8 /
    # 6.8e-7, BatchNorm running statistics 1.7e-7; bounds at ~10x (grad: ~30x, the LSTMs' backward accumulates
    # over frames in a port-specific order) and 20 dB below that.
    "train.loss": Tolerance(rel=2e-6),
    "train.grad": Tolerance(rel=1e-4, snr_db=90.0),
    # HTDemucs: upstream's own float32 step reaches loss 8.2e-8, gradients rel 4.2e-5 / 88.8 dB (the GroupNorms and
    # the attention softmax backward), below the v2 gradient row's 90 dB floor; bounds ~12x and 14 dB below upstream
    "htdemucs.train.loss": Tolerance(rel=2e-6),
    "htdemucs.train.grad": Tolerance(rel=5e-4, snr_db=75.0),
    "train.update": Tolerance(rel=1e-5),
    "train.bn_running": Tolerance(rel=2e-6),
    # UMX input_mean's analytically-zero gradient: upstream float32 leaves 1.6e-8 of the largest gradient
    "train.grad_zero": Tolerance(max_abs=1e-6),
    # statistics from upstream's float32 STFT (float32 window and audio) vs the float64 computation: achieved 4e-8
    "data.statistics": Tolerance(rel=1e-6),
    # float32 audio out of the data pipeline vs the same arithmetic done another way (stems summed in another
    # order, a float32 gain vs torch's, normalisation in float32 vs float64): rounding of a few float32 operations
    "data.audio": Tolerance(rel=1e-6),
    # 16-bit PCM written and read back (unmix.data.write_wav rounds to the nearest step): half a step of
    # 2**-15 per stem, four stems summed
    "data.pcm16": Tolerance(max_abs=4 * 2.0**-16),
    # MP3 at 320 kbit/s (ffmpeg's libmp3lame, from 16-bit PCM) decoded by ffmpeg vs the float stems it was made
    # from: measured 39.3 dB (35.2-44.7 dB per stem) on 3 s of the stempeg clip separated by a small seeded Demucs
    # (parity_tests/separate/test_torch.py); bound 14 dB below that (a lossy codec: energy only)
    "data.mp3": Tolerance(snr_db=25.0),
    # initial weights written in float32 (UMX's input scalers -mean and 1/std, demucs's rescale_module factor) vs
    # the same arithmetic in float64, and the standard deviation of a rescaled float32 tensor vs its target
    "init": Tolerance(rel=1e-5),
}

TOLERANCES: dict[tuple[str, str, str], Tolerance] = {}
for _device in ("cpu", "gpu"):
    TOLERANCES.update({(stage, "float64", _device): tol for stage, tol in _F64.items()})
    TOLERANCES.update({(stage, "float32", _device): tol for stage, tol in _F32.items()})

# Oracle separation of the real clip scored with museval: SDR of a port (or the reference) may differ from the
# upstream's SDR by at most this many dB per source.
SDR_DIFF_DB = 0.01

# A regression the rows relative to upstream must catch: a port whose SNR drops by this much fails
# (the parity suite degrades each port's output by it with :func:`degrade` and expects the check to fail).
REGRESSION_DB = 20.0

# Every call of :func:`check` appends a row here; the parity suite writes them to its report.
RECORDED: list[dict[str, Any]] = []


def tolerance(stage: str, dtype: str | np.dtype | type, device: str = "cpu") -> Tolerance:
    """The tolerance for ``stage`` at ``dtype`` on ``device``; a clear error for an unknown key."""
    key = (stage, np.dtype(dtype).name, device)
    try:
        return TOLERANCES[key]
    except KeyError:
        stages = sorted({k[0] for k in TOLERANCES})
        raise KeyError(f"no tolerance for {key}; stages: {stages}, dtypes float32/float64, devices cpu/gpu") from None


def metrics(actual: Any, expected: Any) -> Metrics:
    """The three metrics of ``actual`` against ``expected`` (computed in float64; complex arrays allowed)."""
    a = np.asarray(actual)
    e = np.asarray(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape}, expected {e.shape}")
    a = a.astype(np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(e) else np.float64)
    e = e.astype(a.dtype)
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise AssertionError(f"non-finite value in actual at index {tuple(int(i) for i in bad)}")
    diff = np.abs(a - e)
    max_abs = float(diff.max()) if diff.size else 0.0
    peak = float(np.abs(e).max()) if e.size else 0.0
    rel = max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else math.inf)
    noise = float(np.sum(diff**2))
    signal = float(np.sum(np.abs(e) ** 2))
    if noise == 0:
        snr = math.inf
    elif signal == 0:
        snr = -math.inf
    else:
        snr = 10 * math.log10(signal / noise)
    return Metrics(max_abs=max_abs, rel=rel, snr_db=snr)


@dataclass(frozen=True)
class Verdict:
    """A comparison judged by the table: the metrics, the row, and for a row relative to upstream, upstream's
    SNR on the same input and the resulting bound (``None`` without upstream)."""

    ok: bool
    metrics: Metrics
    tolerance: Tolerance
    upstream_snr_db: float | None = None
    snr_bound_db: float | None = None

    def describe(self) -> str:
        text = self.tolerance.describe()
        if self.snr_bound_db is not None:
            text += f"; upstream's snr {self.upstream_snr_db:.1f} dB: bound {self.snr_bound_db:.1f} dB"
        return text


def judge(
    actual: Any,
    expected: Any,
    stage: str,
    dtype: str | np.dtype | type,
    device: str = "cpu",
    upstream: Any | None = None,
) -> Verdict:
    """Judge ``actual`` against ``expected`` by the row ``(stage, dtype, device)``; nothing is recorded.

    ``upstream``: upstream's output on the same input, in the same precision as ``actual`` (for a row with
    ``snr_margin_db``; ignored by the others).
    """
    tol = tolerance(stage, dtype, device)
    m = metrics(actual, expected)
    ok = (
        (tol.rel is None or m.rel <= tol.rel)
        and (tol.max_abs is None or m.max_abs <= tol.max_abs)
        and (tol.snr_db is None or m.snr_db >= tol.snr_db)
    )
    if tol.snr_margin_db is None or upstream is None:
        return Verdict(ok, m, tol)
    upstream_snr = metrics(upstream, expected).snr_db
    bound = upstream_snr - tol.snr_margin_db
    return Verdict(ok and m.snr_db >= bound, m, tol, upstream_snr, bound)


def check(
    actual: Any,
    expected: Any,
    stage: str,
    dtype: str | np.dtype | type,
    device: str = "cpu",
    what: str = "",
    upstream: Any | None = None,
) -> Metrics:
    """Assert that ``actual`` matches ``expected`` within the table's tolerance for ``(stage, dtype, device)``
    (with ``upstream``'s output on the same input for a row relative to upstream: :func:`judge`).

    Records the metrics in :data:`RECORDED` (pass or fail) and returns them.
    """
    verdict = judge(actual, expected, stage, dtype, device, upstream)
    m = verdict.metrics
    row = {"what": what, "stage": stage, "dtype": np.dtype(dtype).name, "device": device, "ok": verdict.ok, **asdict(m)}
    if verdict.snr_bound_db is not None:
        row.update(upstream_snr_db=verdict.upstream_snr_db, snr_bound_db=verdict.snr_bound_db)
    RECORDED.append(row)
    if not verdict.ok:
        raise AssertionError(f"{what or stage}: {m} exceeds the tolerance ({verdict.describe()}) for {stage}")
    return m


def check_distinct(
    actual: Any,
    expected: Any,
    stage: str,
    dtype: str | np.dtype | type,
    device: str = "cpu",
    what: str = "",
) -> Metrics:
    """Assert that ``actual`` is *outside* the row ``(stage, dtype, device)`` around ``expected``: a test that a
    wrong variant (decoupled weight decay, an unflipped kernel, per-replica statistics) would be caught by the same
    row that judges the right one. Nothing is recorded; returns the metrics."""
    verdict = judge(actual, expected, stage, dtype, device)
    if verdict.ok:
        raise AssertionError(
            f"{what or stage}: {verdict.metrics} lies within the tolerance ({verdict.describe()}) for {stage}; "
            "the variant was expected to be told apart"
        )
    return verdict.metrics


def degrade(actual: Any, expected: Any, db: float = REGRESSION_DB, seed: int = 0) -> np.ndarray:
    """``actual`` plus seeded noise such that its SNR against ``expected`` is exactly ``db`` lower.

    The error ``e = actual - expected`` becomes ``e + a n`` with ``n`` white noise (complex for complex data) and
    ``a > 0`` solving ``|e + a n|^2 = 10^(db/10) |e|^2``. Used to show that a tolerance catches a regression.
    """
    a = np.asarray(actual)
    e = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64) - np.asarray(expected)
    rng = np.random.default_rng(seed)
    n = rng.standard_normal(a.shape)
    if np.iscomplexobj(a):
        n = n + 1j * rng.standard_normal(a.shape)
    target = 10 ** (db / 10) * float(np.sum(np.abs(e) ** 2))
    nn, en = float(np.sum(np.abs(n) ** 2)), float(np.real(np.vdot(n, e)))
    if target == 0:
        raise ValueError("degrade: actual equals expected (infinite SNR); nothing to degrade")
    scale = (-en + math.sqrt(en * en + nn * (target - float(np.sum(np.abs(e) ** 2))))) / nn
    return (a + scale * n).astype(a.dtype)
