"""The port guides (``docs/``) and the book's pages (``book/pages/``) hold no path of the machine that wrote them,
and every relative link and image of theirs points at a file that exists (issue 22).

A guide's link is read as GitHub reads it, relative to the guide's folder, and must stay inside ``docs/``: the book
serves ``docs/**`` at the same paths (``book/hooks.py``), so the link then resolves in both. A book page's link
resolves among the book's pages or, from the checkout's root, among the files of ``docs/`` the book adds.
``make test-docs`` (``mkdocs build --strict``) checks the links of the built book too; this test names the file
and the line without a build, and also covers what the build does not read (``docs/parity/*/parity.json``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from book import ROOT

DOCS = ROOT / "docs"
PAGES = ROOT / "book" / "pages"

MACHINE_PATH = re.compile(
    r"(?<![\w.~-])(?:"
    r"/(?:work|root|Users)/[^\s`'\")\]]+"  # a checkout or a home folder
    r"|/home/[\w.-]+/[^\s`'\")\]]*"
    r"|/tmp/(?:pytest-of-|[\w.-]*?(?:tmp|[-_])[a-z0-9_]{8}(?![\w.-]))[^\s`'\")\]]*"  # tempfile's names
    r")"
)
"""An absolute path that names one machine: a checkout or home folder, or a folder made by :mod:`tempfile` (its
name ends with 8 random characters) or by pytest. Example paths a reader types (``/tmp/tiny``) are not matched."""

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|\bsrc=[\"']([^\"']+)[\"']")
REFERENCE = re.compile(r"^ {0,3}\[(?!\^)[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)


def _guides() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _pages() -> list[Path]:
    return sorted(PAGES.rglob("*.md"))


def _text_files() -> list[Path]:
    return _guides() + _pages() + sorted(DOCS.rglob("*.json"))


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _blank(match: re.Match[str]) -> str:
    """The match with everything but its newlines removed, so line numbers stay."""
    return "\n" * match.group(0).count("\n")


def links(text: str) -> list[tuple[int, str]]:
    """``(line, target)`` of every relative link and image of a Markdown text (inline, reference definitions,
    ``src="..."``), outside code blocks and code spans; no URL (``http:``, ``mailto:``...), no ``#anchor`` alone;
    the target without its anchor and query."""
    text = CODE_SPAN.sub(_blank, FENCE.sub(_blank, text))
    found = [(m.start(), m.group(1) or m.group(2)) for m in LINK.finditer(text)]
    found += [(m.start(), m.group(1)) for m in REFERENCE.finditer(text)]
    out = []
    for start, target in sorted(found):
        target = re.split(r"[#?]", target, maxsplit=1)[0]
        if not target or re.match(r"^[a-zA-Z][\w+.-]*:", target) or target.startswith("//"):
            continue
        out.append((text.count("\n", 0, start) + 1, target))
    return out


def machine_paths(text: str) -> list[tuple[int, str]]:
    """``(line, path)`` of every absolute path in ``text`` that names a machine (:data:`MACHINE_PATH`) or is this
    checkout's own path."""
    here = re.compile(re.escape(str(ROOT)) + r"(?![\w.-])")
    longest: dict[int, str] = {}
    for pattern in (MACHINE_PATH, here):
        for m in pattern.finditer(text):
            longest[m.start()] = max(longest.get(m.start(), ""), m.group(0), key=len)
    return [(text.count("\n", 0, start) + 1, path) for start, path in sorted(longest.items())]


def _guide_link_problem(page: Path, target: str) -> str | None:
    if target.startswith("/"):
        return "an absolute link (GitHub and the book resolve it differently): make it relative to the page"
    resolved = (page.parent / target).resolve()
    if not resolved.is_relative_to(DOCS.resolve()):
        return "points outside docs/, which the book does not serve"
    if not resolved.exists():
        return f"{_name(resolved)} does not exist"
    return None


def _page_link_problem(page: Path, target: str) -> str | None:
    if target.startswith("/"):
        return "an absolute link: make it relative to the page"
    candidates = [(page.parent / target).resolve(), (ROOT / page.parent.relative_to(PAGES) / target).resolve()]
    for resolved in candidates:
        if resolved.is_relative_to(PAGES.resolve()) and resolved.exists():
            return None
        if resolved.is_relative_to(DOCS.resolve()) and resolved.exists():
            return None
    return "neither a book page nor a file of docs/"


def test_the_pages_are_found() -> None:
    assert DOCS / "parity.md" in _guides()
    assert PAGES / "index.md" in _pages()
    assert DOCS / "parity" / "umxhq" / "parity.json" in _text_files()


def test_no_machine_paths() -> None:
    found = [
        f"{_name(path)}:{line}: {hit}"
        for path in _text_files()
        for line, hit in machine_paths(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "absolute paths of a machine (make them relative to the checkout, or <tmp>/...)"


def test_every_relative_link_of_the_guides_exists() -> None:
    problems = [
        f"{_name(page)}:{line}: {target}: {problem}"
        for page in _guides()
        for line, target in links(page.read_text(encoding="utf-8"))
        if (problem := _guide_link_problem(page, target))
    ]
    assert problems == []


def test_every_relative_link_of_the_book_pages_exists() -> None:
    problems = [
        f"{_name(page)}:{line}: {target}: {problem}"
        for page in _pages()
        for line, target in links(page.read_text(encoding="utf-8"))
        if (problem := _page_link_problem(page, target))
    ]
    assert problems == []


def test_the_guides_link_their_figures() -> None:
    """The parity guide shows both reports' figures (a renamed folder would otherwise only drop the links)."""
    targets = {target for _, target in links((DOCS / "parity.md").read_text(encoding="utf-8"))}
    for model in ("umxhq", "demucs"):
        assert f"parity/{model}/parity_snr.png" in targets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("![a](x/y.png) and [b](../c.md#top)", [(1, "x/y.png"), (1, "../c.md")]),
        ("[w](https://example.org) [m](mailto:a@b) [s](#here)", []),
        ("```\n[a](in-a-fence.md)\n```\n`[b](in-a-span.md)`\n[c](after.md)", [(5, "after.md")]),
        ('<img src="fig.png">\n\n[ref]: notes/ref.md', [(1, "fig.png"), (3, "notes/ref.md")]),
    ],
)
def test_links_reads_markdown(text: str, expected: list[tuple[int, str]]) -> None:
    assert links(text) == expected


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("unmix-parity /tmp/parity-doc-u6zh90p1/umxhq --report x", ["/tmp/parity-doc-u6zh90p1/umxhq"]),
        ("--report /work/main/docs/parity/umxhq --force", ["/work/main/docs/parity/umxhq"]),
        ("`/tmp/tmpab3_x9zq/model.pth`", ["/tmp/tmpab3_x9zq/model.pth"]),
        ("/tmp/pytest-of-root/pytest-3/x", ["/tmp/pytest-of-root/pytest-3/x"]),
        ("/home/someone/src and /root/.cache/torch", ["/home/someone/src", "/root/.cache/torch"]),
        ("python -m parity_tests.tiny_musdb /tmp/tiny; --out /tmp/run", []),
        ("unmix-parity <tmp>/umxhq --report docs/parity/umxhq; ~/work/x; a/work/b", []),
    ],
)
def test_machine_paths_are_recognised(text: str, found: list[str]) -> None:
    assert [hit for _, hit in machine_paths(text)] == found


def _parity_doc() -> ModuleType:
    """``scripts/parity_doc.py`` (``scripts/`` is no package)."""
    spec = importlib.util.spec_from_file_location("parity_doc", ROOT / "scripts" / "parity_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parity_doc_makes_the_report_paths_relative(tmp_path: Path) -> None:
    """``scripts/parity_doc.py --run`` rewrites what ``unmix-parity`` records of its temporary models and of the
    checkout (the committed reports were made so); the figures section links the images relative to the guide."""
    doc = _parity_doc()
    command = f"unmix-parity /tmp/parity-doc-u6zh90p1/umxhq --report {ROOT}/docs/parity/umxhq --force --quiet"
    assert doc.relative_command(command) == "unmix-parity <tmp>/umxhq --report docs/parity/umxhq --force --quiet"
    assert doc.relative("/elsewhere/model.pth") == "/elsewhere/model.pth"
    assert doc.relative("relative/model.pth") == "relative/model.pth"

    folder = tmp_path / "report"
    folder.mkdir()
    report = (DOCS / "parity" / "demucs" / "parity.json").read_text()
    made = report.replace("<tmp>/", "/tmp/parity-doc-abc12345/").replace("--report docs/", f"--report {ROOT}/docs/")
    assert made != report
    (folder / "parity.json").write_text(made)
    (folder / "parity.md").write_text("- model: `/tmp/parity-doc-abc12345/demucs.th` (upstream): Demucs\n")
    doc.sanitise_report(folder)
    assert (folder / "parity.json").read_text() == report
    assert (folder / "parity.md").read_text() == "- model: `<tmp>/demucs.th` (upstream): Demucs\n"

    lines = doc.section(DOCS / "parity" / "demucs" / "parity.json", DOCS / "parity.md")
    assert "![SNR per stage](parity/demucs/parity_snr.png)" in lines
    assert not machine_paths("\n".join(lines))
