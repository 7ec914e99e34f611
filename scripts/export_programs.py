"""Export the shipped models' network as compiled programs shipped with the package.

    python scripts/export_programs.py [--model default --model ensemble]

Writes ``e3elastic/compiled/``: for every network that the models use (by default the shipped
``default`` and each architecture of the shipped ``ensemble``), one ``jax.export`` program
(StableHLO, CPU, float32) per padded input shape that a prediction of one to a few crystals
uses, and ``index.json`` with each network's key and parameter shapes. Rerun it whenever the
model's source files change (``tests/test_programs.py`` fails until then); files of older
networks are removed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (nodes, edges) of the buckets shipped, with inference's default batch size: one crystal of
#: up to 63 sites and 4095 neighbour pairs, or a few small ones (90 % of the data's crystals
#: alone fall in the first).
BUCKETS = ((64, 1024), (64, 2048), (64, 4096), (128, 2048), (128, 4096))
BATCH_SIZE = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="default: default and ensemble")
    args = ap.parse_args()

    import jax
    from jax import export

    jax.config.update("jax_platforms", "cpu")
    from e3elastic import inference
    from e3elastic.files import atomic_write
    from e3elastic.inference import bundle, programs
    from e3elastic.network import interface
    from e3elastic.network.model import ElasticityNet

    networks = {}  # network key -> (config, params of one member)
    for name in args.model or ["default", "ensemble"]:
        loaded = inference.load_model(name)
        for m in (loaded, *loaded.others):
            networks.setdefault(programs.network_key(m.config), (m.config, m.members[0][0]))
    out = programs.SHIPPED_DIR
    out.mkdir(parents=True, exist_ok=True)
    index, stems = {}, []
    for key, (config, params) in networks.items():
        apply = jax.jit(ElasticityNet(config.model).apply)
        entry = []
        for n_node, n_edge in BUCKETS:
            inputs = interface.dummy_inputs(n_node, n_edge, BATCH_SIZE + 1)
            stem = programs.program_digest(
                key,
                programs.inputs_signature(inputs),
                programs.params_signature(params),
                "cpu",
                False,
            )
            blob = export.export(apply, platforms=["cpu"])(params, inputs).serialize()
            atomic_write(out / f"{stem}.bin", blob)
            entry.append(stem)
            print(f"{n_node:5d} nodes {n_edge:6d} edges  {stem}.bin  {len(blob) / 1024:.0f} KiB")
        shapes = bundle._traced_param_shapes(config)  # from the network itself
        index[key] = {"param_shapes": shapes, "programs": entry, "buckets": BUCKETS}
        stems += entry
        print(f"network {key}: {len(entry)} programs")
    atomic_write(out / "index.json", json.dumps(index, indent=1, sort_keys=True) + "\n")
    for f in out.glob("*.bin"):
        if f.stem not in stems:
            f.unlink()
    print(f"{len(index)} networks, {len(stems)} programs in {out}")


if __name__ == "__main__":
    main()
