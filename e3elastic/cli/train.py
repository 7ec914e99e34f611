"""``e3elastic train``: train the equivariant model and report its test metrics."""

from __future__ import annotations

import argparse

from .options import PRESETS, config_from_args
from .output import show_messages

#: Options of ``train`` and the settings they set.
_TRAIN_OPTIONS = {
    "data": "data.data",
    "subset": "data.subset",
    "epochs": "train.epochs",
    "seed": "train.seed",
}


def _cmd_train(args: argparse.Namespace) -> int:
    from e3elastic import runtime
    from e3elastic.training import train

    show_messages()
    runtime.enable_compilation_cache()
    cfg = config_from_args(args, _TRAIN_OPTIONS)
    workdir = args.workdir or f"checkpoints/{cfg.name}"
    out = train.train_and_evaluate(cfg, workdir, resume=args.resume)
    test = out.get("test", {})
    if test.get("n"):
        print(
            f"test: {test['n']} crystals, MAE {test['mae_voigt_GPa']:.2f} GPa, relative "
            f"Frobenius error {test['rel_frobenius']:.3f}; bundle in {workdir}/best"
        )
    return 0


def add_parser(sub) -> None:
    tr = sub.add_parser(
        "train",
        help="train the equivariant model",
        description="Train on the data folder's PBE (or SiO2) tensors; writes checkpoints, "
        "metrics.jsonl and an inference bundle (best/) to --workdir.",
    )
    tr.add_argument("--config", default="default", choices=PRESETS)
    tr.add_argument("--data", default=None, help="data folder or file")
    # options.SUBSETS with "all" last, the order this help has always shown
    tr.add_argument("--subset", default=None, choices=("pbe", "sio2", "all"))
    tr.add_argument("--workdir", default=None, help="run folder (default checkpoints/CONFIG)")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    tr.add_argument("--epochs", type=int, default=None)
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--float64", action="store_true", help="train in double precision")
    tr.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override any setting, e.g. --set model.n_layers=3 (repeatable)",
    )
    tr.set_defaults(func=_cmd_train)
