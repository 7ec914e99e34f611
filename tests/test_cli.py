"""The command line's own choice lists agree with the package, and building its parser stays
cheap (no data package, no JAX)."""

import subprocess
import sys

from e3elastic import config, data
from e3elastic.cli import build_parser, options


def _choices(command: str, option: str) -> tuple:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices[command]
    return tuple(next(a for a in parser._actions if option in a.option_strings).choices)


def test_choice_lists_agree_with_the_package():
    assert options.SUBSETS == data.SUBSETS
    assert options.HOLDOUTS == data.HOLDOUTS
    assert options.SPLIT_CHOICES == (*data.SPLIT_NAMES, "all")
    assert set(_choices("train", "--subset")) == set(data.SUBSETS)
    assert _choices("evaluate", "--split") == options.SPLIT_CHOICES
    assert _choices("predict", "--theory") == tuple(t.lower() for t in config.THEORIES)
    for name in options.PRESETS:
        assert config.preset(name).name == name


def test_building_the_parser_imports_neither_data_nor_jax():
    code = (
        "import sys; from e3elastic.cli import build_parser; build_parser(); "
        "print([m for m in ('e3elastic.data', 'jax', 'pymatgen') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
