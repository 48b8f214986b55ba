"""The README and docs/ stay true: the README fits the front door, links resolve, options exist and are documented.

The README names options and links to docs/ pages and their sections; a renamed option or heading would
leave it pointing at nothing. These checks read the Markdown files and the real argparse parser of
``cli.py`` (no mocks).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from support import ROOT

import cli

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
OPTIONS_DOC = ROOT / "docs" / "options.md"
README_MAX_LINES = 350  # issue 30: the README fits the front door; measurements live in docs/benchmarks.md
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _prose(path: Path) -> str:
    """The file's text without fenced code blocks (shell examples name torchrun's and pip's flags)."""
    return re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", _prose(path), re.M)}


def _parser_options() -> set[str]:
    """Every --option of the top-level parser and of each subcommand."""
    parser = cli.build_parser()
    found = {s for a in parser._actions for s in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= {s for a in sub._actions for s in a.option_strings}
    return {s for s in found if s.startswith("--")}


def _named_options(path: Path) -> set[str]:
    """Options the file names as tailaudit's: in code spans that start with an option or a tailaudit command."""
    names: set[str] = set()
    for span in CODE_SPAN.findall(_prose(path)):
        if span.startswith("--") or span.startswith(("python cli.py", "cli.py", "tailaudit ")):
            names |= set(OPTION.findall(span))
    return names


def test_readme_fits_the_front_door():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (measurements: benchmarks.md)"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(path: Path):
    broken = []
    for link in LINK.findall(_prose(path)):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target) if target else path
        if not file.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{link} (no such heading)")
    assert not broken, f"{path.name}: {broken}"


@pytest.mark.parametrize("path", [README, OPTIONS_DOC], ids=lambda p: p.name)
def test_named_options_exist(path: Path):
    unknown = _named_options(path) - _parser_options()
    assert not unknown, f"{path.name} names options cli.py does not have: {sorted(unknown)}"


def test_every_option_is_in_the_reference():
    missing = _parser_options() - set(OPTION.findall(OPTIONS_DOC.read_text(encoding="utf-8")))
    assert not missing, f"docs/options.md does not describe {sorted(missing)}"


def test_the_checks_see_what_they_check(tmp_path: Path):
    """The helpers find a wrong option, a broken link and a missing heading when there is one."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nRun `python cli.py audit --no-such-flag`. See [x](page.md#title), [y](#nowhere), "
                    "[z](missing.md).\n```bash\ntorchrun --nnodes 2 cli.py audit m.onnx\n```\n", encoding="utf-8")
    assert _named_options(page) == {"--no-such-flag"}
    assert _anchors(page) == {"title"}
    assert {"page.md#title", "#nowhere", "missing.md"} == set(LINK.findall(_prose(page)))
    assert "--eps" in _parser_options() and "--method" in _parser_options() and "--debug" in _parser_options()
