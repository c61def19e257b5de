"""How far ``unmix-separate --segment-seconds`` (Open-Unmix in chunks) is from the whole-track separation.

The umxhq-shaped separator (4 targets, seeded weights: ``benchmarks.workloads.umx_weights``; niter 1,
wiener_win_len 300, upstream's CLI settings) of ``umx_torch`` separates real music twice: the whole track at once,
and in chunks cross-faded by :func:`unmix.chunks.separate_in_chunks` (the command's code), with the chunk
length the command uses (:func:`unmix.umx_segments.aligned_segment`: chunks a whole number of Wiener windows
apart) and, for comparison, the length as asked (``aligned`` false). Reported per stem: the SNR in dB of the chunked
stems against the whole-track ones.

Tracks: the stempeg clip (6.1 s, its four stems summed) and the clip tiled to 60 s (``benchmarks.workloads.music``).
The weights are seeded, not trained: a trained BLSTM may lean on long context differently, so these figures
describe the method (context cut at the chunk edges, per-chunk Wiener statistics), not a released model.

Run: ``.venv/bin/python -m benchmarks chunk_snr`` (writes ``benchmarks/results/separate_chunks.json``).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import TIMING_ENV, write_result
from benchmarks.workloads import music, umx_config, umx_weights

RATE = 44100
N_HOP = 1024
# (track seconds, chunk seconds, overlap seconds); None = the whole clip
CASES = [
    (None, 2.0, 0.5),
    (None, 3.0, 0.5),
    (None, 3.0, 1.0),
    (60.0, 10.0, 2.0),
    (60.0, 20.0, 2.0),
    (60.0, 30.0, 0.5),
    (60.0, 30.0, 2.0),
    (60.0, 30.0, 5.0),
    (60.0, 45.0, 2.0),
]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m benchmarks chunk_snr", description=__doc__.splitlines()[0]).parse_args(argv)
    for key, value in TIMING_ENV.items():  # before torch starts its OpenMP threads
        os.environ.setdefault(key, value)
    import umx_torch
    from core_spec.canonical import join_targets
    from core_spec.tolerances import metrics
    from parity_tests import real_clip
    from unmix.chunks import separate_in_chunks
    from unmix.umx_segments import aligned_segment

    cfg = umx_config(1)
    separator = umx_torch.from_canonical(cfg, join_targets(umx_weights(cfg)), niter=1, wiener_win_len=300)
    targets = cfg.separator.targets

    def run(x: np.ndarray) -> np.ndarray:
        return separator.separate(x[None])[0].numpy()

    tracks = {None: real_clip.load_clip().mixture.astype(np.float32), 60.0: music(60.0)}
    whole: dict = {}
    rows = []
    for seconds, asked, overlap in CASES:
        audio = tracks[seconds]
        if seconds not in whole:
            began = time.perf_counter()
            whole[seconds] = (run(audio), time.perf_counter() - began)
        reference, whole_wall = whole[seconds]
        aligned = aligned_segment(round(asked * RATE), round(overlap * RATE), N_HOP, 300, 1)
        for segment in dict.fromkeys([aligned, round(asked * RATE)]):
            began = time.perf_counter()
            chunked = separate_in_chunks(run, audio, segment, round(overlap * RATE))
            wall = time.perf_counter() - began
            row = {
                "track": "stempeg clip (6.1 s)" if seconds is None else f"clip tiled to {seconds:g} s",
                "segment_asked_s": asked,
                "segment_s": round(segment / RATE, 2),
                "aligned": segment == aligned,
                "overlap_s": overlap,
                "snr_db": {t: round(metrics(chunked[j], reference[j]).snr_db, 1) for j, t in enumerate(targets)},
                "snr_db_all": round(metrics(chunked, reference).snr_db, 1),
                "wall_s_chunked": round(wall, 1),
                "wall_s_whole": round(whole_wall, 1),
            }
            rows.append(row)
            print(row, flush=True)
    meta = {"model": "umxhq shapes, seeded (benchmarks.workloads.umx_weights)", "port": "umx_torch", "niter": 1}
    print(f"wrote {write_result('separate_chunks', rows, meta)}")
    return 0
