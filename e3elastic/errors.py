"""The one error base of the package, and the one way an error is shortened for a message.

Every error e3elastic raises on purpose derives from :class:`E3ElasticError`, so a caller (the
CLI, a notebook) can catch the expected failures with one ``except`` and leave real bugs alone.
Each subclass also keeps its historical built-in base (``ValueError`` or ``RuntimeError``).
"""

from __future__ import annotations

__all__ = ["E3ElasticError", "short_error"]


class E3ElasticError(Exception):
    """Base of the errors e3elastic raises for bad input, bad files or failed training."""


def short_error(err: BaseException, limit: int = 160, *, with_type: bool = True) -> str:
    """``err`` on one line, at most ``limit`` characters, optionally prefixed by its type."""
    text = " ".join(str(err).split())
    if with_type:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    elif not text:
        text = type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
