"""``e3elastic evaluate``: metrics of a trained model on a dataset, as a table or JSON, and
per-crystal predictions (JSON or CSV)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import SPLIT_CHOICES
from .output import check_output_path, show_messages, write_output


def run_evaluation(args: argparse.Namespace) -> dict:
    """:func:`e3elastic.training.evaluation.evaluate` of ``--model`` on ``--data``, ``--split``."""
    from e3elastic import runtime
    from e3elastic.training import evaluation

    show_messages()
    runtime.enable_compilation_cache()
    return evaluation.evaluate(args.model, args.data, split=args.split)


def _print_metrics_table(m: dict, mae_definition: str) -> None:
    rows = [("all", m), *sorted(m.get("by_crystal_system", {}).items())]
    print(
        f"{'group':<14}{'n':>6}{'MAE Voigt':>11}{'rel Frob':>10}{'EwT5':>7}{'EwT10':>7}"
        f"{'EwT25':>7}{'MAE K':>8}{'MAE G':>8}"
    )
    for name, r in rows:
        if not r.get("n"):
            continue
        # each cell after the first keeps a space before it, however wide its number
        cells = [
            f"{r['n']:>5}",
            f"{r['mae_voigt_GPa']:>10.2f}",
            f"{r['rel_frobenius']:>9.3f}",
            *(f"{r[k]:>6.2f}" for k in ("ewt_5", "ewt_10", "ewt_25")),
            f"{r['mae_K_VRH_GPa']:>7.2f}",
            f"{r['mae_G_VRH_GPa']:>7.2f}",
        ]
        print(f"{name:<14}" + "".join(" " + c for c in cells))
    print(
        f"({mae_definition}; rel Frob = mean ||C_pred - C|| / ||C||; EwT = share of crystals "
        "with rel Frob under 5/10/25 %; MAE K/G of the Hill averages, GPa)"
    )


def _print_coverage(res: dict) -> None:
    """How often an ensemble's sigma covers the error, and whether it is calibrated."""
    scale = res["sigma_scale"]
    factors = ", ".join(f"{k} x{v:.2f}" for k, v in scale.items())
    print(f"ensemble sigma: {'calibrated (' + factors + ')' if scale else 'uncalibrated'}")
    print(f"{'quantity':<10}{'n':>7}{'within 1 sigma':>16}{'within 2 sigma':>16}")
    for q, c in res["coverage"].items():
        print(f"{q:<10}{c['n']:>7}{c['within_1_sigma']:>16.2f}{c['within_2_sigma']:>16.2f}")


def _crystals_csv(rows: list[dict], moduli_rows: list[dict] = ()) -> str:
    """One CSV row per crystal: the crystals with a tensor, then those with K/G only (blank
    reference tensor and tensor errors); the predicted 6x6 upper triangle for every crystal,
    and for ensembles its standard deviation."""
    import csv
    import io

    every = [*rows, *moduli_rows]
    keys: list[str] = []
    for r in every:
        keys += [k for k in r if not k.endswith("voigt_GPa") and k not in keys]
    std = any("voigt_std_GPa" in r for r in every)
    keys = [k for k in keys if k != "voigt_std_GPa"]
    upper = [(i, j) for i in range(6) for j in range(i, 6)]

    def entries(r: dict, key: str) -> list[str]:
        m = r.get(key)
        return [f"{m[i][j]:.4f}" if m is not None else "" for i, j in upper]

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        keys
        + [f"C{i + 1}{j + 1}_pred" for i, j in upper]
        + [f"C{i + 1}{j + 1}_true" for i, j in upper]
        + ([f"C{i + 1}{j + 1}_std" for i, j in upper] if std else [])
    )
    for r in every:
        w.writerow(
            [r.get(k, "") for k in keys]
            + entries(r, "pred_voigt_GPa")
            + entries(r, "true_voigt_GPa")
            + (entries(r, "voigt_std_GPa") if std else [])
        )
    return buf.getvalue()


def _print_moduli(mm: dict) -> None:
    """The K/G-only crystals' line of the report."""
    print(
        f"K/G-only crystals (n={mm['n']}): MAE K_VRH {mm['mae_K_VRH_GPa']:.2f} GPa, "
        f"G_VRH {mm['mae_G_VRH_GPa']:.2f} GPa; MAE log10 K {mm['mae_log10_K_VRH']:.4f}, "
        f"log10 G {mm['mae_log10_G_VRH']:.4f}"
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from e3elastic.inference.prediction import to_json_ready

    check_output_path(args.out)
    res = run_evaluation(args)
    report = {k: v for k, v in res.items() if k != "arrays"}
    if args.out:
        if Path(args.out).suffix.lower() == ".csv":
            moduli_rows = report.get("moduli_only", {}).get("crystals", [])
            write_output(args.out, _crystals_csv(report["crystals"], moduli_rows))
        else:
            write_output(args.out, json.dumps(to_json_ready(report), indent=2))
    if args.json:
        summary = {k: v for k, v in report.items() if k != "crystals"}
        if "moduli_only" in summary:
            summary["moduli_only"] = {
                k: v for k, v in summary["moduli_only"].items() if k != "crystals"
            }
        print(json.dumps(to_json_ready(summary), indent=2))
        return 0
    print(
        f"model {res['model']} ({res['model_version']}, {res['members']} member(s)); "
        f"evaluated on {res['evaluated']}"
    )
    if res["metrics"]["n"]:
        _print_metrics_table(res["metrics"], res["mae_definition"])
    if "coverage" in res:
        _print_coverage(res)
    if "moduli_only" in res:
        _print_moduli(res["moduli_only"]["metrics"])
        skipped = res["moduli_only"]["skipped"]
        if skipped:
            print(f"skipped {len(skipped)} K/G-only crystal(s) whose graph failed", file=sys.stderr)
    if res["skipped"]:
        print(f"skipped {len(res['skipped'])} crystal(s) whose graph failed", file=sys.stderr)
    from e3elastic.data import Dropped, describe_dropped

    for line in describe_dropped([Dropped(**d) for d in res.get("dropped", [])]):
        print(line, file=sys.stderr)
    if args.out:
        print(f"per-crystal predictions written to {args.out}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="metrics of a trained model on a dataset")
    ev.add_argument(
        "--model",
        required=True,
        help="shipped model name (default, ensemble), bundle, run or ensemble folder",
    )
    ev.add_argument("--data", default=None, help="data folder or file")
    ev.add_argument("--split", default="test", choices=SPLIT_CHOICES)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument(
        "--out",
        default=None,
        help="also write metrics and per-crystal predictions here (.json; .csv: one row per "
        "crystal)",
    )
    ev.set_defaults(func=_cmd_evaluate)
