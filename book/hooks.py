"""The MkDocs hook of the book (``hooks: [book/hooks.py]`` in ``mkdocs.yml``).

- ``on_config``: the navigation gains the port guides (``docs/*.md``) and the API reference (:mod:`book.api`).
- ``on_files``: checks that every lesson of ``core_spec.public_api.LESSONS`` can be extracted (spec and the four
  ports) and sits on its page; adds ``docs/**`` (the port guides and their images), the API pages and the parity
  heatmap.
- ``on_page_markdown``: expands the ``%%`` directives of the book's pages (:mod:`book.directives`).

A missing target fails the build (``PluginError``) with one line per problem naming the file, the port, the
module and the name. ``UNMIX_BOOK_ALLOW_MISSING=1`` (development, e.g. while the ports are being reshaped) renders
a visible placeholder instead and logs a warning, so ``mkdocs build --strict`` still fails.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the hook is loaded by path; the book package lives beside it
    sys.path.insert(0, str(ROOT))

from mkdocs.exceptions import PluginError  # noqa: E402
from mkdocs.structure.files import File, Files  # noqa: E402

from book import api, mapping, mapping_page, parity  # noqa: E402
from book.directives import Expander, placement_problems, read_pages  # noqa: E402
from book.extract import MissingTarget, Sources, lesson_problems  # noqa: E402

ALLOW_MISSING = "UNMIX_BOOK_ALLOW_MISSING"
"""Environment variable: ``1`` renders missing targets as placeholders (development builds only)."""

log = logging.getLogger("mkdocs.hooks.book")

_state: dict[str, Any] = {}


def _fail(problems: list[str]) -> None:
    if _state["allow"]:
        reported = _state.setdefault("reported", set())
        for problem in problems:
            if problem not in reported:
                log.warning("book (%s=1): %s", ALLOW_MISSING, problem)
            reported.add(problem)
        return
    raise PluginError(
        f"the book cannot be built, {len(problems)} problem(s) (a development build with {ALLOW_MISSING}=1 "
        "shows placeholders instead):\n  " + "\n  ".join(problems)
    )


def on_config(config: Any) -> Any:
    root = Path(config.config_file_path).resolve().parent
    sources = Sources(root)
    allow = os.environ.get(ALLOW_MISSING, "") not in ("", "0")
    _state.clear()
    _state.update(root=root, sources=sources, allow=allow, tables=None)
    guides = [f"docs/{p.name}" for p in sorted((root / "docs").glob("*.md"))]  # titled by their headings
    config.nav = [*(config.nav or []), {"Port guides": guides}, {"API reference": api.nav(root)}]
    return config


def _mapping(model: str) -> str:
    if _state["tables"] is None:
        _state["tables"] = mapping.tables(_state["root"], say=log.info)
    found, errors = _state["tables"]
    try:
        return mapping_page.markdown(model, found, errors, _state["allow"])
    except LookupError as e:
        raise MissingTarget(str(e)) from None


def _parity() -> str:
    return _state["parity"]


def on_files(files: Files, config: Any) -> Files:
    root: Path = _state["root"]
    docs_dir = Path(config.docs_dir)
    pages = read_pages(docs_dir)
    problems = lesson_problems(_state["sources"]) + placement_problems(pages)
    if problems:
        _fail(problems)
    for path in sorted((root / "docs").rglob("*")):
        if path.is_file():
            files.append(File(str(path.relative_to(root)), str(root), config.site_dir, config.use_directory_urls))
    for uri, text in api.pages(root).items():
        files.append(File.generated(config, uri, content=text))
    rows, report_files = parity.read_rows(root)
    found = parity.groups(rows)
    png = parity.heatmap_png(found, root / mapping.CACHE) if found else None
    if png is not None:
        files.append(File.generated(config, parity.HEATMAP, content=png))
    _state["parity"] = parity.markdown(found, report_files, heatmap=png is not None)
    _state["expander"] = Expander(_state["sources"], _state["allow"], mapping=_mapping, parity=_parity)
    _state["docs_dir"] = docs_dir.resolve()
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    src = page.file.abs_src_path
    if src is None or not Path(src).resolve().is_relative_to(_state["docs_dir"]):
        return markdown  # the port guides and the generated API pages have no directives
    expander: Expander = _state["expander"]
    before = len(expander.problems)
    out = expander.expand(markdown, page.file.src_uri)
    if len(expander.problems) > before:
        _fail(expander.problems[before:])
    return out
