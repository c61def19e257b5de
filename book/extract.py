"""The code the book shows, extracted from the source files by name at build time (never pasted).

Every block comes from :func:`book.source_index.source_of` (stdlib ``ast``, nothing imported): a function, a
class, a ``Class.method`` or an UPPER_CASE constant, with the file and lines it spans. A target that is not
defined raises :class:`MissingTarget`, whose message names the port, the module and the name, so a rename in a
port fails the build until ``core_spec.public_api.LESSONS`` (and the page) follow.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from book.source_index import locate, source_of, spec_location
from core_spec.public_api import BUILTIN, LESSONS, PORTS, Lesson

from . import ROOT
from .catalog import component_of, lesson_key

__all__ = ["MissingTarget", "Snippet", "Sources", "lesson_problems", "port_file"]


class MissingTarget(LookupError):
    """A name the book extracts is not defined where the tables say (the message says which and where)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Snippet:
    """The exact text of one definition.

    Attributes:
        path: the file, relative to the repository root (``umx_jax/filtering.py``).
        name: the target (``wiener``, ``OpenUnmix.forward``, ``FORMAT``).
        start: its first line (decorators included), 1-based.
        end: its last line.
        code: the text, a method dedented to column 0.
    """

    path: str
    name: str
    start: int
    end: int
    code: str

    @property
    def where(self) -> str:
        """``umx_jax/filtering.py:204-259``."""
        return f"{self.path}:{self.start}-{self.end}"

    @property
    def docstring(self) -> str | None:
        """The definition's docstring (``None`` for a constant or where there is none)."""
        try:
            node = ast.parse(self.code).body[0]
        except (SyntaxError, IndexError):
            return None
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return ast.get_docstring(node)
        return None

    def shape_comments(self) -> list[tuple[str, str]]:
        """``(code, comment)`` for every line whose comment starts with a shape, ``# (T, B, C, F)``: the shapes at
        each step, as the code states them."""
        out = []
        for line in self.code.splitlines():
            code, sep, comment = line.partition("  # ")
            comment = comment.strip()
            if sep and code.strip() and _SHAPE.search(comment):
                out.append((code.strip(), comment))
        return out


_SHAPE = re.compile(r"\((?:[^()]*,[^()]*|[A-Za-z_][\w*]*)\)")
"""A shape or layout in a comment: ``(T, B, C, F)``, ``(T*B, 2H)``, ``(D,)``."""


def port_file(port: str, module: str) -> str:
    """``umx_jax/filtering.py``."""
    return f"{port}/{module}.py"


class Sources:
    """The files of one checkout (``root``), read once each."""

    def __init__(self, root: str | Path = ROOT) -> None:
        self.root = Path(root)
        self._texts: dict[str, str | None] = {}

    def text(self, path: str) -> str | None:
        """The file's text, ``None`` if it does not exist."""
        if path not in self._texts:
            file = self.root / path
            self._texts[path] = file.read_text() if file.is_file() else None
        return self._texts[path]

    def snippet(self, path: str, target: str, context: str = "") -> Snippet:
        """``target`` (``"name"``, ``"Class.method"``, ``"CONSTANT"``) in ``path``.

        Raises:
            MissingTarget: the file or the name does not exist (``context`` is added to the message).
        """
        text = self.text(path)
        if text is None:
            raise MissingTarget(f"{path}: missing file, so {target} cannot be shown{context}")
        found = locate(text, target)
        if found is None:
            if "." in target and locate(text, target.split(".", 1)[0]) is not None:
                reason = f"class {target.split('.', 1)[0]} has no method {target.split('.', 1)[1]}"
            else:
                reason = f"{target} is not defined"
            raise MissingTarget(f"{path}: {reason}{context}")
        return Snippet(path, target, found.lineno, found.end_lineno, source_of(text, target))

    def spec(self, spec: str, context: str = "") -> Snippet:
        """A spec object by its dotted path below ``core_spec`` (``"reference.transforms.stft"``)."""
        path, name = spec_location(spec)
        return self.snippet(path, name, context or f" (spec object core_spec.{spec})")

    def lesson_spec(self, module: str, lesson: Lesson) -> Snippet | None:
        """The NumPy reference of a lesson (``None`` for a lesson without one)."""
        if lesson.spec is None:
            return None
        return self.spec(lesson.spec, _context(module, lesson, "spec"))

    def lesson_port(self, module: str, lesson: Lesson, port: str) -> Snippet | None:
        """A port's version of a lesson (``None`` for a ``builtin:`` target)."""
        target = lesson.ports[port]
        if target.startswith(BUILTIN):
            return None
        return self.snippet(port_file(port, module), target, _context(module, lesson, port))


def _context(module: str, lesson: Lesson, port: str) -> str:
    component = component_of(lesson.page)
    page = f"book/pages/{component.file}" if component else f"page {lesson.page!r}"
    who = "the spec" if port == "spec" else f"port {port}"
    name = lesson.spec if port == "spec" else lesson.ports[port]
    return (
        f" ({who}, module {module}, name {name}: lesson {lesson_key(module, lesson)} of "
        f"core_spec.public_api.LESSONS[{module!r}], shown on {page})"
    )


def lesson_problems(sources: Sources) -> list[str]:
    """One line per lesson target (spec or port) the book cannot extract, over all of ``LESSONS``."""
    problems = []
    for module, rows in LESSONS.items():
        for lesson in rows:
            try:
                sources.lesson_spec(module, lesson)
            except MissingTarget as e:
                problems.append(str(e))
            for port in PORTS:
                try:
                    sources.lesson_port(module, lesson, port)
                except MissingTarget as e:
                    problems.append(str(e))
    return problems


_SECTION = re.compile(r"^(Args|Arguments|Returns|Raises|Attributes|Yields|Examples?|Notes?):\s*$")
_NAMED = ("Args", "Arguments", "Raises", "Attributes")
_ITEM = re.compile(r"^(\*{0,2}[A-Za-z_][\w.]*(?:, \*{0,2}[A-Za-z_][\w.]*)*):\s+(.*)$")


def docstring_markdown(text: str) -> str:
    """A Google-style docstring as Markdown: Sphinx roles (``:func:`x```) become code, each section a bold label
    with a bullet per entry (``name``: description), the rest kept (its double backticks are code in Markdown
    too)."""
    text = re.sub(r":(?:func|class|data|mod|attr|meth|obj|exc):`~?([^`]+)`", r"`\1`", textwrap.dedent(text))
    out: list[str] = []
    section = None
    for line in text.splitlines():
        match = _SECTION.match(line)
        if match:
            section = match.group(1)
            out += ["", f"**{section}**", ""]
            continue
        if section is not None:
            if line.startswith("    "):
                body = line[4:]
                item = _ITEM.match(body) if section in _NAMED and not body.startswith(" ") else None
                if item:
                    out.append(f"- `{item.group(1)}`: {item.group(2)}")
                elif out and out[-1]:
                    out[-1] += " " + body.strip()  # a continuation line
                else:
                    out.append(body.strip())
                continue
            if not line.strip():
                out.append("")
                continue
            section = None
        out.append(line)
    return "\n".join(out).strip()
