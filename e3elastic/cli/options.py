"""Options shared by several commands: the choice lists and the settings a run is made of
(``--config`` preset, ``--set`` overrides, named options)."""

from __future__ import annotations

import argparse
import json

from .errors import CLIError

#: Names of :func:`e3elastic.config.preset`.
PRESETS = ("default", "tiny", "large")


#: The names of :data:`e3elastic.data.SUBSETS`, ``HOLDOUTS`` and ``SPLIT_NAMES`` (with "all"),
#: written out: importing the data package to read them would add about 0.15 s to the start of
#: every command, ``tensor`` and ``predict`` included (argparse reads choices as soon as an
#: option is added). tests/test_cli.py checks that they agree.
SUBSETS = ("all", "pbe", "sio2")
HOLDOUTS = ("id", "composition")


def holdout_choice(text: str) -> str:
    """argparse type of ``--holdout``: one of :data:`HOLDOUTS` or ``formula:<formula>``."""
    import argparse

    kind, sep, formula = text.partition(":")
    if text in HOLDOUTS or (kind == "formula" and sep and formula.strip()):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: choose {', '.join(HOLDOUTS)} or formula:<formula> (e.g. formula:SiO2)"
    )


#: Choices of ``--split``: a part of the split, or all of the data.
SPLIT_CHOICES = ("train", "val", "test", "all")


def config_from_args(args: argparse.Namespace, options: dict[str, str]):
    """The ``--config`` preset with ``--set`` overrides, then the named ``options`` (option
    name -> ``section.key``), ``--keep-unstable`` and ``--float64``."""
    from e3elastic import config as cfgmod

    try:
        cfg = cfgmod.preset(args.config)
        sets = list(args.set or [])
        for name, key in options.items():
            if getattr(args, name, None) is not None:
                sets.append(f"{key}={json.dumps(getattr(args, name))}")
        if getattr(args, "keep_unstable", False):
            sets.append("data.keep_unstable=true")
        if getattr(args, "float64", False):
            sets.append('train.dtype="float64"')
        return cfg.override(sets)
    except ValueError as err:
        raise CLIError(str(err)) from None
