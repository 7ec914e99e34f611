"""Programs of the network shipped with the package (e3elastic.inference.programs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import quartz_structure

jax = pytest.importorskip("jax")

from e3elastic import graph, inference  # noqa: E402
from e3elastic.inference import bundle, programs  # noqa: E402
from e3elastic.network import interface  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STALE = "the shipped programs are stale: run `python scripts/export_programs.py` and commit"


@pytest.fixture(scope="module")
def default_model():
    return inference.load_model("default")


def test_shipped_programs_are_those_of_the_current_network(default_model):
    """One set of programs for every network of the shipped models: `default` and each
    architecture of the (possibly mixed) `ensemble`, and no other."""
    index = json.loads((programs.SHIPPED_DIR / "index.json").read_text())
    ensemble = inference.load_model("ensemble")
    configs = {
        programs.network_key(m.config): m.config
        for m in (default_model, ensemble, *ensemble.others)
    }
    assert set(index) == set(configs), STALE
    for key, config in configs.items():
        for stem in index[key]["programs"]:
            assert (programs.SHIPPED_DIR / f"{stem}.bin").is_file(), STALE
        assert programs.shipped_param_shapes(config) == bundle._traced_param_shapes(config)


def test_network_key_follows_the_model_config(default_model):
    config = default_model.config
    other = config.override([f"model.n_radial={config.model.n_radial + 1}"])
    assert programs.network_key(other) != programs.network_key(config)
    assert programs.shipped_param_shapes(other) is None


def test_shipped_program_computes_what_the_traced_network_does(default_model):
    from e3elastic.network.model import ElasticityNet

    g = graph.structure_to_graph(quartz_structure(), default_model.config.model.cutoff)
    (bucket,) = programs.inference_buckets([g], 8)
    batch = next(iter(graph.batches([g], batch_size=8, buckets=(bucket,))))
    inputs = interface.batch_inputs(batch)
    params = default_model.members[0][0]
    sig = programs.inputs_signature(inputs)
    shipped = programs._shipped_program(
        default_model.config, sig, programs.params_signature(params), "cpu", False
    )
    assert shipped is not None, "a crystal of 9 sites must use a shipped program"
    got = np.asarray(jax.jit(shipped.call)(params, inputs))
    want = np.asarray(jax.jit(ElasticityNet(default_model.config.model).apply)(params, inputs))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_first_run_on_a_new_machine_neither_traces_nor_imports_the_network(
    default_model, tmp_path
):
    code = (
        "import sys, json; from e3elastic import inference; "
        "p = inference.predict('examples/silicon.cif', 'default'); "
        "print(json.dumps([p['K_VRH_GPa'], 'flax' in sys.modules, 'e3nn_jax' in sys.modules]))"
    )
    env = dict(os.environ, E3ELASTIC_CACHE=str(tmp_path), E3ELASTIC_JAX_CACHE="off")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    k, flax_imported, e3nn_imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert not flax_imported and not e3nn_imported
    # The shipped program computes what the traced network does here, to float32 rounding
    # (outputs agree to 1e-5, see above; K is a smooth function of them).
    here = inference.predict(str(ROOT / "examples" / "silicon.cif"), default_model)
    assert k == pytest.approx(here["K_VRH_GPa"], rel=1e-5)
    # Silicon is a training crystal (mp-149; PBE K_VRH 83.0 GPa in matminer 2015): the model
    # fits it within 10 %; 15 % leaves room for a retrained model, not for a broken one.
    assert abs(k - 83.0) < 0.15 * 83.0, k


def test_many_crystals_are_padded_by_size_and_come_back_in_order():
    from pymatgen.core import Lattice, Structure

    small = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    big = quartz_structure() * (3, 3, 2)
    order = [big, small, small, small, big, small, small, small, small, small]
    graphs = [graph.structure_to_graph(s, 5.0) for s in order]
    theory = np.arange(len(graphs)) % 2
    buckets = programs.inference_buckets(graphs, 4)
    assert len(buckets) > 1 and buckets[0].n_edge < buckets[-1].n_edge
    assert len(programs.inference_buckets(graphs[:4], 4)) == 1  # one batch: one shape

    calls = []

    def apply(params, inputs):  # per graph: its real node count and its level of theory
        calls.append(len(inputs["species"]))
        real = inputs["node_mask"]
        counts = np.bincount(inputs["node_graph"][real], minlength=len(inputs["graph_mask"]))
        out = np.zeros((len(inputs["graph_mask"]), 21))
        out[:, 0], out[:, 1] = counts, inputs["theory"]
        return out

    stats = {"shift": np.zeros(21), "scale": np.ones(21)}
    out = interface.predict_irreps(apply, [(None, stats)], graphs, buckets, 4, theory=theory)
    np.testing.assert_array_equal(out[0, :, 0], [g.n_node for g in graphs])
    np.testing.assert_array_equal(out[0, :, 1], theory)
    # batched by size: the two large crystals share one batch, and the small crystals' batches
    # are not padded to the shape that holds them
    assert len(calls) == 3 and calls.count(max(calls)) == 1 and min(calls) < max(calls)
