"""Where a command's results and messages go: the ``--out`` file (format from its extension,
checked before any work, written atomically) and progress messages on stderr."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from e3elastic.files import atomic_write

from .errors import CLIError

#: Output formats chosen from the extension of ``--out`` when ``--format`` is not given.
_FORMAT_BY_SUFFIX = {".json": "json", ".csv": "csv"}


def output_format(out: str | None, fmt: str | None, default: str = "table") -> str:
    """``fmt`` if given, else the format named by the extension of ``out``, else ``default``."""
    if fmt is not None:
        return fmt
    if out is None:
        return default
    return _FORMAT_BY_SUFFIX.get(Path(out).suffix.lower(), default)


def check_output_path(out: str | None) -> None:
    """Fail before any work when ``out`` cannot be written."""
    if out is None:
        return
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise CLIError(f"--out {out}: is a folder; give a file name")
    if not parent.is_dir():
        raise CLIError(f"--out {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CLIError(f"--out {out}: not writable")


def write_output(out: str, text: str) -> None:
    """Write ``text`` to ``out`` through a temporary file, so a failure leaves no half file."""
    try:
        atomic_write(out, text if text.endswith("\n") else text + "\n")
    except OSError as e:
        raise CLIError(f"--out {out}: cannot write ({e.strerror or e})") from None


class _StderrLines(logging.Handler):
    """Each message as one line on the ``sys.stderr`` of the moment, flushed."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr, flush=True)


def show_messages() -> None:
    """Show the package's progress messages (``logging``, level INFO) on stderr, once, and
    only there (not also through handlers that libraries put on the root logger)."""
    package = logging.getLogger("e3elastic")
    package.setLevel(logging.INFO)
    package.propagate = False
    if not any(isinstance(h, _StderrLines) for h in package.handlers):
        package.addHandler(_StderrLines())
