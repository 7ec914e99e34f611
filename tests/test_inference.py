"""e3elastic.predict / load_model and the `predict` command, with a small bundle built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import quartz_structure, random_model_stats, rotated_structure

jax = pytest.importorskip("jax")

from e3elastic import checkpoint as ckpt  # noqa: E402
from e3elastic import cli, inference, runtime, tensors  # noqa: E402
from e3elastic import config as C  # noqa: E402

runtime.enable_compilation_cache()

JSON_KEYS = {
    "file",
    "voigt_GPa",
    "K_VRH_GPa",
    "G_VRH_GPa",
    "youngs_modulus_GPa",
    "poisson_ratio",
    "universal_anisotropy",
    "born_stable",
    "error",
}


def _bundle(path, seed):
    """A tiny model with random weights (predictions are arbitrary but deterministic)."""
    cfg = C.tiny()
    shapes = ckpt.expected_param_shapes(cfg)
    rng = np.random.default_rng(seed)
    params = ckpt.unflatten_params(
        {k: rng.normal(size=v).astype(np.float32) * 0.5 for k, v in shapes.items()}
    )
    stats = random_model_stats(cfg.model)
    return ckpt.export_bundle(path, cfg, params, stats, {"seed": seed})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("m") / "bundle", 0)


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    for k in range(3):
        _bundle(root / f"member_{k}", k)
    return root






def _rand_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_rotated_file_gives_rotated_tensor(model_dir, tmp_path):
    s = quartz_structure()
    R = _rand_rotation(1)
    s.to(filename=str(tmp_path / "q.cif"))
    rotated_structure(s, R).to(filename=str(tmp_path / "q_rot.vasp"), fmt="poscar")
    a, b = inference.predict([tmp_path / "q.cif", tmp_path / "q_rot.vasp"], model=model_dir)
    assert a["error"] is None and b["error"] is None
    expect = tensors.rotate(a["cartesian_GPa"], R)
    assert np.abs(b["cartesian_GPa"] - expect).max() < 1e-4 * np.abs(expect).max()
    assert np.abs(b["voigt_GPa"] - a["voigt_GPa"]).max() > 1e-2  # the frame really changed
    assert b["K_VRH_GPa"] == pytest.approx(a["K_VRH_GPa"], rel=1e-5)


def test_supercell_file_gives_same_tensor(model_dir, tmp_path):
    s = quartz_structure()
    s.to(filename=str(tmp_path / "q.cif"))
    (s * (1, 2, 1)).to(filename=str(tmp_path / "q_sc.cif"))
    a, b = inference.predict([tmp_path / "q.cif", tmp_path / "q_sc.cif"], model=model_dir)
    assert np.abs(a["voigt_GPa"] - b["voigt_GPa"]).max() < 1e-4 * np.abs(a["voigt_GPa"]).max()


def test_symmetrize_imposes_point_group(model_dir):
    from pymatgen.core import Lattice, Structure

    # slightly distorted rock salt: the raw prediction is close to, not exactly, cubic
    s = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    [r] = inference.predict([s], model=model_dir, symmetrize=True)
    v = r["voigt_GPa"]
    assert v[0, 0] == pytest.approx(v[1, 1], abs=1e-9) == pytest.approx(v[2, 2], abs=1e-9)
    assert abs(v[0, 3]) < 1e-9


def test_ensemble_gives_standard_deviations(ensemble_dir):
    model = inference.load_model(ensemble_dir)
    assert model.n_members == 3
    [r] = inference.predict([quartz_structure()], model=model)
    assert r["n_members"] == 3
    assert r["voigt_std_GPa"].shape == (6, 6)
    assert np.all(r["voigt_std_GPa"] >= 0) and r["voigt_std_GPa"].max() > 0
    assert r["K_VRH_std_GPa"] > 0 and r["G_VRH_std_GPa"] > 0


def test_cli_json_schema_and_failures(model_dir, tmp_path, capsys):
    quartz_structure().to(filename=str(tmp_path / "quartz.cif"))
    (tmp_path / "empty.cif").write_text("")
    (tmp_path / "garbage.cif").write_bytes(bytes(range(256)))
    out = tmp_path / "pred.json"
    rc = cli.main(
        [
            "predict",
            str(tmp_path / "*.cif"),
            "--model",
            str(model_dir),
            "--format",
            "json",
            "--out",
            str(out),
        ]
    )
    assert rc == 1  # two inputs failed
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 3
    by_file = {r["file"].rsplit("/", 1)[-1]: r for r in rows}
    for r in rows:
        assert JSON_KEYS <= set(r)
    ok = by_file["quartz.cif"]
    assert ok["error"] is None
    assert np.asarray(ok["voigt_GPa"]).shape == (6, 6)
    assert isinstance(ok["born_stable"], bool)
    for key in (
        "K_VRH_GPa",
        "G_VRH_GPa",
        "youngs_modulus_GPa",
        "poisson_ratio",
        "universal_anisotropy",
    ):
        assert isinstance(ok[key], float)
    for bad in ("empty.cif", "garbage.cif"):
        assert by_file[bad]["error"] and by_file[bad]["voigt_GPa"] is None
    err = capsys.readouterr().err
    assert "empty.cif" in err and "garbage.cif" in err


def test_cli_table_and_csv(model_dir, tmp_path, capsys):
    quartz_structure().to(filename=str(tmp_path / "quartz.cif"))
    assert cli.main(["predict", str(tmp_path), "--model", str(model_dir)]) == 0
    assert "Voigt stiffness" in capsys.readouterr().out
    assert cli.main(["predict", str(tmp_path), "--model", str(model_dir), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("file,formula,K_VRH_GPa") and len(lines) == 2


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    quartz_structure().to(filename=str(tmp_path / "quartz.cif"))
    rc = cli.main(["predict", str(tmp_path / "quartz.cif"), "--model", "no-such-model"])
    assert rc == 2
    assert "no-such-model" in capsys.readouterr().err


def test_one_input_gives_one_prediction_object(model_dir, tmp_path):
    from pymatgen.core import Structure

    from e3elastic.prediction import Prediction

    s = quartz_structure()
    s.to(filename=str(tmp_path / "q.cif"))
    (tmp_path / "more").mkdir()
    s.to(filename=str(tmp_path / "more" / "a.cif"))
    s.to(filename=str(tmp_path / "more" / "b.cif"))
    one = inference.predict(s, model=model_dir)
    assert isinstance(one, Prediction) and one.ok  # one result, not one per site
    from_path = inference.predict(str(tmp_path / "q.cif"), model=model_dir)
    assert isinstance(from_path, Prediction)  # not one per character
    assert np.allclose(from_path.voigt, one.voigt, rtol=1e-5, atol=1e-4)
    et = one.to_pymatgen()
    assert et.k_vrh == pytest.approx(one.K_VRH_GPa, rel=1e-9)
    assert np.allclose(one.compliance_voigt @ one.voigt, np.eye(6), atol=1e-9)
    assert json.loads(json.dumps(one.to_dict()))["formula"] == "SiO2"
    assert "K_VRH" in repr(one)
    folder = inference.predict(tmp_path / "more", model=model_dir)
    globbed = inference.predict(str(tmp_path / "more" / "*.cif"), model=model_dir)
    assert [p.ok for p in folder] == [p.ok for p in globbed] == [True, True]
    listed = inference.predict([s, Structure.from_file(str(tmp_path / "q.cif"))], model=model_dir)
    assert isinstance(listed, list) and len(listed) == 2
