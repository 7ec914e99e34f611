"""``e3elastic data summary | fetch-mp``: the dataset a training run sees, and a download of
Materials Project tensors."""

from __future__ import annotations

import argparse
import json

from .options import PRESETS, SUBSETS, config_from_args, holdout_choice

#: Options of ``data summary`` and the settings they set.
_SUMMARY_OPTIONS = {
    "data": "data.data",
    "subset": "data.subset",
    "tolerance": "data.tolerance",
    "max_sites": "data.max_sites",
    "seed": "data.seed",
    "holdout": "data.holdout",
}


def _cmd_summary(args: argparse.Namespace) -> int:
    """``e3elastic data summary``: print the report (table, or JSON with ``--json``) of the
    dataset a training run of ``--config`` (with the options given) sees."""
    from e3elastic import data

    ds = data.load_for_config(
        config_from_args(args, _SUMMARY_OPTIONS),
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        progress=not args.json,
    )
    if args.json:
        report = ds.report
        if args.dropped:
            report = report | {"dropped_entries": [d._asdict() for d in ds.dropped]}
        print(json.dumps(report, indent=2))
    else:
        print(data.format_report(ds.report))
        if args.dropped:
            print("")
            print("\n".join(data.describe_dropped(ds.dropped, limit=len(ds.dropped))))
        elif ds.dropped:
            print("\n".join(data.describe_dropped(ds.dropped)))
    if args.save_split:
        ds.save_split(args.save_split)
    return 0


def _cmd_fetch_mp(args: argparse.Namespace) -> int:
    """``e3elastic data fetch-mp --out FILE [--limit N]``."""
    from e3elastic import data

    written, skipped = data.fetch_mp(args.out, limit=args.limit)
    print(f"wrote {written} entries to {args.out} ({skipped} skipped)")
    return 0


def _add_summary_parser(dsub) -> None:
    ds = dsub.add_parser(
        "summary",
        help="entries read, kept and dropped per source",
        description="Read, align, validate and de-duplicate the data as training with --config "
        "would (its data settings and model cutoff), then print per-source counts, counts by "
        "crystal system and level of theory, SiO2 entries and split sizes.",
    )
    ds.add_argument(
        "--data",
        default=None,
        help="data folder or file (default: $E3ELASTIC_DATA, else ../shared/data)",
    )
    ds.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ds.add_argument(
        "--dropped",
        action="store_true",
        help="name every dropped entry (id, source, reason); with --json as 'dropped_entries'",
    )
    ds.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    ds.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder (default: $E3ELASTIC_CACHE, else ~/.cache/e3elastic)",
    )
    ds.add_argument(
        "--config",
        default="default",
        choices=PRESETS,
        help="preset whose data settings and model cutoff apply (default: default)",
    )
    ds.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a setting of the preset, e.g. --set model.cutoff=6 (repeatable)",
    )
    ds.add_argument("--subset", choices=SUBSETS, default=None)
    ds.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest relative symmetry residual kept (default: the config's, 0.05)",
    )
    ds.add_argument("--max-sites", type=int, default=None, help="largest structure kept (sites)")
    ds.add_argument(
        "--keep-unstable", action="store_true", help="keep tensors that are not positive definite"
    )
    ds.add_argument("--seed", type=int, default=None, help="seed of the train/val/test split")
    ds.add_argument(
        "--holdout",
        type=holdout_choice,
        default=None,
        metavar="{id,composition,formula:FORMULA}",
        help="split by id; keep each reduced formula in one part; or put every crystal of "
        "one formula (e.g. formula:SiO2) in test",
    )
    ds.add_argument(
        "--save-split", metavar="FILE", default=None, help="also write the split ids as JSON"
    )
    ds.set_defaults(func=_cmd_summary)


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="read, validate and summarise elastic-tensor datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    _add_summary_parser(dsub)
    df = dsub.add_parser(
        "fetch-mp", help="download MP elastic tensors (needs mp-api and MP_API_KEY)"
    )
    df.add_argument("--out", required=True, help="output JSON file in the e3elastic user format")
    df.add_argument("--limit", type=int, default=None, help="at most this many entries")
    df.set_defaults(func=_cmd_fetch_mp)
