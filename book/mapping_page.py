"""The Markdown of the parameter-mapping tables (:mod:`book.mapping` reads them off the ports)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core_spec.public_api import PORTS

from .catalog import PORT_LABELS
from .render import admonition, escape_cell, placeholder, table, tabs

__all__ = ["markdown"]

_INTRO = {
    "umxhq": (
        "One target's network of the `umxhq` preset (`core_spec.configs.umx_preset('umxhq').model`). A separator holds "
        "four: every canonical name gains the prefix `target_models.<target>.`, every framework name the port's "
        "separator prefix."
    ),
    "demucs": "Demucs v2 as released (`core_spec.configs.demucs_preset('demucs')`, demucs 2.0.3).",
    "htdemucs": (
        "HTDemucs as released (`core_spec.configs.htdemucs_preset('htdemucs')`, demucs 4.1.0: four sources, "
        "`bottom_channels` 512). `htdemucs_6s` has the same names except the four channel samplers (its "
        "`bottom_channels` is 0: the transformer is 384 wide), and its outermost decoders give six sources; a bag "
        "(`htdemucs_ft`) prefixes every canonical name with `models.<i>.`, every framework name with the port's "
        "`models.<i>.`."
    ),
}


def _shape(shape: Any) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def port_table(data: Mapping[str, Any], port: str) -> str:
    """One port's table of one model (``data``: ``probe(port)["models"][model]``); a note for a model the port
    does not have yet."""
    if "absent" in data:
        label = PORT_LABELS[port]
        return admonition(
            "info", f"{label}: not yet", f"The {label} port does not have this model yet: {data['absent']}."
        )
    rows = []
    for row in data["rows"]:
        first = True
        for target in row["targets"] or [{"variable": "—", "shape": (), "where": "", "transform": "not loaded"}]:
            rows.append(
                (
                    f"`{row['canonical']}`" if first else "",
                    _shape(row["shape"]) if first else "",
                    f"`{escape_cell(target['variable'])}`",
                    _shape(target["shape"]),
                    f"`{target['where']}`" if target["where"] else "whole",
                    escape_cell(target["transform"]),
                )
            )
            first = False
    head = ("canonical (upstream)", "shape", f"{PORT_LABELS[port]} variable", "shape", "slice", "transform")
    out = table(head, rows)
    if data["unfed"]:
        names = ", ".join(f"`{escape_cell(v)}`" for v in data["unfed"])
        out += f"\nFramework variables that no canonical tensor feeds: {names}.\n"
    return out


def markdown(model: str, found: Mapping[str, Mapping[str, Any]], errors: Mapping[str, str], allow: bool) -> str:
    """The tables of ``model``, one tab per port; a port whose probe failed shows the error (``allow``) or raises."""
    items = []
    for port in PORTS:
        if port in errors:
            if not allow:
                raise LookupError(f"mapping table of {port}: {errors[port]}")
            items.append((PORT_LABELS[port], placeholder(f"{port}: {errors[port]}")))
            continue
        data = found[port]["models"][model]
        items.append((PORT_LABELS[port], port_table(data, port)))
    return _INTRO.get(model, "") + "\n\n" + tabs(items)
