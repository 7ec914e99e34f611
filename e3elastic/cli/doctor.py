"""``e3elastic doctor``: the devices JAX sees, and the speed of training and prediction."""

from __future__ import annotations

import argparse
import sys


def _cmd_doctor(args: argparse.Namespace) -> int:
    from e3elastic import doctor

    result = doctor.run(args.model)
    ok = result["loss_finite"] and result["all_ok"]
    if not ok:
        print("error: a check gave non-finite or failed results", file=sys.stderr)
    return 0 if ok else 1


def add_parser(sub) -> None:
    doc = sub.add_parser(
        "doctor",
        help="devices JAX sees; speed of a short training and of a prediction",
        description="Print the devices JAX runs on, time a few training steps of the tiny "
        "config and a prediction of the example crystals, and report memory. Needs no data.",
    )
    doc.add_argument("--model", default="default", help="model for the prediction check")
    doc.set_defaults(func=_cmd_doctor)
