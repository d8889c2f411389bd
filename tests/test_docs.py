"""The documentation site: the command-line page is generated from the parsers and up to date,
and every page in mkdocs.yml's nav exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dsekit.cli.reference import REGENERATE, cli_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_cli_page_is_generated_from_the_parsers() -> None:
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert page == cli_reference(), (
        f"docs/cli.md is out of date with the command line: regenerate it with `{REGENERATE}`"
    )


def test_cli_reference_names_every_command_and_option() -> None:
    import argparse

    from dsekit.cli import build_parser

    text = cli_reference()

    def walk(parser: argparse.ArgumentParser, prog: str) -> None:
        assert f"#{'#' * prog.count(' ')}# {prog}\n" in text, prog
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text or f", {option}" in text, (prog, option)
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prog} {name}")

    walk(build_parser(), "dsekit")


def _nav_pages() -> list[str]:
    """The pages named in mkdocs.yml's nav, at any depth."""
    import yaml

    def pages(entry: object) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, dict):
            return [p for value in entry.values() for p in pages(value)]
        if isinstance(entry, list):
            return [p for item in entry for p in pages(item)]
        return []

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    return [p for p in pages(config["nav"]) if not p.startswith(("http://", "https://"))]


def test_every_nav_page_exists() -> None:
    pages = _nav_pages()
    assert "index.md" in pages and "cli.md" in pages and "api.md" in pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav that are not in docs/: {missing}"


def test_cli_reference_imports_no_torch() -> None:
    code = (
        "import sys; from dsekit.cli.reference import cli_reference; cli_reference(); "
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
