"""What ``unmix-separate`` writes for a separated track: which stems, under which names, clipped how.

- :func:`select_stems`: all sources, ``--stems a,b`` (a subset, in the model's order), or ``--two-stems a`` with
  demucs 4's ``--other-method``: ``add`` (``a`` and ``no_a``, the sum of all the other sources; the default),
  ``minus`` (``a`` and ``minus_a``, the mixture minus ``a``) or ``none`` (``a`` alone);
- :func:`prevent_clip`: ``--clip-mode rescale`` (demucs ``separate.py``: each stem divided by
  ``max(1.01 * peak, 1)``, so nothing changes unless it would clip), ``clamp`` (to ``[-bound, bound]``: 1 for
  Open-Unmix and Demucs v2, 0.99 for HTDemucs as demucs 4.1.0's ``audio.prevent_clip``) or ``none`` (kept as
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
    "OTHER_METHODS",
    "output_path",
    "prevent_clip",
    "select_stems",
    "stem_names",
    "track_name",
]

CLIP_MODES = ("rescale", "clamp", "none")
OTHER_METHODS = ("add", "minus", "none")  # demucs 4.1.0's --other-method
DEFAULT_FILENAME = "{track}/{stem}.{ext}"


def stem_names(
    sources: Sequence[str],
    stems: Sequence[str] | None = None,
    two_stems: str | None = None,
    other_method: str = "add",
) -> list[str]:
    """The names :func:`select_stems` gives, in order, without the audio (to check outputs before separating).

    Raises:
        ValueError: a name that is not one of ``sources``, both ``stems`` and ``two_stems``, or an unknown
            ``other_method``.
    """
    if stems and two_stems is not None:
        raise ValueError("--stems and --two-stems exclude each other")
    if other_method not in OTHER_METHODS:
        raise ValueError(f"--other-method must be one of {', '.join(OTHER_METHODS)}, got {other_method!r}")
    wanted = [two_stems] if two_stems is not None else list(stems or [])
    unknown = [s for s in wanted if s not in sources]
    if unknown:
        raise ValueError(f"unknown stem(s) {', '.join(unknown)}: the model's sources are {', '.join(sources)}")
    if two_stems is not None:
        other = {"add": [f"no_{two_stems}"], "minus": [f"minus_{two_stems}"], "none": []}[other_method]
        return [two_stems, *other]
    return [name for name in sources if not wanted or name in wanted]


def select_stems(
    estimates: np.ndarray,
    sources: Sequence[str],
    stems: Sequence[str] | None = None,
    two_stems: str | None = None,
    other_method: str = "add",
    mixture: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """``{stem name: (nb_channels, nb_timesteps)}`` to write, from ``estimates`` ``(nb_sources, ...)`` whose
    sources are named ``sources`` (errors as :func:`stem_names`).

    ``mixture`` ``(nb_channels, nb_timesteps)``: the audio the model separated (after resampling and up-mixing, as
    demucs 4's ``origin``), needed by ``other_method="minus"`` only.
    """
    sources = list(sources)
    names = stem_names(sources, stems, two_stems, other_method)
    if two_stems is not None:
        k = sources.index(two_stems)
        chosen = {names[0]: estimates[k]}
        if other_method == "add":
            rest = np.sum([estimates[j] for j in range(len(sources)) if j != k], axis=0, dtype=estimates.dtype)
            chosen[names[1]] = rest
        elif other_method == "minus":
            if mixture is None:
                raise ValueError("--other-method minus needs the mixture")
            chosen[names[1]] = np.asarray(mixture, dtype=estimates.dtype) - estimates[k]
        return chosen
    return {name: estimates[sources.index(name)] for name in names}


def prevent_clip(stem: np.ndarray, mode: str, clamp_bound: float = 1.0) -> np.ndarray:
    """One stem ``(nb_channels, nb_timesteps)`` made ready for a file (see the module docstring); ``clamp_bound``:
    the bound of ``mode="clamp"`` (demucs 4.1.0 clamps to 0.99)."""
    if mode == "rescale":
        peak = float(np.max(np.abs(stem))) if stem.size else 0.0
        return stem / max(1.01 * peak, 1.0)
    if mode == "clamp":
        return np.clip(stem, -clamp_bound, clamp_bound)
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
