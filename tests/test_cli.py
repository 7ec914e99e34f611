"""The command line: its choice lists agree with the package, building its parser stays cheap (no
data package, no JAX); `tensor` and `plot` on small inputs checked against moduli worked out by
hand; `data summary` options; and scripts/test.sh."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e3elastic import config, data
from e3elastic.cli import build_parser, main, options

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("module", ["e3elastic", "e3elastic.cli"])
def test_python_dash_m_runs_the_command(module):
    # scripts (sio2_study.py) start training as ``python -m e3elastic train``
    out = subprocess.run(
        [sys.executable, "-m", module, "train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "--workdir" in out.stdout


# --------------------------------------------------------------------------------------------
# the test script
# --------------------------------------------------------------------------------------------


def test_test_script_fails_when_pytest_collects_nothing():
    # scripts/test.sh passes pytest's status on: "no tests collected" (5) is a failure
    import os

    stamp = Path(sys.prefix) / ".e3elastic-installed-dev"
    if not stamp.is_file() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        pytest.skip("scripts/test.sh would install into this environment first")
    env = dict(os.environ, E3ELASTIC_VENV=sys.prefix)
    cmd = ["bash", str(ROOT / "scripts" / "test.sh"), "tests/test_cli.py", "-q"]
    out = subprocess.run(
        [*cmd, "-p", "no:cacheprovider", "-k", "no_test_has_this_name"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 5, out.stdout[-2000:] + out.stderr[-2000:]
    assert "collected no tests" in out.stderr


# --------------------------------------------------------------------------------------------
# e3elastic tensor
# --------------------------------------------------------------------------------------------

# silicon (GPa), a cubic tensor whose moduli are worked out here by hand
C11, C12, C44 = 166.0, 64.0, 79.6


def _cubic(c11, c12, c44) -> list[list[float]]:
    v = np.zeros((6, 6))
    v[:3, :3] = c12
    v[np.arange(3), np.arange(3)] = c11
    v[3:, 3:] = np.diag([c44] * 3)
    return v.tolist()


def _by_hand(c11, c12, c44) -> dict[str, float]:
    """Voigt, Reuss and Hill moduli and E along a cube axis of a cubic crystal (closed forms)."""
    k = (c11 + 2 * c12) / 3  # Voigt and Reuss agree for cubic symmetry
    g_v = (c11 - c12 + 3 * c44) / 5
    g_r = 5 * (c11 - c12) * c44 / (4 * c44 + 3 * (c11 - c12))
    s11 = (c11 + c12) / ((c11 - c12) * (c11 + 2 * c12))
    g = (g_v + g_r) / 2
    return {
        "K_V_GPa": k,
        "K_R_GPa": k,
        "K_VRH_GPa": k,
        "G_V_GPa": g_v,
        "G_R_GPa": g_r,
        "G_VRH_GPa": g,
        "youngs_modulus_GPa": 9 * k * g / (3 * k + g),
        "poisson_ratio": (3 * k - 2 * g) / (2 * (3 * k + g)),
        "E_100": 1 / s11,
        "universal_anisotropy": 5 * g_v / g_r - 5,  # + K_V/K_R - 6 = 5 G_V/G_R - 5
    }


def test_tensor_reads_json_text_and_objects_and_prints_the_table(tmp_path, capsys):
    v = _cubic(C11, C12, C44)
    files = {
        "list.json": json.dumps(v),
        "object.json": json.dumps({"voigt_GPa": v, "note": "silicon"}),
        "matrix.txt": "# silicon, GPa\n" + "\n".join(", ".join(f"{x:g}" for x in row) for row in v),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    capsys.readouterr()
    assert main(["tensor", *(str(tmp_path / n) for n in files)]) == 0
    out = capsys.readouterr().out
    want = _by_hand(C11, C12, C44)
    blocks = [b for b in out.split("\n\n") if b.strip()]
    assert len(blocks) == 3
    for name, block in zip(files, blocks, strict=True):
        lines = block.splitlines()
        assert lines[0] == str(tmp_path / name)
        matrix = np.array([[float(x) for x in line.split()] for line in lines[2:8]])
        np.testing.assert_allclose(matrix, v, atol=0.005)

        assert _numbers(lines, "bulk modulus") == pytest.approx([want["K_V_GPa"]] * 3, abs=0.005)
        g = [want["G_V_GPa"], want["G_R_GPa"], want["G_VRH_GPa"]]
        assert _numbers(lines, "shear modulus") == pytest.approx(g, abs=0.005)
        assert _numbers(lines, "Young's modulus") == pytest.approx(
            [want["youngs_modulus_GPa"]], abs=0.005
        )
        assert _numbers(lines, "Poisson") == pytest.approx([want["poisson_ratio"]], abs=5e-5)
        assert _numbers(lines, "E along x, y, z") == pytest.approx([want["E_100"]] * 3, abs=0.005)
        assert "-> stable" in block


def test_tensor_json_holds_the_moduli(tmp_path, capsys):
    f = tmp_path / "si.json"
    f.write_text(json.dumps({"voigt_GPa": _cubic(C11, C12, C44)}))
    capsys.readouterr()
    assert main(["tensor", "--json", str(f)]) == 0
    [rep] = json.loads(capsys.readouterr().out)
    assert rep["name"] == str(f) and rep["error"] is None
    assert rep["voigt_GPa"] == _cubic(C11, C12, C44)
    for key, value in _by_hand(C11, C12, C44).items():
        if key in rep:
            assert rep[key] == pytest.approx(value, rel=1e-12), key
    # Mandel eigenvalues of a cubic tensor: C11 + 2 C12, C11 - C12 (twice), 2 C44 (three times)
    assert rep["min_eigenvalue_GPa"] == pytest.approx(min(C11 + 2 * C12, C11 - C12, 2 * C44))
    assert rep["born_stable"] is True


def test_tensor_that_is_not_positive_definite_exits_1(tmp_path, capsys):
    # C12 > C11: the Mandel eigenvalue C11 - C12 = -50 GPa
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_text(json.dumps(_cubic(50.0, 100.0, 30.0)))
    good.write_text(json.dumps(_cubic(C11, C12, C44)))
    capsys.readouterr()
    assert main(["tensor", str(good)]) == 0
    capsys.readouterr()
    assert main(["tensor", str(bad), str(good)]) == 1
    out = capsys.readouterr()
    assert "UNSTABLE" in out.out and "-> stable" in out.out  # both reports are printed
    assert out.err.startswith(f"error: {bad}: not positive-definite")
    assert "-50.00 GPa" in out.err and str(good) not in out.err
    assert main(["tensor", "--json", str(bad)]) == 1
    [rep] = json.loads(capsys.readouterr().out)
    assert "not positive-definite" in rep["error"] and rep["born_stable"] is False
    assert rep["min_eigenvalue_GPa"] == pytest.approx(-50.0)


def test_tensor_refuses_what_is_not_a_symmetric_6x6(tmp_path, capsys):
    asym = np.array(_cubic(C11, C12, C44))
    asym[0, 1] += 10.0
    cases = {"five.json": json.dumps(np.eye(5).tolist()), "asym.json": json.dumps(asym.tolist())}
    cases["words.txt"] = "a b c\n"
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        capsys.readouterr()
        assert main(["tensor", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and name in err and "Traceback" not in err, err


# copper (GPa): cubic, Zener ratio 2 C44 / (C11 - C12) = 150.8 / 47 = 3.2085
CU = (168.4, 121.4, 75.4)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_tensor_reports_each_matrix_of_a_file_that_holds_several(tmp_path, capsys):
    si, cu = _cubic(C11, C12, C44), _cubic(*CU)
    both = tmp_path / "two.json"
    both.write_text(json.dumps([si, cu]))
    text = tmp_path / "two.txt"
    text.write_text("\n".join(" ".join(f"{x:g}" for x in row) for row in si + cu))
    for f in (both, text):
        rc, out, err = _run(["tensor", str(f)], capsys)
        assert rc == 0 and err == "", err
        blocks = [b.splitlines() for b in out.split("\n\n") if b.strip()]
        assert [b[0] for b in blocks] == [f"{f}[0]", f"{f}[1]"]
        want = [(C11 + 2 * C12) / 3, (CU[0] + 2 * CU[1]) / 3]
        for block, k in zip(blocks, want, strict=True):
            assert _numbers(block, "bulk modulus") == pytest.approx([k] * 3, abs=0.005)
    rc, out, _ = _run(["tensor", "--json", str(both)], capsys)
    reports = json.loads(out)
    assert rc == 0 and [r["name"] for r in reports] == [f"{both}[0]", f"{both}[1]"]
    assert [r["voigt_GPa"] for r in reports] == [si, cu]
    assert [r["K_VRH_GPa"] for r in reports] == pytest.approx(want)


def test_tensor_reads_materials_project_documents(tmp_path, capsys):
    cu = np.array(_cubic(*CU))
    ieee = tmp_path / "mp.json"  # ieee_format is preferred over raw (here: twice as stiff)
    ieee.write_text(
        json.dumps({"elastic_tensor": {"raw": (2 * cu).tolist(), "ieee_format": cu.tolist()}})
    )
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"elastic_tensor": {"raw": cu.tolist()}}))
    for f in (ieee, raw):
        rc, out, err = _run(["tensor", "--json", str(f)], capsys)
        [rep] = json.loads(out)
        assert rc == 0 and rep["voigt_GPa"] == cu.tolist(), err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"elastic_tensor": {"compliance": cu.tolist()}}))
    rc, _, err = _run(["tensor", str(other)], capsys)
    assert rc == 2 and "'compliance'" in err and "ieee_format" in err and "voigt_GPa" in err


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Inputs that cannot be used: name -> (arguments, a piece of the message)."""
    cu = _cubic(*CU)
    files = {
        "five.json": json.dumps(np.eye(5).tolist()),
        "five.txt": "\n".join(" ".join(["1"] * 5) for _ in range(5)),
        "words.txt": "a b c\n",
        "strings.json": json.dumps([["a"] * 6] * 6),
        "broken.json": "[[1, 2],",
        "keys.json": json.dumps({"matrix": cu}),
        "complex.txt": "\n".join(" ".join(f"{x:g}+1j" for x in row) for row in cu),
        "nan.json": json.dumps([[float("nan")] * 6] * 6),
    }
    pieces = {
        "five.json": "shape (5, 5)",
        "five.txt": "6 rows of 6",
        "words.txt": "'a' is not a number",
        "strings.json": "not a matrix of numbers",
        "broken.json": "not valid JSON",
        "keys.json": "no matrix key",
        "complex.txt": "is complex",
        "nan.json": "NaN",
    }
    cases = {}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        cases[name] = ([str(tmp_path / name)], pieces[name])
    cases["missing.json"] = ([str(tmp_path / "missing.json")], "cannot read")
    cases["unknown example"] = (["--example", "unobtainium"], "unknown example")
    return cases


def test_tensor_every_input_error_exits_2_and_gives_an_error_object_in_json(tmp_path, capsys):
    good = tmp_path / "cu.json"
    good.write_text(json.dumps(_cubic(*CU)))
    for case, (args, piece) in _bad_inputs(tmp_path).items():
        name = args[-1]
        rc, out, err = _run(["tensor", *args], capsys)
        assert rc == 2 and out == "", case
        assert err.startswith(f"error: {name}: ") and "Traceback" not in err, (case, err)
        assert piece in err, (case, err)
        rc, out, err = _run(["tensor", "--json", str(good), *args], capsys)
        assert rc == 2, case
        reports = {r["name"]: r for r in json.loads(out)}  # the good file is still reported
        bad, ok = reports[name], reports[str(good)]
        assert set(bad) == {"name", "error"} and bad["name"] == name, case
        assert f"error: {name}: {bad['error']}" in err, (case, err)
        assert len(reports) == 2 and ok["error"] is None and ok["stable"] is True
    # nothing to do at all: the same, with no name
    rc, out, err = _run(["tensor", "--json"], capsys)
    assert rc == 2 and json.loads(out)[0]["name"] is None and err.startswith("error: give")


def test_tensor_messages_name_the_form_each_kind_of_file_can_hold(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    _, _, err = _run(["tensor", *cases["five.txt"][0]], capsys)
    assert "6 rows of 6 numbers" in err and "got 5 rows of 5" in err
    assert "3, 3, 3, 3" not in err and "3x3x3x3" not in err  # no form a text file cannot hold
    _, _, err = _run(["tensor", *cases["five.json"][0]], capsys)
    assert "shape (5, 5)" in err and "6x6" in err and "3x3x3x3" in err
    _, _, err = _run(["tensor", *cases["complex.txt"][0]], capsys)
    assert "'168.4+1j' is complex" in err
    _, _, err = _run(["tensor", *cases["keys.json"][0]], capsys)
    assert "'matrix'" in err and "voigt_GPa" in err


def test_tensor_names_the_asymmetry_in_gpa_and_the_option_that_fixes_it(tmp_path, capsys):
    v = np.array(_cubic(*CU))
    v[0, 1] += 0.001  # 6e-6 of the largest entry: refused, as by the toolkit
    f = tmp_path / "asym.json"
    f.write_text(json.dumps(v.tolist()))
    rc, out, err = _run(["tensor", str(f)], capsys)
    assert rc == 2 and out == ""
    assert "|C12 - C21| = 0.001 GPa" in err and "--symmetrize" in err
    rc, out, err = _run(["tensor", "--symmetrize", "--json", str(f)], capsys)
    [rep] = json.loads(out)
    assert rc == 0 and rep["voigt_GPa"][0][1] == rep["voigt_GPa"][1][0] == pytest.approx(121.4005)
    assert err == f"note: {f}: symmetrized: |C12 - C21| = 0.001 GPa\n"


def test_tensor_marks_the_moduli_of_an_unstable_tensor(tmp_path, capsys):
    v = np.array(_cubic(*CU))
    v[3, 3] = -10.0
    f = tmp_path / "unstable.json"
    f.write_text(json.dumps(v.tolist()))
    rc, out, _ = _run(["tensor", str(f)], capsys)
    lines = out.splitlines()
    at = next(i for i, x in enumerate(lines) if x.strip().startswith("bulk modulus"))
    assert rc == 1 and "not physical" in lines[at - 1] and "UNSTABLE" in lines[at - 1]
    assert _numbers(lines, "shear modulus")  # the numbers are still shown
    rc, out, _ = _run(["tensor", "--json", str(f)], capsys)
    [rep] = json.loads(out)
    assert rc == 1 and rep["stable"] is False and "not physical" in rep["warning"]
    assert rep["born_stable"] is False and "not positive-definite" in rep["error"]
    assert rep["G_R_GPa"] > 0 and rep["min_eigenvalue_GPa"] == pytest.approx(-20.0)
    f.write_text(json.dumps(_cubic(*CU)))
    rc, out, _ = _run(["tensor", "--json", str(f)], capsys)
    [rep] = json.loads(out)
    assert rc == 0 and rep["stable"] is True and rep["warning"] is None
    assert "not physical" not in _run(["tensor", str(f)], capsys)[1]


def test_tensor_gives_the_zener_ratio_of_a_cubic_tensor_only(tmp_path, capsys):
    cu, si = tmp_path / "cu.json", tmp_path / "si.json"
    cu.write_text(json.dumps(_cubic(*CU)))
    si.write_text(json.dumps(_cubic(C11, C12, C44)))
    rc, out, _ = _run(["tensor", "--json", str(cu), str(si)], capsys)
    zener = [r["zener_anisotropy"] for r in json.loads(out)]
    assert rc == 0 and zener == pytest.approx([2 * 75.4 / 47.0, 2 * C44 / (C11 - C12)])
    assert round(zener[0], 2) == 3.21
    rc, out, _ = _run(["tensor", str(cu)], capsys)
    assert _numbers(out.splitlines(), "Zener") == pytest.approx([zener[0]], abs=5e-5)
    # not cubic (C22 differs; a shear-normal coupling; hexagonal magnesium): no ratio
    tetragonal = np.array(_cubic(*CU))
    tetragonal[1, 1] += 5.0
    coupled = np.array(_cubic(*CU))
    coupled[0, 3] = coupled[3, 0] = 2.0
    for name, v in {"tetragonal": tetragonal, "coupled": coupled}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(v.tolist()))
    args = [str(tmp_path / "tetragonal.json"), str(tmp_path / "coupled.json")]
    rc, out, _ = _run(["tensor", "--json", *args, "--example", "magnesium"], capsys)
    assert rc == 0 and [r["zener_anisotropy"] for r in json.loads(out)] == [None] * 3
    rc, out, _ = _run(["tensor", *args], capsys)
    assert "Zener" not in out


def _numbers(lines: list[str], label: str) -> list[float]:
    """The numbers after the colon on the one table line that starts with ``label``."""
    (line,) = [x for x in lines if x.strip().startswith(label)]
    return [float(t) for t in line.split(":")[1].split() if t[0].isdigit() or t[0] == "-"]


# --------------------------------------------------------------------------------------------
# e3elastic plot
# --------------------------------------------------------------------------------------------


@pytest.fixture
def drawn(monkeypatch):
    """Every matplotlib figure saved during the test, with its file and nominal pixel size."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    saved = []
    real = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        saved.append((self, Path(fname), self.get_size_inches() * kwargs.get("dpi", 100)))
        return real(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _check_pngs(drawn, printed: list[str], names: list[str]) -> None:
    """The files printed are the figures saved, valid PNGs of about the size drawn (150 dpi
    times the figure size, give or take the tight bounding box and its padding)."""
    assert [Path(p).name for p in printed] == names
    assert [f.name for _, f, _ in drawn] == names
    for _, f, nominal in drawn:
        assert f.is_file() and f.stat().st_size > 10_000, f
        w, h = _png_size(f)
        assert 0.85 < w / nominal[0] < 1.3 and 0.85 < h / nominal[1] < 1.3, (f, w, h, nominal)


def _section_extrema(fig) -> list[tuple[float, float]]:
    """(min, max) of the curve drawn in each polar panel."""
    out = []
    for ax in fig.axes:
        if ax.name == "polar":
            (line,) = ax.get_lines()
            r = np.asarray(line.get_ydata(), float)
            out.append((r.min(), r.max()))
    return out


def _e_100_and_110(voigt) -> tuple[float, float]:
    from e3elastic import tensors

    dirs = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    e = tensors.directional_youngs_modulus(
        np.asarray(voigt), dirs / np.linalg.norm(dirs, axis=1)[:, None]
    )
    return float(e[0]), float(e[1])


KINDS = ["youngs_surface", "youngs_sections", "compressibility_sections"]


def test_plot_voigt_draws_the_directional_modulus(tmp_path, drawn, capsys):
    f = tmp_path / "si.json"
    f.write_text(json.dumps({"voigt_GPa": _cubic(C11, C12, C44)}))
    capsys.readouterr()
    assert main(["plot", "voigt", str(f), "--out", str(tmp_path / "si")]) == 0
    printed = capsys.readouterr().out.split()
    _check_pngs(drawn, printed, [f"si_{k}.png" for k in KINDS])
    # In each cube plane E runs from E[100] (its minimum for silicon) to E[110]: by hand from the
    # compliance, 1/E[100] = S11, 1/E[110] = S11 - (S11 - S12 - S44/2)/2, and from tensors.
    s = np.linalg.inv(np.array(_cubic(C11, C12, C44)))
    e100, e110 = 1 / s[0, 0], 1 / (s[0, 0] - (s[0, 0] - s[0, 1] - s[3, 3] / 2) / 2)
    assert _e_100_and_110(_cubic(C11, C12, C44)) == pytest.approx((e100, e110), rel=1e-12)
    sections = drawn[1][0]
    assert _section_extrema(sections) == [pytest.approx((e100, e110), rel=1e-12)] * 3


def test_plot_voigt_names_the_file_it_cannot_use(tmp_path, capsys):
    five = tmp_path / "five.txt"
    five.write_text("\n".join(" ".join(["1"] * 5) for _ in range(5)))
    asym = np.array(_cubic(*CU))
    asym[0, 1] += 0.001
    (tmp_path / "asym.json").write_text(json.dumps(asym.tolist()))
    for f in (five, tmp_path / "asym.json"):
        rc, out, err = _run(["plot", "voigt", str(f), "--out", str(tmp_path / "p")], capsys)
        assert rc == 2 and out == "" and err.startswith(f"error: {f}: "), err
    assert "6 rows of 6" in _run(["plot", "voigt", str(five)], capsys)[2]


def test_plot_structure_draws_the_prediction(tmp_path, drawn, capsys):
    from e3elastic import inference

    cif = ROOT / "examples" / "silicon.cif"
    capsys.readouterr()
    argv = ["plot", "structure", str(cif), "--model", "default", "--out", str(tmp_path / "p")]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    _check_pngs(drawn, printed, [f"p_{k}.png" for k in KINDS])
    # what is drawn is the model's tensor for this file: the sections' extrema are its E along
    # the cube axes and face diagonals (the example is in its cubic setting)
    voigt = inference.predict(str(cif), "default")["voigt_GPa"]
    lo, hi = sorted(_e_100_and_110(voigt))
    assert _section_extrema(drawn[1][0]) == [pytest.approx((lo, hi), rel=1e-6)] * 3


def test_plot_parity_draws_an_evaluation(tmp_path, drawn, capsys):
    from pymatgen.core import Lattice, Structure

    rows = [
        ("t-nacl", Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                             [[0, 0, 0], [0.5] * 3]), _cubic(49, 13, 13)),
        ("t-mgo", Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"],
                                            [[0, 0, 0], [0.5] * 3]), _cubic(297, 95, 156)),
        ("t-cscl", Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]),
         _cubic(36, 9, 8)),
    ]  # fmt: skip
    f = tmp_path / "cubic.json"
    f.write_text(
        json.dumps([{"id": i, "structure": s.as_dict(), "voigt_GPa": v} for i, s, v in rows])
    )
    capsys.readouterr()
    argv = ["plot", "parity", "--model", "default", "--data", str(f), "--split", "all"]
    assert main([*argv, "--out", str(tmp_path / "parity")]) == 0
    printed = capsys.readouterr().out.split()
    _check_pngs(drawn, printed, ["parity.png"])
    capsys.readouterr()
    assert main(["plot", "parity", "--data", str(f)]) == 2  # parity needs a model
    assert "needs --model" in capsys.readouterr().err


def _co2_in_a_box(path: Path) -> Path:
    """A CO2 molecule in a 15 A box: predicted, with a ``vacuum`` warning."""
    from pymatgen.core import Molecule

    co2 = Molecule(["C", "O", "O"], [[0, 0, 0], [0, 0, 1.16], [0, 0, -1.16]])
    co2.get_boxed_structure(15, 15, 15).to(filename=str(path))
    return path


def test_plot_structure_flags_the_prediction_warnings(tmp_path, drawn, capsys):
    cif = _co2_in_a_box(tmp_path / "co2.cif")
    argv = ["plot", "structure", str(cif), "--model", "default", "--out", str(tmp_path / "p")]
    rc, out, err = _run(argv, capsys)
    assert rc == 0
    assert [Path(p).name for p in out.split()] == [f"p_{k}.png" for k in KINDS]
    assert len(drawn) == 3
    assert f"WARNING {cif}: vacuum: " in err, err
    # no saved figure shows the number unflagged: every title names the warning's code
    for fig, _, _ in drawn:
        title = fig._suptitle.get_text()
        assert "CO2" in title and "WARNING: vacuum" in title, title


def test_plot_structure_takes_folders_and_globs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    d = tmp_path / "cifs"
    d.mkdir()
    for name in ("silicon", "nacl"):
        (d / f"{name}.cif").write_bytes((ROOT / "examples" / f"{name}.cif").read_bytes())
    want = [f"{n}_{k}.png" for n in ("nacl", "silicon") for k in KINDS]
    for src in (d, d / "*.cif"):
        rc, out, err = _run(["plot", "structure", str(src), "--out", str(tmp_path / "p")], capsys)
        assert rc == 0, err
        assert [Path(p).name for p in out.split()] == [f"p_{w}" for w in want]


def test_plot_takes_files_after_the_options(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    si, nacl = (str(ROOT / "examples" / f"{n}.cif") for n in ("silicon", "nacl"))
    argv = ["plot", "structure", si, "--out", str(tmp_path / "p"), nacl]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    want = [f"p_{n}_{k}.png" for n in ("silicon", "nacl") for k in KINDS]
    assert [Path(p).name for p in out.split()] == want
    with pytest.raises(SystemExit) as exit_:
        main(["plot", "structure", "--out", str(tmp_path / "q"), "--bogus", si])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_plot_structure_reports_a_bad_file_and_draws_the_others(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    bad = tmp_path / "bad.cif"
    bad.write_text("not a CIF\n")
    si = ROOT / "examples" / "silicon.cif"
    argv = ["plot", "structure", str(bad), str(si), "--out", str(tmp_path / "p")]
    rc, out, err = _run(argv, capsys)
    assert rc == 1  # as predict: some inputs failed
    assert f"error: {bad}: " in err and "1 of 2 inputs plotted" in err, err
    assert [Path(p).name for p in out.split()] == [f"p_silicon_{k}.png" for k in KINDS]
    assert all(Path(p).is_file() for p in out.split())


def test_plot_structure_gives_inputs_of_one_stem_their_own_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for folder, name in (("a", "silicon"), ("b", "nacl")):
        (tmp_path / folder).mkdir()
        src = (ROOT / "examples" / f"{name}.cif").read_bytes()
        (tmp_path / folder / "POSCAR.cif").write_bytes(src)
    srcs = [str(tmp_path / f / "POSCAR.cif") for f in "ab"]
    rc, out, _ = _run(["plot", "structure", *srcs, "--out", str(tmp_path / "p")], capsys)
    assert rc == 0
    names = [Path(p).name for p in out.split()]
    assert names == [f"p_{f}_POSCAR_{k}.png" for f in "ab" for k in KINDS]
    assert len({Path(p).read_bytes() for p in out.split()}) == 6  # six different figures


def test_plot_file_names_never_repeat():
    from e3elastic.cli import plot

    srcs = ["x/a.cif", "x/a.cif", "y/a.cif", "b.cif"]
    assert plot._file_names(srcs) == ["x_a", "x_a", "y_a", "b"]
    assert plot._unique(["x_a", "x_a", "x_a_2", "b"]) == ["x_a", "x_a_2", "x_a_2_2", "b"]


def test_plot_refuses_an_out_folder_that_does_not_exist(tmp_path, capsys):
    f = tmp_path / "si.json"
    f.write_text(json.dumps(_cubic(C11, C12, C44)))
    missing = tmp_path / "no" / "such"
    for argv in (["voigt", str(f)], ["structure", str(ROOT / "examples" / "silicon.cif")]):
        rc, out, err = _run(["plot", *argv, "--out", str(missing / "p")], capsys)
        assert rc == 2 and out == "", err  # as predict: refused before any work
        assert f"the folder {missing} does not exist" in err
    assert not (tmp_path / "no").exists()


def test_plot_parity_refuses_input_files(monkeypatch, capsys):
    from e3elastic.cli import plot

    monkeypatch.setattr(plot, "run_evaluation", lambda args: pytest.fail("evaluated"))
    si = str(ROOT / "examples" / "silicon.cif")
    with pytest.raises(SystemExit) as exit_:
        main(["plot", "parity", si, "--model", "default"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "plot parity takes no input files" in err and si in err


# --------------------------------------------------------------------------------------------
# e3elastic data summary
# --------------------------------------------------------------------------------------------

ROCK_SALTS = [
    ("Na", "Cl", 5.64), ("Mg", "O", 4.21), ("K", "Cl", 6.29), ("Li", "F", 4.03),
    ("Ca", "O", 4.81), ("Ba", "O", 5.52), ("Na", "F", 4.63), ("K", "Br", 6.60),
    ("Sr", "O", 5.16), ("Li", "Cl", 5.13), ("Rb", "Cl", 6.58), ("Ag", "Cl", 5.55),
]  # fmt: skip
# the same formulas in the CsCl (B2) structure, a = 0.62 of the rock-salt one (same bond length)
B2 = ROCK_SALTS[:4]


def _summary_file(path: Path):
    """User-format data: 12 rock salts, 4 of their formulas again as B2 crystals, one unstable
    tensor (C12 > C11) and one whose C22 breaks its cubic symmetry. Returns the file, the
    unstable and the asymmetric id, and that one's symmetry residual."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from e3elastic import tensors

    def rock_salt(a_el, b_el, a):
        return Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(a), [a_el, b_el], [[0, 0, 0], [0.5] * 3]
        ).get_primitive_structure()

    rows = []
    for a_el, b_el, a in ROCK_SALTS:
        s = (5.0 / a) ** 4
        rows.append((f"rs:{a_el}{b_el}", rock_salt(a_el, b_el, a), _cubic(120 * s, 40 * s, 30 * s)))
    for a_el, b_el, a in B2:
        b2 = Structure(Lattice.cubic(0.62 * a), [a_el, b_el], [[0, 0, 0], [0.5] * 3])
        rows.append((f"b2:{a_el}{b_el}", b2, _cubic(90.0, 50.0, 20.0)))
    unstable = ("bad:CaF", rock_salt("Ca", "F", 5.0), _cubic(50.0, 100.0, 30.0))
    skewed = np.array(_cubic(200.0, 60.0, 50.0))
    skewed[1, 1] = 240.0
    asym = ("asym:SrS", rock_salt("Sr", "S", 6.02), skewed.tolist())
    rows += [unstable, asym]
    ops = SpacegroupAnalyzer(asym[1]).get_point_group_operations(cartesian=True)
    residual = float(tensors.symmetry_residual(skewed, np.array([o.rotation_matrix for o in ops])))
    path.write_text(
        json.dumps([{"id": i, "structure": s.as_dict(), "voigt_GPa": v} for i, s, v in rows])
    )
    return path, unstable[0], asym[0], residual


def _summary(capsys, f: Path, tmp: Path, *options: str) -> tuple[dict[str, list[str]], dict]:
    """``data summary --json`` of ``f`` with options: the split it saved, and its report."""
    out = tmp / "split.json"
    out.unlink(missing_ok=True)
    argv = ["data", "summary", "--data", str(f), "--subset", "all", "--json"]
    argv += ["--cache-dir", str(tmp / "cache")]
    capsys.readouterr()
    assert main([*argv, "--save-split", str(out), *options]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert saved["format"] == "e3elastic-split"
    return saved["split"], report


def _ids(split: dict[str, list[str]]) -> set[str]:
    return {i for part in split.values() for i in part}


def test_data_summary_options_reach_the_dataset(tmp_path, capsys):
    f, unstable, asym, residual = _summary_file(tmp_path / "d.json")
    assert 0.05 < residual < 0.2  # dropped at the default tolerance, 0.05
    split, report = _summary(capsys, f, tmp_path)
    split_seed_0, ids = split, _ids(split)
    assert len(ids) == sum(len(p) for p in split.values())  # each id in one part
    assert ids == {f"rs:{a}{b}" for a, b, _ in ROCK_SALTS} | {f"b2:{a}{b}" for a, b, _ in B2}
    assert report["records"] == len(ids)
    assert report["options"]["tolerance"] == 0.05 and report["options"]["holdout"] == "id"
    assert report["options"]["keep_unstable"] is False

    # --keep-unstable keeps the tensor that is not positive-definite; --tolerance above the
    # skewed tensor's residual keeps it too
    tolerance = f"{2 * residual:.4f}"
    split, report = _summary(capsys, f, tmp_path, "--keep-unstable", "--tolerance", tolerance)
    assert _ids(split) == ids | {unstable, asym}
    assert report["options"]["keep_unstable"] is True
    assert report["options"]["tolerance"] == pytest.approx(2 * residual, abs=1e-4)

    def parts_of_formulas(split):
        parts: dict[str, set[str]] = {}
        for part, members in split.items():
            for i in members:
                parts.setdefault(i.split(":")[1], set()).add(part)
        return parts

    # --holdout composition: each reduced formula in one part only; a split by id with the
    # same seed puts some formula (rock salt and B2) in two parts
    split, report = _summary(capsys, f, tmp_path, "--holdout", "composition", "--seed", "1")
    assert _ids(split) == ids and report["options"]["holdout"] == "composition"
    assert all(len(p) == 1 for p in parts_of_formulas(split).values()), split
    by_id, _ = _summary(capsys, f, tmp_path, "--seed", "1")
    assert any(len(p) > 1 for p in parts_of_formulas(by_id).values()), by_id
    # the seed moves crystals between parts
    assert by_id != split_seed_0


def test_prediction_table_keeps_huge_entries_apart():
    # an absurd (extrapolated) tensor must still print as six numbers per row
    from e3elastic.cli.predict import format_predictions
    from e3elastic.inference.prediction import Prediction

    c11, c12, c44 = 7_093_032.70, -3_459_742.69, 6_924_475.0
    voigt = np.diag([c11] * 3 + [c44] * 3)
    voigt[:3, :3] += c12 * (1 - np.eye(3))
    p = Prediction.from_voigt(voigt, file="x.cif", formula="C")
    lines = format_predictions([p], "table").splitlines()
    start = next(i for i, line in enumerate(lines) if "Voigt stiffness" in line) + 1
    rows = lines[start : start + 6]
    for i, row in enumerate(rows):
        assert np.allclose([float(x) for x in row.split()], voigt[i], atol=0.01)


def test_evaluate_table_keeps_columns_apart_for_huge_errors(capsys):
    """A wrong-unit reference gives errors of 1e11 GPa: every number still stands apart."""
    from e3elastic.cli.evaluate import _print_metrics_table

    row = {
        "n": 3,
        "mae_voigt_GPa": 3.1e11,
        "rel_frobenius": 0.427,
        "ewt_5": 0.0,
        "ewt_10": 0.0,
        "ewt_25": 0.0,
        "mae_K_VRH_GPa": 6.7e10,
        "mae_G_VRH_GPa": 5.1e10,
    }
    _print_metrics_table(row | {"by_crystal_system": {"cubic": row}}, "MAE Voigt")
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0].split(), [line.split() for line in lines[1:3]]
    assert len(header) == 13  # "MAE Voigt", "rel Frob", "MAE K", "MAE G" are two words each
    for cells, name in zip(rows, ("all", "cubic"), strict=True):
        assert cells[0] == name and len(cells) == 9
        assert float(cells[2]) == pytest.approx(3.1e11) and float(cells[-1]) == pytest.approx(
            5.1e10
        )


def test_predict_takes_json_like_the_other_commands(capsys):
    si = str(ROOT / "examples" / "silicon.cif")
    rc, out, err = _run(["predict", si, "--json"], capsys)
    assert rc == 0, err
    [row] = json.loads(out)
    assert row["formula"] == "Si" and len(row["voigt_GPa"]) == 6
