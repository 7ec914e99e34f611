"""e3elastic.predict / load_model and the `predict` command, with a small bundle built here."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import quartz_structure, random_model_stats, rotated_structure

jax = pytest.importorskip("jax")

from e3elastic import cli, inference, runtime, tensors  # noqa: E402
from e3elastic import config as cfg  # noqa: E402
from e3elastic.inference import bundle  # noqa: E402
from e3elastic.training import checkpoint as ckpt  # noqa: E402

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


def _bundle(path, seed, overrides=()):
    """A tiny model with random weights (predictions are arbitrary but deterministic)."""
    config = cfg.tiny().override(list(overrides))
    shapes = ckpt.expected_param_shapes(config)
    rng = np.random.default_rng(seed)
    params = ckpt.unflatten_params(
        {k: rng.normal(size=v).astype(np.float32) * 0.5 for k, v in shapes.items()}
    )
    stats = random_model_stats(config.model)
    return ckpt.export_bundle(path, config, params, stats, {"seed": seed})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("m") / "bundle", 0)


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    for k in range(3):
        _bundle(root / f"member_{k}", k)
    return root


WIDER = ("model.hidden_irreps=12x0e+3x1o+3x2e+2x4e",)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """An ensemble of two architectures: members 0 and 2 tiny, member 1 wider."""
    root = tmp_path_factory.mktemp("mixed")
    for k in range(3):
        _bundle(root / f"member_{k}", k, WIDER if k == 1 else ())
    return root


def test_mixed_ensemble_pools_every_architecture(mixed_dir):
    """A mixed ensemble's members are those of each architecture, each predicting as it
    would alone, and the mean is over all of them."""
    model = inference.load_model(mixed_dir)
    assert model.n_members == 3 and len(model.others) == 1
    assert model.config.model != model.others[0].config.model
    s = quartz_structure()
    [r] = inference.predict([s], model=model)
    alone = [inference.predict([s], model=mixed_dir / f"member_{k}")[0] for k in range(3)]
    mean = np.mean([a["voigt_GPa"] for a in alone], axis=0)
    assert np.abs(r["voigt_GPa"] - mean).max() < 1e-4 * np.abs(mean).max()
    wider = alone[1]["voigt_GPa"]
    assert np.abs(wider - alone[0]["voigt_GPa"]).max() > 1e-2  # the architectures differ
    std = np.std([a["voigt_GPa"] for a in alone], axis=0, ddof=1)
    assert np.abs(r["voigt_std_GPa"] - std).max() < 1e-3 * std.max() + 1e-6
    text = repr(model)
    assert "members=3" in text and " x2 + " in text and text.endswith(")")


def test_ensemble_members_must_build_the_same_graphs(tmp_path, capsys):
    _bundle(tmp_path / "ens" / "member_0", 0)
    _bundle(tmp_path / "ens" / "member_1", 1, ("model.cutoff=4.0",))
    with pytest.raises(inference.PredictError, match=r"cutoff 4\.0 against 5\.0"):
        inference.load_model(tmp_path / "ens")


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


def _distorted_rock_salt(strain=1e-3):
    """Rock salt whose lattice is cubic only within ~1e-3 (lengths and angles perturbed)."""
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    m = np.eye(3) + strain * np.array([[0.9, 0.3, -0.2], [0.1, -0.7, 0.4], [-0.3, 0.2, 0.5]])
    return Structure(Lattice(s.lattice.matrix @ m), s.species, s.frac_coords)


def test_symmetrize_imposes_point_group(model_dir):
    s = _distorted_rock_salt()
    raw = inference.predict(s, model=model_dir)
    r = inference.predict(s, model=model_dir, symmetrize=True)
    assert r.error is None, r.error
    assert abs(raw.voigt[0, 0] - raw.voigt[1, 1]) > 1e-6  # the raw prediction is not cubic
    rotations, _ = inference.symmetry(s)
    assert len(rotations) == 48
    closure = np.einsum("aij,bjk->abik", rotations, rotations).reshape(-1, 1, 9)
    assert np.abs(closure - rotations.reshape(1, -1, 9)).min(axis=1).max() < 1e-12  # a group
    assert tensors.symmetry_residual(r.voigt, rotations) < 1e-12
    assert tensors.symmetry_residual(raw.voigt, rotations) > 1e-6
    v = r["voigt_GPa"]  # cubic up to the ~1e-3 distortion of the frame
    assert v[0, 0] == pytest.approx(v[1, 1], rel=1e-5) == pytest.approx(v[2, 2], rel=1e-5)
    assert abs(v[0, 3]) < 1e-3 * v[0, 0]
    assert r["symmetry"]["space_group"] == "Fm-3m" and r["symmetry"]["point_group"] == "m-3m"
    assert r["symmetry"]["symprec"] == pytest.approx(inference.SYMPREC)


def test_symprec_controls_the_group_and_p1_is_reported(model_dir):
    s = _distorted_rock_salt(2e-2)
    loose = inference.predict(s, model=model_dir, symmetrize=True, symprec=0.2)
    tight = inference.predict(s, model=model_dir, symmetrize=True, symprec=1e-4)
    assert loose.error is None and tight.error is None
    assert loose.symmetry["point_group"] == "m-3m"
    assert tight.symmetry["point_group"] in ("1", "-1")
    assert any(w.startswith("symmetry-p1:") for w in tight.warnings)
    assert not any(w.startswith("symmetry-p1:") for w in loose.warnings)
    with pytest.raises(ValueError, match="symprec"):
        inference.predict(s, model=model_dir, symmetrize=True, symprec=-1.0)


def _failing_apply(model, fail_when):
    """Wrap the model's compiled apply: record input shapes, raise when fail_when(n_real)."""
    real = model.compiled()
    shapes = []

    def apply(params, inputs):
        shapes.append(tuple(sorted((k, np.shape(v)) for k, v in inputs.items())))
        n_real = int(np.sum(np.asarray(inputs["graph_mask"])))
        message = fail_when(n_real)
        if message:
            raise RuntimeError(message)
        return real(params, inputs)

    model._compiled = apply
    return shapes


def test_failed_batch_is_retried_without_recompiling(model_dir):
    model = inference.load_model(model_dir)
    shapes = _failing_apply(model, lambda n: "RESOURCE_EXHAUSTED: batch" if n > 1 else None)
    res = inference.predict([quartz_structure()] * 3, model=model)
    assert [r.ok for r in res] == [True] * 3
    assert len(shapes) >= 4 and len(set(shapes)) == 1  # the retries reuse the batch's shape


def test_failed_batch_keeps_its_first_error(model_dir):
    model = inference.load_model(model_dir)
    _failing_apply(model, lambda n: "RESOURCE_EXHAUSTED: first failure" if n > 1 else "single")
    res = inference.predict([quartz_structure()] * 2, model=model)
    for r in res:
        assert not r.ok
        assert "RESOURCE_EXHAUSTED: first failure" in r.error and "single" in r.error


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

    from e3elastic.inference.prediction import Prediction

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


def _predict_cli(*args):
    return cli.main(["predict", *map(str, args)])


def test_out_extension_picks_the_format_and_json_has_provenance(model_dir, tmp_path):
    quartz_structure().to(filename=str(tmp_path / "quartz.cif"))
    out = tmp_path / "pred.json"
    assert _predict_cli(tmp_path / "quartz.cif", "--model", model_dir, "--out", out) == 0
    [row] = json.loads(out.read_text())  # JSON without --format
    assert row["model"]["name"] == str(model_dir) and row["model"]["version"]
    assert row["theory"] == "PBE" and row["warnings"] == []
    assert np.allclose(row["lattice_A"], quartz_structure().lattice.matrix)
    assert row["symmetry"]["space_group"] in ("P3_121", "P3_221")
    assert row["symmetry"]["point_group"] == "32" and row["symmetry"]["symmetrized"] is False
    csv_out = tmp_path / "pred.csv"
    assert _predict_cli(tmp_path / "quartz.cif", "--model", model_dir, "--out", csv_out) == 0
    header = csv_out.read_text().splitlines()[0].split(",")
    assert header[:2] == ["file", "formula"] and "space_group" in header and "C11" in header
    txt = tmp_path / "pred.txt"
    assert _predict_cli(tmp_path / "quartz.cif", "--model", model_dir, "--out", txt) == 0
    assert "Voigt stiffness" in txt.read_text()


def test_unusable_out_path_fails_before_predicting(model_dir, tmp_path, capsys, monkeypatch):
    quartz_structure().to(filename=str(tmp_path / "quartz.cif"))

    def never(*a, **k):
        raise AssertionError("predicted although the output path is unusable")

    monkeypatch.setattr(inference, "predict", never)
    for out in (tmp_path / "missing" / "dir" / "x.json", tmp_path):
        rc = _predict_cli(tmp_path / "quartz.cif", "--model", model_dir, "--out", out)
        err = capsys.readouterr().err
        assert rc == 2 and "--out" in err and "Traceback" not in err
    rc = cli.main(["evaluate", "--model", str(model_dir), "--out", str(tmp_path / "no" / "x.json")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_ctrl_c_is_a_clean_exit(model_dir, tmp_path, capsys, monkeypatch):
    quartz_structure().to(filename=str(tmp_path / "quartz.cif"))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "predict", interrupted)
    assert _predict_cli(tmp_path / "quartz.cif", "--model", model_dir) == 130
    assert "interrupted" in capsys.readouterr().err


def _piped_to_head(command: str, cwd) -> tuple[int, str]:
    """Exit status and stderr of ``command | head -c 100`` (the reader leaves after 100
    bytes)."""
    import subprocess
    import sys

    run = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; {sys.executable} -m e3elastic.cli {command}"
            " | head -c 100 >/dev/null",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return run.returncode, run.stderr


def test_closed_pipe_gives_no_traceback(model_dir, tmp_path):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.to(filename=str(tmp_path / "mgo.cif"))
    # more output than a pipe buffer holds (64 kB), so the writer meets the closed pipe
    many = " ".join(["mgo.cif"] * 80)
    rc, err = _piped_to_head(f"predict {many} --model {model_dir} --format json", tmp_path)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc == 141, err  # stopped by the closed pipe, as Unix filters are
    rc, err = _piped_to_head("tensor --example " + " ".join(["silicon"] * 200), tmp_path)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc == 141, err


def test_model_repr_is_short(model_dir, ensemble_dir):
    text = repr(inference.load_model(model_dir))
    assert text.startswith("Model(") and "parameters=" in text and "members=1" in text
    assert len(text) < 300
    assert "members=3" in repr(inference.load_model(ensemble_dir))


def _cubic_data_file(path):
    """Three cubic crystals with textbook-like cubic tensors, in the user JSON format."""
    from pymatgen.core import Lattice, Structure

    def cubic(c11, c12, c44):
        v = np.zeros((6, 6))
        v[:3, :3] = c12
        v[np.arange(3), np.arange(3)] = c11
        v[np.arange(3, 6), np.arange(3, 6)] = c44
        return v.tolist()

    rows = [
        (
            "t-nacl",
            Structure.from_spacegroup(
                "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
            ),
            cubic(49, 13, 13),
        ),
        (
            "t-mgo",
            Structure.from_spacegroup(
                "Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
            ),
            cubic(297, 95, 156),
        ),
        (
            "t-cscl",
            Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
            cubic(36, 9, 8),
        ),
    ]
    path.write_text(
        json.dumps([{"id": i, "structure": s.as_dict(), "voigt_GPa": v} for i, s, v in rows])
    )
    return path


def test_evaluate_takes_names_and_ensembles_and_writes_per_crystal(
    model_dir, ensemble_dir, tmp_path, capsys
):
    data = _cubic_data_file(tmp_path / "cubic.json")
    out = tmp_path / "eval.json"
    rc = cli.main(["evaluate", "--model", str(model_dir), "--data", str(data), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "36 entries" in text  # the MAE definition is named
    rep = json.loads(out.read_text())
    # every crystal once (the rows follow the dataset's order, which is not promised)
    assert sorted(c["id"] for c in rep["crystals"]) == ["t-cscl", "t-mgo", "t-nacl"]
    row = rep["crystals"][0]
    assert np.asarray(row["pred_voigt_GPa"]).shape == (6, 6)
    err = np.abs(np.asarray(row["pred_voigt_GPa"]) - np.asarray(row["true_voigt_GPa"])).mean()
    assert row["mae_voigt_GPa"] == pytest.approx(err)
    maes = [c["mae_voigt_GPa"] for c in rep["crystals"]]
    assert rep["metrics"]["mae_voigt_GPa"] == pytest.approx(np.mean(maes))
    csv_out = tmp_path / "eval.csv"
    rc = cli.main(
        ["evaluate", "--model", str(ensemble_dir), "--data", str(data), "--out", str(csv_out)]
    )
    assert rc == 0 and "within 2 sigma" in capsys.readouterr().out
    lines = csv_out.read_text().strip().splitlines()
    assert len(lines) == 4 and "K_VRH_std_GPa" in lines[0]
    assert cli.main(["evaluate", "--model", "default", "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["n"] == 3


def test_evaluate_scores_crystals_with_only_k_and_g_and_writes_them_to_csv(
    model_dir, ensemble_dir, tmp_path, capsys
):
    import csv

    from pymatgen.core import Lattice, Structure

    data = json.loads(_cubic_data_file(tmp_path / "cubic.json").read_text())

    def rocksalt(a_el, b_el, a):
        s = Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(a), [a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]]
        )
        return s.as_dict()

    moduli = [
        {
            "id": "kg-kcl",
            "structure": rocksalt("K", "Cl", 6.29),
            "K_VRH_GPa": 17.0,
            "G_VRH_GPa": 9.0,
        },
        {
            "id": "kg-lif",
            "structure": rocksalt("Li", "F", 4.03),
            "K_VRH_GPa": 70.0,
            "G_VRH_GPa": 45.0,
        },
    ]
    mixed, only = tmp_path / "mixed.json", tmp_path / "only.json"
    mixed.write_text(json.dumps(data + moduli))
    only.write_text(json.dumps(moduli))

    out = tmp_path / "mixed.csv"
    args = ["evaluate", "--model", str(ensemble_dir), "--data", str(mixed), "--out", str(out)]
    assert cli.main(args) == 0
    rows = {r["id"]: r for r in csv.DictReader(out.read_text().splitlines())}
    assert set(rows) == {"t-nacl", "t-mgo", "t-cscl", "kg-kcl", "kg-lif"}
    kcl, lif, nacl = rows["kg-kcl"], rows["kg-lif"], rows["t-nacl"]
    assert float(kcl["K_VRH_true_GPa"]) == 17.0 and float(kcl["G_VRH_true_GPa"]) == 9.0
    assert kcl["C11_true"] == "" and kcl["rel_frobenius"] == ""
    assert float(kcl["C11_pred"]) > 0 and float(kcl["C11_std"]) > 0  # a full predicted tensor
    assert float(lif["G_VRH_true_GPa"]) == 45.0
    assert float(nacl["C11_true"]) == 49.0 and float(nacl["C11_std"]) > 0
    # the predicted K of a K/G-only row is the Hill average of its predicted tensor
    c = np.zeros((6, 6))
    for i in range(6):
        for j in range(i, 6):
            c[i, j] = c[j, i] = float(kcl[f"C{i + 1}{j + 1}_pred"])
    k_hill = tensors.bulk_modulus(c)["hill"]
    assert float(kcl["K_VRH_pred_GPa"]) == pytest.approx(k_hill, rel=1e-3)

    # a file with K/G alone is evaluated too
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(model_dir), "--data", str(only), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    mm = rep["moduli_only"]["metrics"]
    assert rep["metrics"]["n"] == 0 and mm["n"] == 2
    assert np.isfinite(mm["mae_G_VRH_GPa"]) and np.isfinite(mm["mae_K_VRH_GPa"])
    assert cli.main(["evaluate", "--model", str(model_dir), "--data", str(only)]) == 0
    text = capsys.readouterr().out
    assert "K/G-only crystals (n=2): MAE K_VRH" in text and "rel Frob" not in text


def test_ensemble_sigma_scale_is_applied(ensemble_dir, tmp_path):
    import shutil

    scaled = tmp_path / "scaled"
    shutil.copytree(ensemble_dir, scaled)
    (scaled / "calibration.json").write_text(
        json.dumps({"sigma_scale": {"voigt": 2.0, "K_VRH": 3.0, "G_VRH": 4.0}})
    )
    raw = inference.predict(quartz_structure(), model=ensemble_dir)
    cal = inference.predict(quartz_structure(), model=scaled)
    assert cal.K_VRH_std_GPa == pytest.approx(3.0 * raw.K_VRH_std_GPa)
    assert cal.G_VRH_std_GPa == pytest.approx(4.0 * raw.G_VRH_std_GPa)
    assert np.allclose(cal.voigt_std_GPa, 2.0 * raw.voigt_std_GPa)
    assert np.allclose(cal.voigt, raw.voigt)
    assert cal.model["sigma_calibrated"] is True and raw.model["sigma_calibrated"] is False


def _synthetic_ensemble(seed, n=300, members=5, bias=3.0, sigma=2.0):
    """Members = truth + a shared error (bias x sigma) + their own spread (sigma), in GPa."""
    from types import SimpleNamespace

    from e3elastic.training import evaluation

    rng = np.random.default_rng(seed)
    base = np.zeros((6, 6))
    base[:3, :3] = 60.0
    base[np.arange(6), np.arange(6)] = [200, 200, 200, 80, 80, 80]

    def sym(x):
        return (x + np.swapaxes(x, -1, -2)) / np.sqrt(2.0)

    true = base + sym(rng.normal(scale=10.0, size=(n, 6, 6)))
    shared = sym(rng.normal(scale=bias * sigma, size=(n, 6, 6)))
    own = sym(rng.normal(scale=sigma, size=(members, n, 6, 6)))
    records = [SimpleNamespace(voigt=t) for t in true]
    return evaluation.Evaluated(records, true + shared + own, [])


def test_sigma_scale_fit_calibrates_an_overconfident_ensemble():
    from e3elastic.training import evaluation

    fit_on, check_on = _synthetic_ensemble(0), _synthetic_ensemble(1)
    scale = evaluation.fit_sigma_scale(fit_on)
    # the shared error is ~3x the members' spread, and a 5-member spread is itself noisy
    # (|error| / sigma follows a t distribution with 4 degrees of freedom: 2.78 / 1.96 = 1.42)
    assert 3.0 * 1.2 < scale["voigt"] < 3.0 * 1.7
    raw = evaluation.coverage(check_on)
    cal = evaluation.coverage(check_on, scale)
    for q in evaluation.SIGMA_QUANTITIES:
        assert raw[q]["within_2_sigma"] < 0.7  # over-confident before
        assert 0.90 <= cal[q]["within_2_sigma"] <= 0.98, (q, cal[q])


def test_parameter_shapes_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("E3ELASTIC_CACHE", str(tmp_path))
    monkeypatch.setattr(bundle, "_SHAPES", {})
    config = cfg.tiny()
    traced = bundle._traced_param_shapes(config)
    assert ckpt.expected_param_shapes(config) == traced
    [cached] = list((tmp_path / "shapes").glob("*.json"))

    def no_trace(config):
        raise AssertionError("traced although the shapes are cached")

    monkeypatch.setattr(bundle, "_SHAPES", {})
    monkeypatch.setattr(bundle, "_traced_param_shapes", no_trace)
    assert ckpt.expected_param_shapes(config) == traced  # read back from disk
    other = cfg.tiny().override(["model.n_layers=3"])
    with pytest.raises(AssertionError, match="traced"):  # another architecture: another key
        ckpt.expected_param_shapes(other)
    cached.write_text("{not json")
    monkeypatch.setattr(bundle, "_SHAPES", {})
    monkeypatch.setattr(bundle, "_traced_param_shapes", lambda config: traced)
    assert ckpt.expected_param_shapes(config) == traced  # a damaged cache is rebuilt
    assert json.loads(cached.read_text())


def test_a_later_process_reuses_the_stored_program(model_dir, tmp_path, monkeypatch):
    pytest.importorskip("flatbuffers")
    from e3elastic.network.model import ElasticityNet

    monkeypatch.setenv("E3ELASTIC_CACHE", str(tmp_path))
    first = inference.predict(quartz_structure(), model=inference.load_model(model_dir))
    assert list((tmp_path / "exported").glob("*.bin"))

    def no_trace(self, *a, **k):
        raise AssertionError("the network was traced again")

    monkeypatch.setattr(ElasticityNet, "__call__", no_trace)
    again = inference.predict(quartz_structure(), model=inference.load_model(model_dir))
    assert again.ok and np.array_equal(again.voigt, first.voigt)
    for f in (tmp_path / "exported").glob("*.bin"):
        f.write_bytes(b"damaged")
    rebuilt = inference.predict(quartz_structure(), model=inference.load_model(model_dir))
    assert "traced again" in rebuilt.error  # a damaged program is not used: traced anew


def test_doctor_reports_devices_training_and_prediction(model_dir, capsys, monkeypatch):
    # the training check (compiling a training step) is stood in for: its numbers are only
    # printed; the real one runs in test_doctor_training_check (slow)
    from e3elastic import doctor

    fake = {"first_step_s": 1.25, "train_crystals_per_s": 432.4, "loss_finite": True}
    monkeypatch.setattr(doctor, "training_check", lambda: dict(fake))
    assert cli.main(["doctor", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "device 0: cpu" in out and "all predicted: True" in out
    assert "first step 1.2 s (compilation), then 432 crystals/s; loss finite: True" in out
    # the prediction check ran: 5 example crystals at some rate
    assert re.search(r"prediction \(\S+ model\): load [\d.]+ s, first call [\d.]+ s", out)

    monkeypatch.setattr(doctor, "training_check", lambda: fake | {"loss_finite": False})
    assert cli.main(["doctor", "--model", str(model_dir)]) == 1
    assert "error: a check gave non-finite or failed results" in capsys.readouterr().err


@pytest.mark.slow
def test_doctor_training_check():
    from e3elastic import doctor

    r = doctor.training_check(steps=2)
    assert r["loss_finite"] and r["first_step_s"] > 0 and r["train_crystals_per_s"] > 0


# --------------------------------------------------------------------------------------------
# level of theory
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbe_only_dir(tmp_path_factory):
    """A tiny model with no level-of-theory input (n_theories 0: PBE only)."""
    return _bundle(tmp_path_factory.mktemp("pbe") / "bundle", 0, ["model.n_theories=0"])


def test_theory_index_follows_the_list_of_levels(model_dir, pbe_only_dir):
    model = inference.load_model(model_dir)
    assert model.config.model.n_theories == 2
    assert model.theory_index(None) == model.theory_index("pbe") == 0
    assert model.theory_index("B3LYP-d2") == model.theory_index("b3lyp-d2") == 1
    with pytest.raises(inference.PredictError, match=r"unknown level of theory 'hse'.*b3lyp-d2"):
        model.theory_index("hse")
    pbe_only = inference.load_model(pbe_only_dir)
    assert pbe_only.theory_index("pbe") == 0
    with pytest.raises(inference.PredictError, match=r"trained for pbe only.*'b3lyp-d2'"):
        pbe_only.theory_index("b3lyp-d2")
    with pytest.raises(inference.PredictError, match="trained for pbe only"):
        inference.predict(quartz_structure(), model=pbe_only, theory="b3lyp-d2")


def test_b3lyp_d2_changes_the_prediction_and_is_reported(model_dir):
    s = quartz_structure()
    default = inference.predict(s, model=model_dir)
    pbe = inference.predict(s, model=model_dir, theory="pbe")
    b3 = inference.predict(s, model=model_dir, theory="b3lyp-d2")
    assert default.ok and pbe.ok and b3.ok
    assert np.array_equal(default.voigt, pbe.voigt)  # PBE is the default
    assert (pbe["theory"], b3["theory"]) == ("PBE", "B3LYP-D2")
    # the learned level vectors differ, so the tensors do: by far more than rounding
    assert np.abs(b3.voigt - pbe.voigt).max() > 1e-2 * np.abs(pbe.voigt).max()


def test_predict_theory_on_the_command_line(model_dir, pbe_only_dir, tmp_path, capsys):
    f = tmp_path / "quartz.cif"
    quartz_structure().to(filename=str(f))
    want = inference.predict(f, model=model_dir, theory="b3lyp-d2")
    capsys.readouterr()
    argv = ["predict", str(f), "--model", str(model_dir), "--format", "json"]
    assert cli.main([*argv, "--theory", "b3lyp-d2"]) == 0
    [got] = json.loads(capsys.readouterr().out)
    assert got["theory"] == "B3LYP-D2"
    np.testing.assert_allclose(got["voigt_GPa"], want.voigt, rtol=1e-6, atol=1e-6)
    assert cli.main(argv) == 0
    [pbe] = json.loads(capsys.readouterr().out)
    assert pbe["theory"] == "PBE" and not np.allclose(pbe["voigt_GPa"], got["voigt_GPa"])

    # an unknown level: refused by the parser, exit 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--theory", "hse"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'hse'" in capsys.readouterr().err
    # a level the model has no vector for: one line, exit 2, nothing predicted
    pbe_only = ["predict", str(f), "--model", str(pbe_only_dir), "--theory", "b3lyp-d2"]
    assert cli.main(pbe_only) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: ") and "pbe only" in out.err
    assert "Traceback" not in out.err


# --------------------------------------------------------------------------------------------
# predict --mp-id
# --------------------------------------------------------------------------------------------


def _fake_mp_api(monkeypatch, structure=None, error=None):
    """An mp-api stand-in whose client returns ``structure`` or raises ``error``."""
    import sys
    import types

    asked = []

    class MPRester:
        def __init__(self, api_key, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def get_structure_by_material_id(self, mid):
            asked.append(mid)
            if error is not None:
                raise error
            return structure

    pkg, client = types.ModuleType("mp_api"), types.ModuleType("mp_api.client")
    client.MPRester = MPRester
    pkg.client = client
    monkeypatch.setitem(sys.modules, "mp_api", pkg)
    monkeypatch.setitem(sys.modules, "mp_api.client", client)
    return asked


def test_predict_mp_id_offline_is_a_clear_error(model_dir, monkeypatch, capsys):
    import sys

    argv = ["predict", "--mp-id", "mp-149", "--model", str(model_dir)]
    monkeypatch.setenv("MP_API_KEY", "x" * 32)
    monkeypatch.setitem(sys.modules, "mp_api", None)  # mp-api not installed
    monkeypatch.setitem(sys.modules, "mp_api.client", None)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install" in err and "Traceback" not in err

    _fake_mp_api(monkeypatch, error=ConnectionError("Name or service not known"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot fetch mp-149" in err and "Name or service not known" in err
    assert len(err.strip().splitlines()) == 1

    monkeypatch.delenv("MP_API_KEY")
    assert cli.main(argv) == 2
    assert "MP_API_KEY" in capsys.readouterr().err


def test_predict_mp_id_predicts_the_downloaded_structure(model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MP_API_KEY", "x" * 32)
    asked = _fake_mp_api(monkeypatch, structure=quartz_structure())
    argv = ["predict", "--mp-id", "mp-7000", "--model", str(model_dir), "--format", "json"]
    assert cli.main(argv) == 0
    assert asked == ["mp-7000"]
    [got] = json.loads(capsys.readouterr().out)
    want = inference.predict(quartz_structure(), model=model_dir)
    assert got["error"] is None and got["formula"] == want["formula"]
    np.testing.assert_allclose(got["voigt_GPa"], want.voigt, rtol=1e-6, atol=1e-6)
