"""Markdown pieces of the book: code blocks that say where they come from, content tabs, admonitions, tables.

The syntax is that of the extensions ``mkdocs.yml`` enables: ``pymdownx.superfences`` + ``pymdownx.highlight``
(a fence's ``title`` and ``linenums``, so a block's line numbers are the file's), ``pymdownx.tabbed`` (alternate
style: ``=== "PyTorch"``) and ``admonition``.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

from .extract import Snippet

__all__ = ["admonition", "code_block", "escape_cell", "placeholder", "table", "tabs"]


def _fence(code: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def code_block(snippet: Snippet, label: str = "") -> str:
    """A Python block titled ``label · path:start-end``, numbered from the file's first line of the snippet."""
    fence = _fence(snippet.code)
    title = f"{label} · {snippet.where}" if label else snippet.where
    title = title.replace('"', "'")
    body = snippet.code.rstrip("\n")
    return f'{fence}python title="{title}" linenums="{snippet.start}"\n{body}\n{fence}\n'


def _indent(text: str) -> str:
    return textwrap.indent(text, "    ", lambda line: bool(line.strip()))


def tabs(items: Sequence[tuple[str, str]]) -> str:
    """Content tabs: ``(title, Markdown body)`` each."""
    out = []
    for title, body in items:
        out.append(f'=== "{title}"\n\n{_indent(body.rstrip())}\n')
    return "\n".join(out) + "\n"


def admonition(kind: str, title: str, body: str, collapsible: bool = False, open_: bool = False) -> str:
    """``!!! kind "title"`` (``???`` collapsed, ``???+`` collapsible and open) around ``body``."""
    marker = ("???+" if open_ else "???") if collapsible else "!!!"
    title = title.replace('"', "'")
    return f'{marker} {kind} "{title}"\n\n{_indent(body.rstrip())}\n\n'


def placeholder(problem: str) -> str:
    """What a missing target renders as with ``UNMIX_BOOK_ALLOW_MISSING=1`` (never in the strict build)."""
    return admonition(
        "danger",
        "Not in the code yet",
        f"`{escape_cell(problem)}`\n\n(development build: `UNMIX_BOOK_ALLOW_MISSING=1`; the strict build fails here)",
    )


def escape_cell(text: str) -> str:
    """Text safe inside a Markdown table cell (and inline code)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (cells are taken as Markdown)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
