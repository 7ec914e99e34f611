"""The error base class, short error messages and atomic writes."""

from __future__ import annotations

import pytest

from e3elastic import data, graph, inference
from e3elastic.errors import E3ElasticError, short_error
from e3elastic.files import atomic_write
from e3elastic.training import checkpoint, evaluation, train


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (checkpoint.CheckpointError, ValueError),
        (data.DataError, ValueError),
        (evaluation.EvaluationError, ValueError),
        (graph.GraphError, ValueError),
        (inference.PredictError, ValueError),
        (train.TrainingError, RuntimeError),
    ],
)
def test_every_error_shares_one_base_and_keeps_its_builtin_base(cls, builtin):
    assert issubclass(cls, E3ElasticError)
    assert issubclass(cls, builtin)


def test_short_error_is_one_line_and_bounded():
    err = ValueError("first line\nsecond   line " + "x" * 300)
    text = short_error(err, 50)
    assert text.startswith("ValueError: first line second line")
    assert len(text) == 50 and text.endswith("...")
    assert short_error(KeyError(), with_type=False) == "KeyError"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, "old")
    assert path.read_text() == "old"

    def fail(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]  # no temporary left behind
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"


def test_atomic_write_gives_the_mode_a_plain_write_would(tmp_path):
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    atomic_write(atomic, "x")
    assert atomic.stat().st_mode == plain.stat().st_mode
    atomic.chmod(0o600)
    atomic_write(atomic, "y")  # an existing file keeps its mode
    assert atomic.stat().st_mode & 0o777 == 0o600
