"""Record the training crystals' nearest-neighbour contacts in bundles made before training did.

    python scripts/bundle_contacts.py e3elastic/pretrained/default \\
        e3elastic/pretrained/ensemble/member_* [--data DIR]

Training writes ``training_set.contacts`` (:func:`e3elastic.inference.domain.contact_table`)
into every bundle's ``info.json``; the ``strained`` warning compares a structure's
nearest-neighbour distances with it. For a bundle without it, this rebuilds the graphs of the
first bundle's training split (its ``info.json`` lists the ids) from the data folder (default:
``$E3ELASTIC_DATA`` or ``../shared/data``), and writes the table into ``info.json`` of every
bundle given that has the same training split, updating its ``MANIFEST.json`` entry. The
weights, config and statistics are not touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("bundles", nargs="+", help="bundle folders (the first one's split is used)")
    ap.add_argument("--data", default=None, help="data folder (default: $E3ELASTIC_DATA)")
    args = ap.parse_args(argv)

    from e3elastic import data as data_mod
    from e3elastic.inference import domain
    from e3elastic.inference.bundle import _sha256, load_bundle
    from e3elastic.training.prepare import graph_cache_dir, graphs_for_records

    bundles = [Path(b) for b in args.bundles]
    config, _, _, info = load_bundle(bundles[0])
    train_ids = info["split"]["train"]
    if args.data is not None:
        config = config.override([f"data.data={json.dumps(args.data)}"])
    ds = data_mod.load_for_config(config)
    by_id = {r.id: r for r in ds.records}
    missing = [i for i in train_ids if i not in by_id]
    if missing:
        print(f"error: {len(missing)} training crystals not in the data (e.g. {missing[0]})")
        return 2
    _, graphs, bad = graphs_for_records(
        [by_id[i] for i in train_ids], config.model.cutoff, graph_cache_dir()
    )
    table = domain.contact_table(graphs)
    print(f"{len(graphs)} training crystals ({len(bad)} without a graph): {len(table)} pairs")
    for b in bundles:
        path = b / "info.json"
        b_info = json.loads(path.read_text())
        if b_info["split"]["train"] != train_ids:
            print(f"skipped {b}: another training split")
            continue
        b_info["training_set"]["contacts"] = table
        path.write_text(json.dumps(b_info, indent=2, sort_keys=True))
        manifest = json.loads((b / "MANIFEST.json").read_text())
        manifest["info.json"] = _sha256(path)
        (b / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        load_bundle(b)  # checks the manifest
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
