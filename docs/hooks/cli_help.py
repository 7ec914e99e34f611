"""mkdocs hook: writes the ``--help`` text of ``e3elastic`` and of each subcommand into the page
that holds the marker ``<!-- e3elastic-cli-help -->``, so the command-line reference is always
the parser's own."""

from __future__ import annotations

import contextlib
import io
import os

MARKER = "<!-- e3elastic-cli-help -->"


def _help(argv: list[str]) -> str:
    from e3elastic.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue().rstrip()


def _commands() -> list[str]:
    import argparse

    from e3elastic.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def cli_reference() -> str:
    """Markdown: the usage of ``e3elastic`` and of each subcommand, as fenced text blocks."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # the same line breaks on every terminal
    try:
        parts = ["## e3elastic", "", "```text", _help([]), "```"]
        for command in _commands():
            parts += ["", f"## e3elastic {command}", "", "```text", _help([command]), "```"]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown
