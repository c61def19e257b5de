"""``--segment-seconds`` for Open-Unmix: the chunk plan and cross-fade (``unmix.chunks``), and the command's
chunked separation against the port's separation of each chunk on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core_spec.tolerances import check
from unmix.audio_files import read_audio_file
from unmix.chunks import chunk_plan, chunk_weight, separate_in_chunks

from .helpers import read_stems, run

UMX_TARGETS = ("vocals", "drums", "bass", "other")


@pytest.mark.parametrize("total", [1, 99, 100, 101, 149, 150, 151, 181, 999, 1000, 12345])
def test_plan_covers_the_track_on_one_grid(total: int) -> None:
    """Chunks start every ``segment - overlap`` samples, are ``segment`` long but the last (ending at the track's
    end, longer than the overlap), consecutive ones share ``overlap`` samples whose two ramps sum to 1."""
    plan = chunk_plan(total, 100, 20)
    assert plan[0].start == 0 and plan[-1].stop == total
    assert [c.start for c in plan] == list(range(0, 80 * len(plan), 80))
    assert all(c.length == 100 for c in plan[:-1])
    assert plan[-1].length == total if total <= 100 else 20 < plan[-1].length <= 100  # one chunk: the track
    weight = np.zeros(total)
    for chunk in plan:
        weight[chunk.start : chunk.stop] += chunk_weight(chunk)
    check(weight, np.ones(total), "identity", "float64", what=f"cross-fade weights sum to 1 (total {total})")


def test_plan_rejects_bad_overlap() -> None:
    with pytest.raises(ValueError, match="overlap <= segment / 2"):
        chunk_plan(1000, 100, 60)


def test_chunks_reproduce_what_every_chunk_reproduces() -> None:
    """A separation that is exact on any chunk (here: two scaled copies of the input) is exact on the track."""
    audio = np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32)
    out = separate_in_chunks(lambda x: np.stack([x, 0.5 * x]), audio, 1000, 250)
    check(out, np.stack([audio, 0.5 * audio]), "data.audio", "float32", what="chunks of an exact separation")


def test_cli_chunks_equal_the_port_on_each_chunk(inputs, tmp_path: Path, capsys) -> None:
    """``--segment-seconds 2 --segment-overlap 0.5`` on the 3-s excerpt: two chunks; away from the cross-fade each
    stem is exactly the port's separation of that chunk alone."""
    import umx_torch

    argv = [inputs.excerpt, "--model", inputs.umxhq, "--framework", "torch", "-o", tmp_path]
    code, out, err = run([*argv, "--segment-seconds", "2", "--segment-overlap", "0.5"], capsys)
    assert code == 0, err
    assert "in 2-s chunks (0.5 s cross-fades)" in out
    audio, rate = read_audio_file(inputs.excerpt)
    got = read_stems(tmp_path / "umxhq" / "excerpt", UMX_TARGETS)
    separator = umx_torch.from_canonical_file(inputs.umxhq, niter=1, wiener_win_len=300)
    first, second = chunk_plan(audio.shape[-1], 2 * rate, rate // 2)
    assert second.length < 2 * rate  # the last chunk is padded with silence to the chunk length
    padded = np.pad(audio[:, second.start :], [(0, 0), (0, 2 * rate - second.length)])
    alone = [separator.separate(x[None])[0].numpy() for x in (audio[:, first.start : first.stop], padded)]
    check(got[..., : second.start], alone[0][..., : second.start], "data.audio", "float32", what="first chunk")
    tail = slice(first.stop - second.start, second.length)
    check(got[..., first.stop :], alone[1][..., tail], "data.audio", "float32", what="second chunk")


def test_auto_chunks_only_when_memory_is_short(inputs, tmp_path: Path, capsys, monkeypatch) -> None:
    """``auto`` (the default) separates the whole track; with (pretended) 1 MB available it chunks."""
    import unmix.umx_segments as segments

    argv = [inputs.excerpt, "--model", inputs.umxhq, "--framework", "torch"]
    code, out, err = run([*argv, "-o", tmp_path / "a"], capsys)
    assert code == 0 and "-s chunks" not in out, err
    monkeypatch.setattr(segments, "available_memory", lambda: 1e6)
    monkeypatch.setattr(segments, "AUTO_SEGMENT", 2.0)
    code, out, err = run([*argv, "-o", tmp_path / "b"], capsys)
    assert code == 0 and "in 2-s chunks (0.5 s cross-fades)" in out, err
