"""The docs as a reader meets them: links lead somewhere, and the tables that name code agree with the code.

The commands of the docs are run by ``test_docs_commands.py``; the compatibility table is checked by
``tests/compat/test_matrix.py``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from lightning.pytorch import Callback

from lightning_tricks import callbacks, data, models

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
#: Generated pages that the benchmark and experiment branches add: links to them are accepted while they are absent
#: here. Empty this set once those pages are in the tree, so that every link is checked.
ADDED_BY_OTHER_BRANCHES = {"docs/experiments.md"}
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", flags=re.M)
HOOK = re.compile(r"`((?:on_\w+)|setup|teardown|state_dict|load_state_dict)`")


def implemented_hooks(cls: type) -> set[str]:
    """The ``Callback`` hooks ``cls`` (or a base class of its own) overrides."""
    hooks = (name for name in dir(Callback) if HOOK.fullmatch(f"`{name}`"))
    return {hook for hook in hooks if getattr(cls, hook) is not getattr(Callback, hook)}


def prose(text: str) -> str:
    """``text`` without fenced blocks and inline code spans, where brackets and parentheses are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "x", text)


def links(text: str) -> list[str]:
    body = prose(text)
    return INLINE_LINK.findall(body) + REFERENCE_LINK.findall(body)


def anchors(page: Path) -> set[str]:
    """The ``#anchors`` GitHub makes of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        number = 0
        while (candidate := slug if number == 0 else f"{slug}-{number}") in found:
            number += 1
        found.add(candidate)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_lead_to_files_and_headings(page: Path) -> None:
    checked = 0
    for link in links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:: not ours to check offline
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        relative = target.relative_to(REPO).as_posix() if target.is_relative_to(REPO) else str(target)
        checked += 1
        if relative in ADDED_BY_OTHER_BRANCHES and not target.exists():
            continue
        assert target.exists(), f"{page.name} links to {link}, which does not exist"
        if anchor:
            assert target.suffix == ".md", f"{page.name} links to {link}: an anchor into a file that is not a page"
            assert anchor in anchors(target), f"{page.name} links to {link}: {target.name} has no such heading"
    assert checked or page.name == "compatibility.md", f"{page.name} links to no other page"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in links(README.read_text())}
    pages = {page.resolve() for page in PAGES[1:]} | {REPO / name for name in ADDED_BY_OTHER_BRANCHES}
    assert not pages - linked, f"pages the README does not link: {sorted(p.name for p in pages - linked)}"


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the details to docs/"


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading``, split into cells."""
    section = text[text.index(heading) :]
    table = re.search(r"^\|.*\|\n^\|[-| ]+\|\n((?:^\|.*\|\n)+)", section, flags=re.M)
    assert table, f"no table after {heading!r}"
    return [[cell.strip() for cell in row.strip().strip("|").split(" | ")] for row in table.group(1).splitlines()]


def first_name(cell: str) -> str:
    return re.match(r"`(\w+)", cell).group(1)


def test_readme_tables_name_every_public_class() -> None:
    text = README.read_text()
    assert [first_name(row[0]) for row in table_rows(text, "## Callbacks")] == list(callbacks.__all__)
    assert [first_name(row[0]) for row in table_rows(text, "## Models and data")] == [*models.__all__, *data.__all__]


CALLBACK_ROWS = table_rows((REPO / "docs" / "callbacks.md").read_text(), "# Callbacks")


def test_callbacks_page_has_a_row_per_callback() -> None:
    assert sorted(first_name(row[0]) for row in CALLBACK_ROWS) == sorted(callbacks.__all__)


@pytest.mark.parametrize("row", CALLBACK_ROWS, ids=lambda row: first_name(row[0]))
def test_callbacks_page_agrees_with_the_code(row: list[str]) -> None:
    name, runs_in, _cost, keys, reference = row
    cls = getattr(callbacks, first_name(name))
    doc = inspect.getdoc(cls)
    implemented = implemented_hooks(cls)
    for hook in HOOK.findall(runs_in):
        assert hook in implemented, f"docs/callbacks.md: {cls.__name__} runs in `{hook}`, which it does not implement"
    named_keys = [key for key in re.findall(r"`([^`]+)`", keys) if "/" in key]
    assert named_keys or (keys == "logs nothing" and "Logs nothing" in doc), f"{cls.__name__}: keys {keys!r}"
    for key in named_keys:
        assert key in doc, f"docs/callbacks.md lists `{key}` for {cls.__name__}, which its docstring does not"
    link = re.fullmatch(r"\[[^\]]+\]\(([^)]+)\)", reference).group(1)
    assert (REPO / "docs" / link).resolve() == Path(inspect.getsourcefile(cls)).resolve(), reference


@pytest.mark.parametrize("name", callbacks.__all__)
def test_callback_docstrings_name_their_hook_and_show_an_example(name: str) -> None:
    """The parts of "cited tricks" a test can see: the docstring names a hook the class implements, and an example."""
    cls = getattr(callbacks, name)
    doc = inspect.getdoc(cls)
    implemented = implemented_hooks(cls)
    assert any(f"``{hook}``" in doc for hook in implemented), f"{name}'s docstring names none of its hooks"
    assert "Example::" in doc, f"{name}'s docstring has no Example::"
