"""e3elastic.plots: the numbers behind the figures, input checks, and the files written.

The sampled values are checked against closed forms computed here from the Voigt
compliance S = inv(C) (numpy only): for a cubic crystal E[100] = 1/S11 and
1/E[110] = S11 - (S11 - S12 - S44/2)/2; for a hexagonal one E is isotropic in the basal
plane, E[001] = 1/S33, beta[100] = S11 + S12 + S13, beta[001] = 2 S13 + S33.

The figure tests need matplotlib and are skipped, saying so, when it is not installed.
"""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from e3elastic import plots, tensors
from e3elastic.examples import example_voigt
from e3elastic.plots import directional

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mpl():
    return pytest.importorskip(
        "matplotlib", reason="matplotlib is not installed: figure tests need e3elastic[plot]"
    )


def silicon():
    return example_voigt("silicon")


def magnesium():
    return example_voigt("magnesium")


def negative_compressibility_tensor() -> np.ndarray:
    """An orthotropic, positive-definite stiffness that expands along x under pressure.

    Built from its compliance (1/GPa): beta_x = S11 + S12 + S13 = (1 - 0.7 - 0.7) / 100 < 0.
    """
    s = np.zeros((6, 6))
    s[:3, :3] = [[1.0, -0.7, -0.7], [-0.7, 2.0, 0.5], [-0.7, 0.5, 2.0]]
    s[3, 3] = s[4, 4] = s[5, 5] = 3.0
    s /= 100.0
    C = np.linalg.inv(s)
    C = 0.5 * (C + C.T)
    assert np.linalg.eigvalsh(C).min() > 0  # mechanically stable
    return C


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000, f"{path} is suspiciously small ({len(data)} bytes)"
    assert data.startswith(PNG_MAGIC), f"{path} is not a PNG"


def assert_svg(path):
    data = path.read_bytes()
    assert len(data) > 1000
    root = ET.fromstring(data)
    assert root.tag in ("svg", "{http://www.w3.org/2000/svg}svg"), root.tag


def assert_image(path, suffix):
    assert path.is_file()
    assert path.suffix == suffix
    (assert_png if suffix == ".png" else assert_svg)(path)


# --------------------------------------------------------------------------------------
# numbers: section_values against closed forms
# --------------------------------------------------------------------------------------
def test_silicon_youngs_100_and_110_by_hand():
    C = silicon()
    S = np.linalg.inv(C)  # Voigt compliance, 1/GPa
    e100 = 1.0 / S[0, 0]
    e110 = 1.0 / (S[0, 0] - 0.5 * (S[0, 0] - S[0, 1] - 0.5 * S[3, 3]))
    assert e100 == pytest.approx(130.2, abs=0.5)  # the textbook E[100] of silicon
    assert e110 == pytest.approx(169.1, abs=0.5)
    sec = plots.section_values(C, "xy", n_angles=361)
    assert sec.unit == "GPa" and sec.quantity == "youngs" and sec.plane == "xy"
    assert sec.angles[0] == 0.0 and sec.angles[-1] == pytest.approx(2 * math.pi)
    np.testing.assert_allclose(sec.directions[0], [1.0, 0.0, 0.0])
    assert sec.values[0] == pytest.approx(e100, rel=1e-12)
    assert sec.values[-1] == pytest.approx(e100, rel=1e-12)  # the curve closes
    k45 = 45  # 1-degree steps
    assert sec.angles[k45] == pytest.approx(math.pi / 4)
    assert sec.values[k45] == pytest.approx(e110, rel=1e-12)
    # cubic: the three coordinate planes are alike, and [100] is the softest direction
    for plane in ("xz", "yz"):
        other = plots.section_values(C, plane, n_angles=361)
        np.testing.assert_allclose(other.values, sec.values, rtol=1e-12)
    assert sec.values.min() == pytest.approx(e100, rel=1e-12)
    assert sec.values.max() == pytest.approx(e110, rel=1e-12)


def test_section_directions_are_unit_vectors_in_the_plane():
    for plane, (i, j) in plots.PLANES.items():
        sec = plots.section_values(silicon(), plane, n_angles=13)
        np.testing.assert_allclose(np.linalg.norm(sec.directions, axis=-1), 1.0)
        k = 3 - i - j
        assert np.all(sec.directions[:, k] == 0.0)
        np.testing.assert_allclose(sec.directions[:, i], np.cos(sec.angles), atol=1e-15)
        np.testing.assert_allclose(sec.directions[:, j], np.sin(sec.angles), atol=1e-15)


def test_magnesium_youngs_by_hand():
    C = magnesium()
    S = np.linalg.inv(C)
    basal = plots.section_values(C, "xy", n_angles=73)
    # transversely isotropic: E is the same for every direction in the basal plane
    np.testing.assert_allclose(basal.values, 1.0 / S[0, 0], rtol=1e-12)
    xz = plots.section_values(C, "xz", n_angles=5)  # 0, 90, 180, 270, 360 degrees
    np.testing.assert_allclose(xz.values[[0, 2, 4]], 1.0 / S[0, 0], rtol=1e-12)
    np.testing.assert_allclose(xz.values[[1, 3]], 1.0 / S[2, 2], rtol=1e-12)


def test_compressibility_by_hand_in_per_tpa():
    S = np.linalg.inv(silicon())
    sec = plots.section_values(silicon(), "xz", n_angles=37, quantity="compressibility")
    assert sec.unit == "1/TPa"
    # cubic: isotropic, beta = S11 + 2 S12 = 1 / (3 K)
    np.testing.assert_allclose(sec.values, 1000.0 * (S[0, 0] + 2.0 * S[0, 1]), rtol=1e-12)
    k = float(tensors.bulk_modulus(silicon())["voigt"])
    np.testing.assert_allclose(sec.values, 1000.0 / (3.0 * k), rtol=1e-12)

    S = np.linalg.inv(magnesium())
    sec = plots.section_values(magnesium(), "yz", n_angles=5, quantity="compressibility")
    np.testing.assert_allclose(sec.values[0], 1000.0 * (S[0, 0] + S[0, 1] + S[0, 2]))
    np.testing.assert_allclose(sec.values[1], 1000.0 * (2.0 * S[0, 2] + S[2, 2]))


def test_negative_compressibility_is_kept_signed():
    C = negative_compressibility_tensor()
    sec = plots.section_values(C, "xy", n_angles=361, quantity="compressibility")
    assert sec.values[0] == pytest.approx(1000.0 * (1.0 - 0.7 - 0.7) / 100.0, rel=1e-9)
    assert sec.values.min() < 0 < sec.values.max()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"plane": "xx"}, "plane"),
        ({"n_angles": 2}, "n_angles"),
        ({"n_angles": 10.5}, "n_angles"),
        ({"quantity": "shear"}, "quantity"),
    ],
)
def test_section_values_rejects_bad_arguments(kwargs, match):
    args = {"plane": "xy", "n_angles": 9, "quantity": "youngs", **kwargs}
    with pytest.raises(ValueError, match=match):
        plots.section_values(silicon(), **args)


def bad_tensors():
    asym = silicon()
    asym[0, 1] += 5.0
    nan = silicon()
    nan[2, 2] = np.nan
    singular = np.zeros((6, 6))
    singular[:3, :3] = 10.0
    return {
        "wrong shape": (np.eye(5), "shape"),
        "asymmetric": (asym, "symmetric"),
        "NaN": (nan, "NaN"),
        "singular": (singular, "singular"),
        "batch": (np.stack([silicon(), magnesium()]), "batch"),
        "not numbers": ([["a"] * 6] * 6, "real numbers"),
    }


@pytest.mark.parametrize("case", sorted(bad_tensors()))
def test_bad_tensor_raises_before_drawing(case, tmp_path):
    C, match = bad_tensors()[case]
    with pytest.raises(ValueError, match=match):
        plots.section_values(C, "xy")
    for fn in (plots.youngs_surface, plots.youngs_sections, plots.compressibility_sections):
        out = tmp_path / f"{fn.__name__}.png"
        with pytest.raises(ValueError, match=match):
            fn(C, out)
        assert not out.exists()


def test_cartesian_input_gives_the_same_numbers():
    C = magnesium()
    a = plots.section_values(C, "xz", n_angles=19)
    b = plots.section_values(tensors.voigt_to_cartesian(C), "xz", n_angles=19)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12)


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
CASES = [("silicon", ".png"), ("magnesium", ".svg")]


@pytest.mark.parametrize(("name", "suffix"), CASES)
def test_youngs_surface_writes_image(mpl, tmp_path, name, suffix):
    out = plots.youngs_surface(example_voigt(name), tmp_path / f"s{suffix}", resolution=16)
    assert out == tmp_path / f"s{suffix}"
    assert_image(out, suffix)


@pytest.mark.parametrize(("name", "suffix"), CASES)
def test_youngs_sections_writes_image(mpl, tmp_path, name, suffix):
    out = plots.youngs_sections(example_voigt(name), tmp_path / f"e{suffix}", title=name)
    assert_image(out, suffix)


@pytest.mark.parametrize(("name", "suffix"), CASES)
def test_compressibility_sections_writes_image(mpl, tmp_path, name, suffix):
    out = plots.compressibility_sections(example_voigt(name), str(tmp_path / f"b{suffix}"))
    assert_image(out, suffix)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_parity_writes_image(mpl, tmp_path, suffix):
    names = ["silicon", "magnesium", "alpha-quartz", "stishovite"]
    true = np.stack([example_voigt(n) for n in names])
    noise = np.random.default_rng(0).normal(0.0, 2.0, true.shape)
    pred = true + 0.5 * (noise + np.swapaxes(noise, -1, -2))
    out = plots.parity(pred, true, tmp_path / f"p{suffix}", labels=names, title="test")
    assert_image(out, suffix)


def test_parity_accepts_cartesian_and_single_tensors(mpl, tmp_path):
    C = silicon()
    out = plots.parity(tensors.voigt_to_cartesian(1.02 * C), C, tmp_path / "one.png")
    assert_png(out)


def test_parity_rejects_mismatched_inputs(tmp_path):
    a = np.stack([silicon(), magnesium()])
    with pytest.raises(ValueError, match="same number"):
        plots.parity(a, a[:1], tmp_path / "p.png")
    with pytest.raises(ValueError, match="labels"):
        plots.parity(a, a, tmp_path / "p.png", labels=["only one"])
    with pytest.raises(ValueError, match="empty"):
        plots.parity(a[:0], a[:0], tmp_path / "p.png")
    with pytest.raises(ValueError, match="suffix"):
        plots.parity(a, a, tmp_path / "p.pdf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", ["plot.jpg", "plot", "plot.png.txt", "plot.PDF"])
def test_bad_suffix_raises(tmp_path, bad):
    out = tmp_path / bad
    for fn in (plots.youngs_surface, plots.youngs_sections, plots.compressibility_sections):
        with pytest.raises(ValueError, match=r"\.png or \.svg"):
            fn(silicon(), out)
    with pytest.raises(ValueError, match="suffix"):
        plots.parity(silicon(), silicon(), out)
    assert not list(tmp_path.iterdir())


def test_upper_case_suffix_is_accepted(mpl, tmp_path):
    assert_png(plots.youngs_sections(silicon(), tmp_path / "E.PNG"))


def test_missing_parent_folder_is_created(mpl, tmp_path):
    out = plots.youngs_sections(silicon(), tmp_path / "a" / "b" / "e.svg")
    assert_svg(out)


def test_unstable_tensor_has_no_youngs_plot(tmp_path):
    C = silicon()
    C[3, 3] = C[4, 4] = C[5, 5] = -10.0  # negative shear stiffness: not positive definite
    with pytest.raises(ValueError, match="positive definite"):
        plots.youngs_sections(C, tmp_path / "e.png")
    with pytest.raises(ValueError, match="positive definite"):
        plots.youngs_surface(C, tmp_path / "s.png")


def test_surface_resolution_is_checked(tmp_path):
    for bad in (3, 20.0, True):
        with pytest.raises(ValueError, match="resolution"):
            plots.youngs_surface(silicon(), tmp_path / "s.png", resolution=bad)


# --------------------------------------------------------------------------------------
# what is drawn is what was computed
# --------------------------------------------------------------------------------------
def test_plotted_youngs_radius_is_e100(mpl, tmp_path):
    C = silicon()
    e100 = 1.0 / np.linalg.inv(C)[0, 0]
    out, sections = plots.youngs_sections(C, tmp_path / "e.png", return_data=True)
    assert_png(out)
    assert list(sections) == ["xy", "xz", "yz"]
    assert sections["xy"].values[0] == pytest.approx(e100, rel=1e-12)
    fig = directional._youngs_sections_figure(sections, None)
    ax = fig.axes[0]
    assert ax.get_title().startswith("xy")
    (line,) = ax.get_lines()
    theta, r = line.get_data()
    assert theta[0] == 0.0
    assert r[0] == pytest.approx(e100, rel=1e-12)
    np.testing.assert_array_equal(r, sections["xy"].values)


def test_negative_compressibility_is_visible(mpl, tmp_path):
    C = negative_compressibility_tensor()
    out, sections = plots.compressibility_sections(C, tmp_path / "b.png", return_data=True)
    assert_png(out)
    fig = directional._compressibility_figure(sections, None)
    ax_xy = fig.axes[0]
    dashed = [ln for ln in ax_xy.get_lines() if ln.get_linestyle() == "--"]
    solid = [ln for ln in ax_xy.get_lines() if ln.get_linestyle() == "-"]
    assert len(dashed) == 1 and len(solid) == 1
    assert dashed[0].get_color() != solid[0].get_color()
    assert dashed[0].get_label() == plots.NEGATIVE_LABEL
    legend = [t.get_text() for t in ax_xy.get_legend().get_texts()]
    assert plots.NEGATIVE_LABEL in legend
    # the dashed curve carries |beta| where beta < 0, e.g. along +x
    beta = sections["xy"].values
    assert beta[0] < 0
    assert dashed[0].get_ydata()[0] == pytest.approx(-beta[0])
    assert np.isnan(solid[0].get_ydata()[0])
    # the yz plane has no negative direction: one solid curve, and the legend says so
    ax_yz = fig.axes[2]
    assert [ln.get_linestyle() for ln in ax_yz.get_lines()] == ["-"]
    assert "every direction" in ax_yz.get_legend().get_title().get_text()


def test_silicon_has_no_negative_compressibility_curve(mpl):
    sections = {
        p: plots.section_values(silicon(), p, 91, "compressibility") for p in "xy xz".split()
    }
    fig = directional._compressibility_figure(sections, "Si")
    for ax in fig.axes:
        assert all(ln.get_label() != plots.NEGATIVE_LABEL for ln in ax.get_lines())


# --------------------------------------------------------------------------------------
# plot_tensor
# --------------------------------------------------------------------------------------
def test_plot_tensor_writes_every_kind(mpl, tmp_path):
    paths = plots.plot_tensor(magnesium(), tmp_path / "mg", fmt="svg", resolution=12)
    names = [p.name for p in paths]
    assert names == [
        "mg_youngs_surface.svg",
        "mg_youngs_sections.svg",
        "mg_compressibility_sections.svg",
    ]
    for p in paths:
        assert_svg(p)


def test_plot_tensor_selection(mpl, tmp_path):
    paths = plots.plot_tensor(silicon(), tmp_path / "si", kinds=("sections",), fmt=".PNG")
    assert [p.name for p in paths] == ["si_youngs_sections.png"]
    assert_png(paths[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"fmt": "jpg"}, "fmt"), ({"kinds": ("surface", "hull")}, "kinds"), ({"kinds": ()}, "kinds")],
)
def test_plot_tensor_rejects_bad_options(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_tensor(silicon(), tmp_path / "x", **kwargs)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------
# without matplotlib
# --------------------------------------------------------------------------------------
def test_missing_matplotlib_gives_a_clear_import_error(monkeypatch, tmp_path):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` fail
    # numbers need no matplotlib
    assert plots.section_values(silicon(), "xy", 5).values.shape == (5,)
    with pytest.raises(ImportError, match=r"matplotlib.*pip install"):
        plots.youngs_sections(silicon(), tmp_path / "e.png")
    # input errors are still reported as such
    with pytest.raises(ValueError, match="suffix"):
        plots.youngs_sections(silicon(), tmp_path / "e.gif")
