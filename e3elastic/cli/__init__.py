"""The ``e3elastic`` command line: one program, several subcommands.

Each subcommand lives in its own module (``tensor``, ``data``, ``train``, ``evaluate``,
``predict``, ``plot``, ``doctor``) with the parser it adds. Subcommands import their heavy
dependencies (JAX, pymatgen) only when they run, so ``e3elastic tensor`` starts quickly.
"""

from __future__ import annotations

import argparse
import os
import sys

from e3elastic import __version__
from e3elastic.errors import E3ElasticError

from . import data, doctor, evaluate, plot, predict, tensor, train
from .errors import CLIError
from .output import show_messages

__all__ = ["CLIError", "build_parser", "main", "show_messages"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="e3elastic",
        description="Elasticity tensors of crystals: an equivariant network and a tensor toolkit.",
    )
    p.add_argument("--version", action="version", version=f"e3elastic {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in (tensor, data, train, evaluate, predict, plot, doctor):
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2: bad input or an expected failure, shown as
    one line; 130: Ctrl-C; 141: the reader of stdout went away, as for any Unix filter)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "plot" and args.kind != "parity":
        # `plot structure --model m a.cif`: argparse has already given the (possibly empty)
        # input list to the positional before the options; files after them belong to it
        if not any(x.startswith("-") for x in extra):
            args.inputs = list(args.inputs or []) + extra
            extra = []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
        return status
    except E3ElasticError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `e3elastic ... | head`: stop quietly; point stdout at /dev/null so the interpreter's
        # final flush does not raise again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
