"""The CLI's own error: bad input on the command line, shown without a traceback."""

from __future__ import annotations

from e3elastic.errors import E3ElasticError


class CLIError(E3ElasticError):
    """An error whose message is shown to the user without a traceback."""
