"""What ``unmix-separate`` writes for a separated track: which stems, under which names, clipped how.

- :func:`select_stems`: all sources, ``--stems a,b`` (a subset, in the model's order), or ``--two-stems a``
  (``a`` and ``no_a``, the sum of all the other sources, as demucs 4's ``--two-stems``);
- :func:`prevent_clip`: ``--clip-mode rescale`` (demucs 2.0.3 ``separate.py``: each stem divided by
  ``max(1.01 * peak, 1)``, so nothing changes unless it would clip), ``clamp`` (to ``[-1, 1]``) or ``none`` (kept as
  computed; integer formats still saturate at their range);
- :func:`output_path`: ``OUT/<model>/<--filename>``, the template with ``{track}`` (the input's name without its
  last suffix, as demucs), ``{stem}``, ``{ext}`` and ``{trackext}`` (the input's suffix), as demucs 4's
  ``--filename`` (default ``{track}/{stem}.{ext}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CLIP_MODES",
    "DEFAULT_FILENAME",
    "output_path",
    "prevent_clip",
    "select_stems",
    "stem_names",
    "track_name",
]

CLIP_MODES = ("rescale", "clamp", "none")
DEFAULT_FILENAME = "{track}/{stem}.{ext}"


def stem_names(sources: Sequence[str], stems: Sequence[str] | None = None, two_stems: str | None = None) -> list[str]:
    """The names :func:`select_stems` gives, in order, without the audio (to check outputs before separating).

    Raises:
        ValueError: a name that is not one of ``sources``, or both ``stems`` and ``two_stems``.
    """
    if stems and two_stems is not None:
        raise ValueError("--stems and --two-stems exclude each other")
    wanted = [two_stems] if two_stems is not None else list(stems or [])
    unknown = [s for s in wanted if s not in sources]
    if unknown:
        raise ValueError(f"unknown stem(s) {', '.join(unknown)}: the model's sources are {', '.join(sources)}")
    if two_stems is not None:
        return [two_stems, f"no_{two_stems}"]
    return [name for name in sources if not wanted or name in wanted]


def select_stems(
    estimates: np.ndarray,
    sources: Sequence[str],
    stems: Sequence[str] | None = None,
    two_stems: str | None = None,
) -> dict[str, np.ndarray]:
    """``{stem name: (nb_channels, nb_timesteps)}`` to write, from ``estimates`` ``(nb_sources, ...)`` whose
    sources are named ``sources`` (errors as :func:`stem_names`)."""
    sources = list(sources)
    names = stem_names(sources, stems, two_stems)
    if two_stems is not None:
        k = sources.index(two_stems)
        rest = np.sum([estimates[j] for j in range(len(sources)) if j != k], axis=0, dtype=estimates.dtype)
        return {names[0]: estimates[k], names[1]: rest}
    return {name: estimates[sources.index(name)] for name in names}


def prevent_clip(stem: np.ndarray, mode: str) -> np.ndarray:
    """One stem ``(nb_channels, nb_timesteps)`` made ready for a file (see the module docstring)."""
    if mode == "rescale":
        peak = float(np.max(np.abs(stem))) if stem.size else 0.0
        return stem / max(1.01 * peak, 1.0)
    if mode == "clamp":
        return np.clip(stem, -1.0, 1.0)
    if mode == "none":
        return stem
    raise ValueError(f"clip mode must be one of {', '.join(CLIP_MODES)}, got {mode!r}")


def track_name(path: Path) -> str:
    """The input's name without its last suffix (``song.mp3`` -> ``song``; ``x.stem.mp4`` -> ``x.stem``)."""
    return path.name.rsplit(".", 1)[0] if "." in path.name[1:] else path.name


def output_path(outdir: Path, model_name: str, template: str, track: Path, stem: str, ext: str) -> Path:
    """``outdir / model_name / template.format(...)``.

    Raises:
        ValueError: a template field other than ``{track}``, ``{trackext}``, ``{stem}``, ``{ext}``, or a result that
            leaves the model's folder (an absolute path or ``..``).
    """
    trackext = track.suffix[1:] if track.suffix else ""
    try:
        relative = template.format(track=track_name(track), trackext=trackext, stem=stem, ext=ext)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"--filename {template!r}: {e}; the fields are {{track}}, {{trackext}}, {{stem}}, {{ext}}"
        ) from None
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"--filename {template!r} gives {relative!r}, which must stay inside {outdir / model_name}")
    return outdir / model_name / rel
