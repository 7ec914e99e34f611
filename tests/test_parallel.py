"""Data-parallel training on 4 virtual CPU devices equals single-device training.

Both runs take the same 4 padded sub-batches per step; one spreads them over a 4-device mesh
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``), the other runs them on one device.
The device count is fixed when JAX starts, so each run is its own process. Both use the scan
loop (each bucket's stacked steps sharded over the mesh once). A slow test also runs the python
loop on 4 devices, which takes the same steps one at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_train import _user_file

pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from e3elastic import config as cfg, data, runtime
    from e3elastic.training import train
    from e3elastic.training.prepare import messages_to
    runtime.enable_compilation_cache()
    f, workdir, cache, loop = sys.argv[1:5]
    config = cfg.tiny().override(["data.batch_size=2", "data.n_buckets=1", "train.epochs=2",
                                  "train.data_parallel=4", "train.learning_rate=0.003",
                                  f"train.loop={loop}"])
    ds = data.load_dataset(f, subset="all", cache_dir=cache)
    messages = []
    prep = train.prepare_data(config, dataset=ds)
    with messages_to(messages.append):
        train.train_and_evaluate(config, workdir, prepared=prep, progress=False)
    print(json.dumps({"devices": jax.device_count(), "log": messages}))
    """
)


def _run(tmp_path, name, n_devices, loop="scan"):
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if n_devices > 1:
        flags += f" --xla_force_host_platform_device_count={n_devices}"
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_PLATFORMS"] = "cpu"
    f = tmp_path / "rocksalt.json"
    if not f.exists():
        _user_file(f)
    workdir = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(f), str(workdir), str(tmp_path / "cache"), loop],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return info, lines


def test_sharded_training_matches_single_device(tmp_path):
    one, single = _run(tmp_path, "one", 1)
    four, sharded = _run(tmp_path, "four", 4)
    assert one["devices"] == 1 and four["devices"] == 4
    assert any("on 4 device(s)" in m for m in four["log"])
    assert any("on 1 device(s)" in m for m in one["log"])
    assert len(single) == len(sharded) == 2
    a = np.array([x["train_loss"] for x in single])
    b = np.array([x["train_loss"] for x in sharded])
    assert np.all(np.isfinite(a)) and a[0] != a[1]  # training moved
    np.testing.assert_allclose(b, a, rtol=1e-5)
    va = np.array([x["val"]["rel_frobenius"] for x in single if "val" in x])
    vb = np.array([x["val"]["rel_frobenius"] for x in sharded if "val" in x])
    np.testing.assert_allclose(vb, va, rtol=1e-4)


@pytest.mark.slow
def test_sharded_python_loop_matches_the_scan_loop(tmp_path):
    # the python loop, sharded the same way, takes the same steps one at a time
    _, sharded = _run(tmp_path, "four", 4)
    _, stepped = _run(tmp_path, "four-python", 4, loop="python")
    b = np.array([x["train_loss"] for x in sharded])
    c = np.array([x["train_loss"] for x in stepped])
    np.testing.assert_allclose(c, b, rtol=1e-5)
