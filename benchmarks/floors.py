"""What no port can go below on this machine: the frameworks' own memory at import and the recurrent matrix-vector
product that bounds Demucs's BLSTM, each framework in its own fresh process, in one run.

Issue 16's targets compare whole workloads against upstream. Where a port misses one, this script says whether
the miss is the port's or the framework's:

- ``import``: resident MiB of a fresh interpreter after importing the framework (and, for ``upstream``, openunmix
  and demucs on torch), and the import's wall time (the best of :data:`IMPORT_RUNS` fresh processes). A port can
  only be below upstream's peak by more than the difference of the two imports, and a command of a port only
  below upstream's command time by more than the difference of the import times. TensorFlow is measured twice:
  plain, and as the commands import it (:mod:`unmix.lean_import`: jax, pandas and matplotlib hidden).
- ``gemv``: one LSTM step of Demucs's BLSTM at batch ``M`` (hidden 2048: ``h (M, 2048) @ W_hh^T (2048, 8192)``,
  64 MiB of float32 weights read per step) with each kernel the framework offers; GiB/s is the weight bytes over
  the time. At ``M = 1`` the step is bound by memory bandwidth; 2 layers x 2 directions x T steps of it are a
  floor under the BLSTM's time (T = 217 for 10 s of audio).
- ``lstm``: ``torch.nn.LSTM(2048, 2048, 2, bidirectional=True)`` on ``(217, 1, 2048)``, the module upstream's
  Demucs and the torch port both run (10 s of audio), with oneDNN (torch's default on the CPU) and without.
- ``segment``: the torch port's Demucs (channels 64, as ``demucs``) on one 40-s segment, the length
  ``apply_model`` splits a long track into: the network's time and its BLSTM's share; then the same BLSTM on
  ``B`` segments at once (``(T, B, 2048)``), the time per segment. A 3-min track is 6 segments, each run alone by
  upstream and by the port; batching them would cut the BLSTM's time only from ``B = 5`` on, and hold every
  batched segment's skip connections (about 450 MiB each at channels 64) until the decoders run.

Usage: ``python -m benchmarks floors [--out DIR]``; writes ``floors.json`` and ``floors.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import RESULTS_DIR, ROOT, machine_info
from unmix.environments import nnabla_env, nnabla_python

IMPORTS = {
    "torch": "import torch",
    "tensorflow": "import tensorflow, keras",
    "tensorflow (as the commands import it)": "from unmix.lean_import import without_optional\n"
    "with without_optional():\n    import tensorflow, keras",
    "jax": "import jax, flax.nnx",
    "nnabla": "import nnabla, nnabla.functions, nnabla.parametric_functions",
    "upstream": "import types, sys; sys.modules.setdefault('torchaudio', types.ModuleType('torchaudio')); "
    "import torch, openunmix.model, demucs.model",
}

RSS = "print(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) // 1024)"
IMPORT_RUNS = 3


def _timed_import(code: str) -> str:
    """``code`` timed (printed first), then the process's resident peak (:data:`RSS`)."""
    body = "\n".join("    " + line for line in code.splitlines())
    return f"import time\n_t = time.perf_counter()\nif True:\n{body}\nprint(time.perf_counter() - _t)\n{RSS}"


TIMER = """
import time
def timed(f, calls):
    f()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            f()
        best = min(best, (time.perf_counter() - start) / calls)
    return best
"""

GEMV = {
    "torch": """
import torch
torch.set_num_threads(2)
W = torch.randn(8192, 2048)
Wm = W.to_mkldnn()
for M in (1, 2, 4):
    h = torch.randn(M, 2048)
    print("torch addmm (MKL)", M, timed(lambda: torch.mm(h, W.t()), 30))
    print("torch linear (oneDNN)", M, timed(lambda: torch._C._nn.mkldnn_linear(h.to_mkldnn(), Wm).to_dense(), 30))
""",
    "numpy": """
import numpy as np
W = np.random.default_rng(0).standard_normal((8192, 2048), dtype=np.float32)
for M in (1, 2, 4):
    h = np.ones((M, 2048), np.float32)
    print("numpy matmul", M, timed(lambda: h @ W.T, 30))
""",
    "jax": """
import jax, jax.numpy as jnp, numpy as np
W = jnp.asarray(np.random.default_rng(0).standard_normal((8192, 2048), dtype=np.float32))
f = jax.jit(lambda h, W: h @ W.T)
for M in (1, 2, 4):
    h = jnp.ones((M, 2048), jnp.float32)
    print("jax jit matmul (XLA)", M, timed(lambda: f(h, W).block_until_ready(), 30))
""",
    "tensorflow": """
import tensorflow as tf, numpy as np
tf.config.threading.set_intra_op_parallelism_threads(2)
W = tf.constant(np.random.default_rng(0).standard_normal((8192, 2048), dtype=np.float32))
f = tf.function(lambda h, W: tf.matmul(h, W, transpose_b=True), jit_compile=True)
for M in (1, 2, 4):
    h = tf.ones((M, 2048), tf.float32)
    print("tf matmul (XLA)", M, timed(lambda: f(h, W).numpy(), 30))
""",
    "nnabla": """
import nnabla as nn, nnabla.functions as F, numpy as np
W = nn.Variable.from_numpy_array(np.random.default_rng(0).standard_normal((2048, 8192), dtype=np.float32))
for M in (1, 2, 4):
    h = nn.Variable.from_numpy_array(np.ones((M, 2048), np.float32))
    y = F.affine(h, W)
    print("nnabla affine", M, timed(lambda: y.forward(clear_buffer=True), 30))
W3 = nn.Variable.from_numpy_array(np.ascontiguousarray(W.d.T)[None])  # (1, 8192, 2048): as the port stores W_hh
for M in (1, 2, 4):
    h = nn.Variable.from_numpy_array(np.ones((1, M, 2048), np.float32))
    y = F.batch_matmul(h, W3, transpose_b=True)
    print("nnabla batch_matmul transpose_b (the port's)", M, timed(lambda: y.forward(clear_buffer=True), 30))
""",
}

LSTM = """
import torch
torch.set_num_threads(2)
torch.manual_seed(0)
lstm = torch.nn.LSTM(2048, 2048, 2, bidirectional=True).eval()
x = torch.randn(217, 1, 2048)
with torch.no_grad():
    print("nn.LSTM oneDNN", timed(lambda: lstm(x), 1))
    with torch.backends.mkldnn.flags(enabled=False):
        print("nn.LSTM without oneDNN", timed(lambda: lstm(x), 1))
"""

SEGMENT = """
import torch
torch.set_num_threads(2)
torch.manual_seed(0)
from core_spec.configs import demucs_preset
from umx_torch.demucs import Demucs
model = Demucs.from_config(demucs_preset("demucs"))
x = torch.randn(1, 2, model.valid_length(40 * 44100))
seen = {}
def start(module, args):
    seen["shape"], seen["t"] = tuple(args[0].shape), time.perf_counter()
def stop(module, args, out):
    seen["lstm"] = time.perf_counter() - seen["t"]
model.lstm.register_forward_pre_hook(start)
model.lstm.register_forward_hook(stop)
with torch.no_grad():
    model(x[..., : model.valid_length(44100)])
    print("network", timed(lambda: model(x), 1))
    print("BLSTM", seen["lstm"])
    steps = seen["shape"][-1]
    for batch in (1, 2, 3, 5):
        h = torch.randn(steps, batch, seen["shape"][1])
        print("BLSTM batch", batch, timed(lambda: model.lstm.lstm(h), 1) / batch)
"""


def _python(key: str) -> tuple[str, dict[str, str]]:
    env = {**nnabla_env(), "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "2"}
    return (str(nnabla_python()) if key == "nnabla" else sys.executable), env


def _run(key: str, code: str) -> str:
    python, env = _python(key)
    done = subprocess.run([python, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{key}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return done.stdout


def measure() -> dict:
    imports, import_s = {}, {}
    for key, code in IMPORTS.items():
        runs = [_run(key, _timed_import(code)).split() for _ in range(IMPORT_RUNS)]
        imports[key] = min(int(r[-1]) for r in runs)
        import_s[key] = min(float(r[-2]) for r in runs)
    gemv = []
    for key, code in GEMV.items():
        for line in _run(key, TIMER + code).splitlines():
            *name, batch, seconds = line.split()
            t = float(seconds)
            gemv.append({"kernel": " ".join(name), "M": int(batch), "ms": t * 1e3, "GiB_s": 64 / 1024 / t})
    lstm = {}
    for line in _run("torch", TIMER + LSTM).splitlines():
        *name, seconds = line.split()
        lstm[" ".join(name)] = float(seconds)
    segment: dict[str, float] = {}
    for line in _run("torch", TIMER + SEGMENT).splitlines():
        *name, seconds = line.split()
        segment[" ".join(name)] = float(seconds)
    return {
        "import_rss_mib": imports,
        "import_s": import_s,
        "gemv": gemv,
        "lstm_10s_s": lstm,
        "demucs_segment_40s_s": segment,
        "machine": machine_info(),
    }


def markdown(result: dict) -> str:
    lines = ["# Floors: framework memory and time at import, the BLSTM step, nn.LSTM", "",
             "`python -m benchmarks floors` (each framework in a fresh process, 2 threads).", "",
             "| import | resident MiB | s |", "|---|---:|---:|"]  # fmt: skip
    seconds = result.get("import_s", {})
    lines += [
        f"| {key} | {mib} | {seconds[key]:.2f} |" if key in seconds else f"| {key} | {mib} | |"
        for key, mib in result["import_rss_mib"].items()
    ]
    lines += ["", "| BLSTM step kernel (64 MiB of weights) | M | ms | GiB/s of weights |", "|---|---:|---:|---:|"]
    lines += [f"| {row['kernel']} | {row['M']} | {row['ms']:.2f} | {row['GiB_s']:.1f} |" for row in result["gemv"]]
    lines += ["", "| Demucs BLSTM, 10 s (T = 217, batch 1) | s |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in result["lstm_10s_s"].items()]
    segment = result.get("demucs_segment_40s_s")
    if segment:
        lines += ["", "| torch port, Demucs channels 64, one 40-s segment | s (per segment) |", "|---|---:|"]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in segment.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks floors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    result = measure()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "floors.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / "floors.md").write_text(text)
    print(text)
    return 0
