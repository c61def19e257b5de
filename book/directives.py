"""The directives of the book's pages: one line ``%% <name> <arguments>`` each, replaced by generated Markdown.

=====================================  ===========================================================================
``%% lesson transforms.stft``           one lesson of ``LESSONS`` (:func:`book.catalog.lesson_key`): the spec's
                                        docstring (its shapes) and the shapes its comments state at each step,
                                        the NumPy reference code, then one tab per port with that port's code
``%% port layers.glu umx_tf``           one port's version of a lesson, linked to the lesson's page
``%% see layers.glu``                   a link to a lesson's block on its page
``%% spec shapes.valid_length``         a spec object's code alone (a dotted path below ``core_spec``)
``%% source umx_tf/layers.py GLU``      any definition of any file (a function, class, ``Class.method`` or
                                        constant), titled with its file and lines
``%% ports SPEC torch=A jax=B,C``       the spec object ``SPEC`` (as for ``spec``), then one tab per port with
                                        the definitions named ``PORT=NAME[,NAME...]`` (``PORT``: ``torch``,
                                        ``tensorflow``, ``jax`` or ``nnabla``; a name as for ``source``, or a
                                        ``builtin:`` layer) in the port's module of the spec's module name
                                        (``reference.htdemucs_spec.spec``: ``umx_jax/htdemucs_spec.py``); a
                                        port without that module says so, a port that has it must be named.
                                        When ``SPEC`` is the spec object of a lesson of that module, the line
                                        places the lesson (as ``lesson`` does) and each tab must show the
                                        lesson's target (or its class)
``%% shared demucs``                    the neutral names of ``SHARED[module]``: where each is defined, which
                                        port modules import it
``%% constants weights``                ``PORT_CONSTANTS[module]``: each port's own value, one tab per port
``%% overview``                         the whole ``LESSONS`` table: module, step, spec object, the four targets
``%% mapping umxhq``                    the parameter-mapping tables of a model (:mod:`book.mapping`)
``%% parity``                           the parity tables and heatmap of the last ``make test`` (:mod:`book.parity`)
=====================================  ===========================================================================

A name that is not defined is a :class:`~book.extract.MissingTarget`; the :class:`Expander` collects them (the
strict build fails with all of them), or, with ``allow_missing``, renders a visible placeholder instead.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from book.source_index import spec_location
from core_spec.public_api import BUILTIN, LESSONS, PORT_CONSTANTS, PORTS, SHARED, Lesson

from .catalog import PORT_LABELS, builtin_link, component_of, lesson_key, lessons
from .extract import MissingTarget, Snippet, Sources, docstring_markdown, port_file
from .render import admonition, code_block, escape_cell, placeholder, table, tabs

__all__ = ["DIRECTIVE", "Expander", "anchor", "directives", "page_link"]

DIRECTIVE = re.compile(r"^%%[ \t]+([a-z][a-z-]*)[ \t]*(.*?)[ \t]*$", re.M)
"""A directive line: ``%% name arguments``."""


def directives(markdown: str) -> Iterator[tuple[str, list[str]]]:
    """``(name, arguments)`` of every directive line of a page, in order (fenced code is not skipped: a page does
    not quote directives)."""
    for match in DIRECTIVE.finditer(markdown):
        yield match.group(1), match.group(2).split()


def anchor(key: str) -> str:
    """The HTML id of a lesson's block: ``lesson-transforms-stft``."""
    return "lesson-" + re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-").lower()


def page_link(key: str, from_page: str) -> str:
    """A relative link from page ``from_page`` (``traps.md``) to a lesson's block on its component page."""
    lesson = lessons()[key][2]
    component = component_of(lesson.page)
    if component is None:
        raise MissingTarget(f"lesson {key}: its page {lesson.page!r} is on no page of book.catalog.COMPONENTS")
    depth = from_page.count("/")
    return "../" * depth + f"{component.file}#{anchor(key)}"


@lru_cache(maxsize=64)
def _imports(source: str) -> frozenset[str]:
    """The names a module imports (``from x import name``, ``import x``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return frozenset(names)


@lru_cache(maxsize=64)
def _calls(source: str, name: str) -> tuple[int, ...]:
    """The lines where ``source`` calls ``name`` (``name(...)`` or ``x.name(...)``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ()
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == name) or (
                isinstance(func, ast.Attribute) and func.attr == name
            ):
                lines.add(node.lineno)
    return tuple(sorted(lines))


@dataclass
class Expander:
    """Expands the directives of the pages of one build.

    Attributes:
        sources: the checkout's files.
        allow_missing: render a placeholder for a missing name instead of recording a problem.
        mapping: ``model -> Markdown`` of its mapping tables (:mod:`book.mapping`), called on demand.
        parity: the parity section's Markdown (:mod:`book.parity`), called on demand.
        problems: every missing name met so far, one line each.
        shown: port -> the names of that port whose definition (or import of a shared name) a page shows.
        quoted: ``(file, top-level name)`` of every definition of a port file that ``ports`` or ``source``
            shows (a method counts for its class).
    """

    sources: Sources
    allow_missing: bool = False
    mapping: Callable[[str], str] | None = None
    parity: Callable[[], str] | None = None
    problems: list[str] = field(default_factory=list)
    shown: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PORTS})
    quoted: set[tuple[str, str]] = field(default_factory=set)

    def expand(self, markdown: str, page: str) -> str:
        """``markdown`` of page ``page`` (path under ``book/pages``) with every directive replaced."""

        def replace(match: re.Match[str]) -> str:
            name, args = match.group(1), match.group(2).split()
            handler = getattr(self, "_" + name.replace("-", "_"), None)
            if handler is None:
                return self._missing(MissingTarget(f"book/pages/{page}: unknown directive '%% {name}'"))
            try:
                inspect.signature(handler).bind(page, *args)
            except TypeError as e:
                return self._missing(MissingTarget(f"book/pages/{page}: '%% {name} {' '.join(args)}': {e}"))
            try:
                return handler(page, *args)
            except MissingTarget as e:
                return self._missing(e)

        return DIRECTIVE.sub(replace, markdown)

    # --- helpers ----------------------------------------------------------------------------------------------

    def _missing(self, error: MissingTarget) -> str:
        self.problems.append(str(error))
        return placeholder(str(error))

    def _try(self, make: Callable[[], Snippet | None]) -> Snippet | str | None:
        try:
            return make()
        except MissingTarget as e:
            return self._missing(e)

    def _show(self, port: str, target: str) -> None:
        self.shown[port].update({target, target.split(".", 1)[0]})

    def _port_tab(self, module: str, lesson: Lesson, port: str) -> str:
        target = lesson.ports[port]
        if target.startswith(BUILTIN):
            return self._builtin(port, target[len(BUILTIN) :])
        got = self._try(lambda: self.sources.lesson_port(module, lesson, port))
        if isinstance(got, str):
            return got
        assert got is not None
        self._show(port, target)
        self.quoted.add((port_file(port, module), target.split(".", 1)[0]))
        return code_block(got, target)

    def _builtin(self, port: str, layer: str) -> str:
        short = layer.rsplit(".", 1)[-1]
        uses = []
        for file in sorted((self.sources.root / port).glob("*.py")):
            path = f"{port}/{file.name}"
            uses += [f"`{path}:{line}`" for line in _calls(self.sources.text(path) or "", short)]
        where = ""
        if uses:
            more = f" and {len(uses) - 4} more" if len(uses) > 4 else ""
            where = f" The port calls it at {', '.join(uses[:4])}{more}."
        body = (
            f"{PORT_LABELS[port]} uses the framework's own layer [`{layer}`]({builtin_link(layer)}): the port "
            f"writes nothing for this step.{where}"
        )
        return admonition("note", f"built in: {layer}", body)

    def _shapes(self, snippet: Snippet) -> str:
        parts = []
        doc = snippet.docstring
        if doc:
            parts.append(docstring_markdown(doc))
        comments = snippet.shape_comments()
        if comments:
            rows = [(f"`{escape_cell(code)}`", f"`{escape_cell(comment)}`") for code, comment in comments]
            parts.append("**Shapes at each step** (the reference's own comments)\n\n" + table(("step", "shape"), rows))
        if not parts:
            return ""
        return admonition("abstract", f"{snippet.name}: shapes and layout (the spec's docstring)", "\n\n".join(parts))

    # --- directives -------------------------------------------------------------------------------------------

    def _lesson(self, page: str, key: str) -> str:
        module, row, lesson = self._lesson_of(page, key)
        out = [f'<span id="{anchor(key)}"></span>\n']
        spec = self._try(lambda: self.sources.lesson_spec(module, lesson))
        if isinstance(spec, str):
            out.append(spec)
        elif spec is None:
            out.append(
                admonition(
                    "info",
                    f"{key}: no NumPy reference",
                    "This step is framework code (weights, model building, the trainer): the spec has no "
                    f"counterpart, the four ports agree on its name and place (lesson {row} of "
                    f"`LESSONS[{module!r}]`).",
                )
            )
        else:
            out.append(self._shapes(spec))
            out.append(code_block(spec, f"NumPy reference: {spec.name}"))
        out.append(tabs([(PORT_LABELS[port], self._port_tab(module, lesson, port)) for port in PORTS]))
        return "\n".join(out)

    def _port(self, page: str, key: str, port: str) -> str:
        module, _, lesson = self._lesson_of(page, key)
        if port not in PORTS:
            raise MissingTarget(f"book/pages/{page}: '%% port {key} {port}': {port} is not a port of {list(PORTS)}")
        see = f"[{key}, all four ports]({page_link(key, page)})"
        return f"{PORT_LABELS[port]}, lesson {see}:\n\n" + self._port_tab(module, lesson, port)

    def _see(self, page: str, key: str) -> str:
        self._lesson_of(page, key)
        return f"See the lesson [{key}]({page_link(key, page)}) in the four ports.\n"

    def _lesson_of(self, page: str, key: str) -> tuple[str, int, Lesson]:
        table_ = lessons()
        if key not in table_:
            raise MissingTarget(
                f"book/pages/{page}: {key!r} names no lesson of core_spec.public_api.LESSONS "
                f"(known: {', '.join(table_)})"
            )
        return table_[key]

    def _spec(self, page: str, dotted: str) -> str:
        got = self._try(lambda: self.sources.spec(dotted))
        if isinstance(got, str):
            return got
        assert got is not None
        return code_block(got, f"NumPy reference: {got.name}")

    def _source(self, page: str, path: str, target: str) -> str:
        got = self._try(lambda: self.sources.snippet(path, target, f" (quoted on book/pages/{page})"))
        if isinstance(got, str):
            return got
        assert got is not None
        port = path.split("/", 1)[0]
        if port in PORTS:
            self._show(port, target)
            self.quoted.add((path, target.split(".", 1)[0]))
        return code_block(got, target)

    def _ports(self, page: str, spec: str, *targets: str) -> str:
        line = f"book/pages/{page}: '%% ports {' '.join((spec, *targets))}'"
        module = spec.rpartition(".")[0].rpartition(".")[2]
        if not module:
            raise MissingTarget(f"{line}: {spec!r} is not a dotted path below core_spec")
        by_key = {key: port for port, key in PORTS.items()}
        given: dict[str, list[str]] = {}
        for arg in targets:
            key, _, names = arg.partition("=")
            if key not in by_key or not names or by_key[key] in given:
                raise MissingTarget(
                    f"{line}: {arg!r} is not PORT=NAME[,NAME...] with PORT one of {', '.join(by_key)}, once each"
                )
            given[by_key[key]] = names.split(",")
        found = _ports_lesson(spec, module)
        items = []
        for port in PORTS:
            path = port_file(port, module)
            if port not in given:
                if self.sources.text(path) is not None:
                    body = self._missing(
                        MissingTarget(f"{line}: {path} exists, so the page must name its version ({PORTS[port]}=NAME)")
                    )
                else:
                    body = admonition(
                        "info",
                        f"{PORT_LABELS[port]}: not yet",
                        f"The {PORT_LABELS[port]} port has no `{module}` module yet (`{path}`).",
                    )
                items.append((PORT_LABELS[port], body))
                continue
            blocks = []
            before = len(self.problems)
            for target in given[port]:
                if target.startswith(BUILTIN):
                    try:
                        blocks.append(self._builtin(port, target[len(BUILTIN) :]))
                    except KeyError as e:  # no documentation address for the layer (book.catalog.BUILTIN_DOCS)
                        blocks.append(self._missing(MissingTarget(f"{line}: {e.args[0]}")))
                        continue
                    self._show(port, target.rsplit(".", 1)[-1])  # the layer, by the name a port re-exports it
                    continue
                try:
                    got = self.sources.snippet(path, target, f" (quoted on book/pages/{page})")
                except MissingTarget as e:
                    blocks.append(self._missing(e))
                    continue
                self._show(port, target)
                self.quoted.add((path, target.split(".", 1)[0]))
                blocks.append(code_block(got, target))
            lesson_target = found[1].ports[port] if found is not None else None
            if lesson_target and len(self.problems) == before and not _shows(given[port], lesson_target):
                blocks.append(
                    self._missing(
                        MissingTarget(
                            f"{line}: the {PORTS[port]} tab must show {lesson_target}, the target of lesson "
                            f"{found[0]} (core_spec.public_api.LESSONS[{module!r}])"
                        )
                    )
                )
            items.append((PORT_LABELS[port], "\n".join(blocks)))
        head = f'<span id="{anchor(found[0])}"></span>\n\n' if found is not None else ""
        return head + self._spec(page, spec) + "\n" + tabs(items)

    def _shared(self, page: str, module: str) -> str:
        if module not in SHARED:
            raise MissingTarget(f"book/pages/{page}: '%% shared {module}': no such key in core_spec.public_api.SHARED")
        rows = []
        for dotted in SHARED[module]:
            path, name = spec_location(dotted)
            snippet = self._try(lambda path=path, name=name: self.sources.snippet(path, name, f" (SHARED[{module!r}])"))
            if isinstance(snippet, str):
                return snippet
            assert snippet is not None
            cells = [f"`{name}`", f"`{snippet.where}`"]
            for port in PORTS:
                text = self.sources.text(port_file(port, module))
                if text is not None and name in _imports(text):
                    self._show(port, name)
                    cells.append("imported")
                else:
                    cells.append("—")
            rows.append(cells)
        head = ("name", "defined once in", *(f"{PORT_LABELS[p]} `{module}.py`" for p in PORTS))
        return table(head, rows) + "\n(—: that port's module does not use the name.)\n"

    def _constants(self, page: str, module: str) -> str:
        names = PORT_CONSTANTS.get(module, ())
        if not names:
            raise MissingTarget(f"book/pages/{page}: '%% constants {module}': no PORT_CONSTANTS for {module}")
        items = []
        for port in PORTS:
            blocks = []
            for name in names:
                got = self._try(lambda name=name, port=port: self.sources.snippet(port_file(port, module), name))
                if isinstance(got, Snippet):
                    self._show(port, name)
                    blocks.append(code_block(got, name))
                else:
                    blocks.append(str(got))
            items.append((PORT_LABELS[port], "\n".join(blocks)))
        return tabs(items)

    def _overview(self, page: str) -> str:
        rows = []
        for module, steps in LESSONS.items():
            for row, lesson in enumerate(steps, start=1):
                key = lesson_key(module, lesson)
                spec = f"`{lesson.spec}`" if lesson.spec else "—"
                cells = [f"`{module}`", f"[{row}]({page_link(key, page)})", spec]
                for port in PORTS:
                    target = lesson.ports[port]
                    cells.append(f"*{target[len(BUILTIN) :]}*" if target.startswith(BUILTIN) else f"`{target}`")
                rows.append(cells)
        return table(("module", "step", "spec (`core_spec.`)", *PORT_LABELS.values()), rows)

    def _mapping(self, page: str, model: str) -> str:
        if self.mapping is None:
            raise MissingTarget(f"book/pages/{page}: '%% mapping {model}' needs the mapping tables")
        return self.mapping(model)

    def _parity(self, page: str) -> str:
        if self.parity is None:
            raise MissingTarget(f"book/pages/{page}: '%% parity' needs the parity report")
        return self.parity()


def _ports_lesson(spec: str, module: str) -> tuple[str, Lesson] | None:
    """The lesson (its key and row) of module ``module`` whose spec object is ``spec``, if there is one: a
    ``%% ports`` line on that spec object places it."""
    for key, (mod, _, lesson) in lessons().items():
        if mod == module and lesson.spec == spec:
            return key, lesson
    return None


def _shows(names: list[str], target: str) -> bool:
    """Whether a ``%% ports`` tab naming ``names`` shows ``target`` (itself, or the class of a ``Class.method``)."""
    return target in names or (target.split(".", 1)[0] in names and not target.startswith(BUILTIN))


def placement_problems(pages: dict[str, str]) -> list[str]:
    """Every lesson must appear on the page that hosts its ``Lesson.page`` (``pages``: file under ``book/pages`` ->
    its Markdown), by a ``%% lesson`` line or a ``%% ports`` line on its spec object; every ``Lesson.page`` needs a
    host page."""
    placed: dict[str, set[str]] = {}
    for file, text in pages.items():
        for name, args in directives(text):
            if name == "lesson" and args:
                placed.setdefault(args[0], set()).add(file)
            elif name == "ports" and args:
                module = args[0].rpartition(".")[0].rpartition(".")[2]
                found = _ports_lesson(args[0], module)
                if found is not None:
                    placed.setdefault(found[0], set()).add(file)
    problems = []
    for key, (module, row, lesson) in lessons().items():
        component = component_of(lesson.page)
        if component is None:
            problems.append(
                f"lesson {key} (row {row} of LESSONS[{module!r}]): its page {lesson.page!r} is hosted by no page of "
                "book.catalog.COMPONENTS"
            )
        elif component.file not in placed.get(key, set()):
            problems.append(f"lesson {key} is not on its page: add '%% lesson {key}' to book/pages/{component.file}")
    return problems


def read_pages(docs_dir: Path) -> dict[str, str]:
    """Every Markdown page under ``docs_dir``, by its path there."""
    return {str(p.relative_to(docs_dir)): p.read_text() for p in sorted(docs_dir.rglob("*.md"))}
