"""The ``e3elastic`` command line: one program, several subcommands.

Subcommands import their heavy dependencies (JAX, pymatgen) only when they run, so
``e3elastic tensor`` starts quickly.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from e3elastic import __version__
from e3elastic.config import THEORIES


class CLIError(Exception):
    """An error whose message is shown to the user without a traceback."""


# --------------------------------------------------------------------------------------
# e3elastic tensor
# --------------------------------------------------------------------------------------
def _read_voigt_file(path: str) -> np.ndarray:
    """Read a 6x6 Voigt matrix (GPa) from JSON (a 6x6 list, or {"voigt_GPa": ...}) or text."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise CLIError(f"{path}: cannot read file ({err.strerror})") from None
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            for key in ("voigt_GPa", "elastic_tensor_voigt_GPa", "voigt", "elastic_tensor"):
                if key in obj:
                    obj = obj[key]
                    break
            else:
                raise CLIError(f"{path}: JSON object has no 'voigt_GPa' key")
        return np.asarray(obj, dtype=float)
    except json.JSONDecodeError:
        pass
    except (TypeError, ValueError) as err:
        raise CLIError(f"{path}: not a 6x6 matrix of numbers ({err})") from None
    try:
        rows = [line.replace(",", " ").split() for line in text.splitlines()]
        rows = [r for r in rows if r and not r[0].startswith("#")]
        return np.array([[float(x) for x in r] for r in rows])
    except ValueError as err:
        raise CLIError(f"{path}: not a 6x6 matrix of numbers ({err})") from None


def _format_tensor_report(name: str, voigt: np.ndarray) -> str:
    from e3elastic import tensors

    props = tensors.derived_properties(voigt)
    lines = [f"{name}", "  Voigt stiffness C_IJ (GPa), order 11 22 33 23 13 12:"]
    for row in voigt:
        lines.append("    " + " ".join(f"{x:9.2f}" for x in row))
    rows = [
        ("bulk modulus K   (Voigt/Reuss/Hill)", "K_V_GPa", "K_R_GPa", "K_VRH_GPa", "GPa"),
        ("shear modulus G  (Voigt/Reuss/Hill)", "G_V_GPa", "G_R_GPa", "G_VRH_GPa", "GPa"),
    ]
    for label, a, b, c, unit in rows:
        lines.append(
            f"  {label}: {props[a]:8.2f} {props[b]:8.2f} {props[c]:8.2f} {unit}"
        )
    lines += [
        f"  Young's modulus E (Hill)            : {props['youngs_modulus_GPa']:8.2f} GPa",
        f"  Poisson's ratio nu (Hill)           : {props['poisson_ratio']:8.4f}",
        f"  universal anisotropy A^U            : {props['universal_anisotropy']:8.4f}",
        f"  Born stability (min Mandel eigval)  : {props['min_eigenvalue_GPa']:8.2f} GPa "
        f"-> {'stable' if props['born_stable'] else 'UNSTABLE'}",
    ]
    axes = np.eye(3)
    e_dir = tensors.directional_youngs_modulus(voigt, axes)
    beta = tensors.linear_compressibility(voigt, axes)
    lines.append(
        "  E along x, y, z                     : "
        + " ".join(f"{x:8.2f}" for x in e_dir)
        + " GPa"
    )
    lines.append(
        "  linear compressibility x, y, z      : "
        + " ".join(f"{1000 * x:8.3f}" for x in beta)
        + " 1/TPa"
    )
    return "\n".join(lines)


def _cmd_tensor(args: argparse.Namespace) -> int:
    from e3elastic import examples, tensors

    jobs: list[tuple[str, np.ndarray]] = []
    if args.example:
        names = examples.EXAMPLE_TENSORS if args.example == ["all"] else args.example
        for name in names:
            if name not in examples.EXAMPLE_TENSORS:
                known = ", ".join(sorted(examples.EXAMPLE_TENSORS))
                raise CLIError(f"unknown example tensor {name!r}; known: {known}, all")
            jobs.append((examples.describe(name), examples.example_voigt(name)))
    for path in args.files:
        jobs.append((path, _read_voigt_file(path)))
    if not jobs:
        raise CLIError("give a file with a 6x6 Voigt matrix, or --example NAME (or 'all')")
    failed = 0
    reports = []
    for name, voigt in jobs:
        try:
            tensors.compliance_voigt(voigt)  # validates shape, symmetry, finiteness
            if args.json:
                props = tensors.derived_properties(voigt)
                reports.append(
                    {"name": name, "voigt_GPa": voigt.tolist(), "error": None}
                    | {k: (bool(v) if v.dtype == bool else float(v)) for k, v in props.items()}
                )
            else:
                print(_format_tensor_report(name, voigt), end="\n\n")
        except ValueError as err:
            failed += 1
            if args.json:
                reports.append({"name": name, "error": str(err)})
            print(f"error: {name}: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps(reports, indent=2))
    return 1 if failed else 0


# --------------------------------------------------------------------------------------
# e3elastic data
# --------------------------------------------------------------------------------------
def _cmd_data(args: argparse.Namespace) -> int:
    from e3elastic import data

    try:
        if args.data_command == "summary":
            return data.cli_summary(args)
        if args.data_command == "fetch-mp":
            return data.cli_fetch_mp(args)
    except data.DataError as err:
        raise CLIError(str(err)) from None
    raise CLIError("usage: e3elastic data {summary,fetch-mp} ...")


# --------------------------------------------------------------------------------------
# e3elastic train | evaluate | predict
# --------------------------------------------------------------------------------------
def _config_from_args(args: argparse.Namespace):
    from e3elastic import config as cfgmod

    try:
        cfg = cfgmod.preset(args.config)
        sets = list(args.set or [])
        if args.data is not None:
            sets.append(f"data.data={json.dumps(args.data)}")
        if args.subset is not None:
            sets.append(f"data.subset={json.dumps(args.subset)}")
        for name in ("epochs", "seed"):
            if getattr(args, name) is not None:
                sets.append(f"train.{name}={getattr(args, name)}")
        if args.float64:
            sets.append('train.dtype="float64"')
        return cfg.override(sets)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _cmd_train(args: argparse.Namespace) -> int:
    from e3elastic import checkpoint, data, graph, runtime, train

    runtime.enable_compilation_cache()
    cfg = _config_from_args(args)
    workdir = args.workdir or f"checkpoints/{cfg.name}"
    try:
        out = train.train_and_evaluate(cfg, workdir, resume=args.resume)
    except (train.TrainingError, data.DataError, graph.GraphError, checkpoint.CheckpointError) as e:
        raise CLIError(str(e)) from None
    test = out.get("test", {})
    if test.get("n"):
        print(
            f"test: {test['n']} crystals, MAE {test['mae_voigt_GPa']:.2f} GPa, relative "
            f"Frobenius error {test['rel_frobenius']:.3f}; bundle in {workdir}/best"
        )
    return 0


def _print_metrics_table(m: dict) -> None:
    rows = [("all", m), *sorted(m.get("by_crystal_system", {}).items())]
    print(
        f"{'group':<14}{'n':>6}{'MAE Voigt':>11}{'rel Frob':>10}{'EwT5':>7}{'EwT10':>7}"
        f"{'EwT25':>7}{'MAE K':>8}{'MAE G':>8}"
    )
    for name, r in rows:
        if not r.get("n"):
            continue
        print(
            f"{name:<14}{r['n']:>6}{r['mae_voigt_GPa']:>11.2f}{r['rel_frobenius']:>10.3f}"
            f"{r['ewt_5']:>7.2f}{r['ewt_10']:>7.2f}{r['ewt_25']:>7.2f}"
            f"{r['mae_K_VRH_GPa']:>8.2f}{r['mae_G_VRH_GPa']:>8.2f}"
        )
    print("(GPa; rel Frob = mean ||C_pred - C|| / ||C||; EwT = share under 5/10/25 %)")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from e3elastic import checkpoint, data, graph, runtime, train

    runtime.enable_compilation_cache()
    try:
        m = train.evaluate_model(args.model, args.data, split=args.split)
    except (train.TrainingError, data.DataError, graph.GraphError, checkpoint.CheckpointError) as e:
        raise CLIError(str(e)) from None
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(m, fh, indent=2)
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(f"model {m['model']}; evaluated on {m['evaluated']}")
        _print_metrics_table(m)
    return 0


def _format_predictions(results: list, fmt: str) -> str:
    from e3elastic.inference import to_json_ready

    if fmt == "json":
        return json.dumps([to_json_ready(r) for r in results], indent=2)
    if fmt == "csv":
        import csv
        import io

        keys = ["file", "formula", "K_VRH_GPa", "G_VRH_GPa", "youngs_modulus_GPa",
                "poisson_ratio", "universal_anisotropy", "born_stable", "error", "warnings"]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(keys + [f"C{i + 1}{j + 1}" for i in range(6) for j in range(i, 6)])
        for r in results:
            v = r.get("voigt_GPa")
            comps = [] if v is None else [f"{v[i][j]:.4f}" for i in range(6) for j in range(i, 6)]
            row = [r.get(k) if r.get(k) is not None else "" for k in keys]
            row[keys.index("warnings")] = " | ".join(r.get("warnings") or [])
            w.writerow(row + comps)
        return buf.getvalue()
    lines = []
    for r in results:
        head = r.get("file") or r.get("id") or "structure"
        if r["error"] is not None:
            lines.append(f"{head}: FAILED: {r['error']}\n")
            continue
        lines.append(f"{head}: {r['formula']}")
        for warning in r.get("warnings") or []:
            lines.append(f"  WARNING {warning}")
        lines.append("  Voigt stiffness C_IJ (GPa), order 11 22 33 23 13 12:")
        std = r.get("voigt_std_GPa")
        for i, row in enumerate(r["voigt_GPa"]):
            cells = "".join(f"{x:10.2f}" for x in row)
            if std is not None:
                cells += "   +- " + " ".join(f"{s:5.1f}" for s in std[i])
            lines.append("  " + cells)
        lines.append(
            f"  K_VRH {r['K_VRH_GPa']:.1f} GPa, G_VRH {r['G_VRH_GPa']:.1f} GPa, "
            f"E {r['youngs_modulus_GPa']:.1f} GPa, nu {r['poisson_ratio']:.3f}, "
            f"A^U {r['universal_anisotropy']:.3f}, "
            f"{'Born stable' if r['born_stable'] else 'NOT Born stable'}\n"
        )
    return "\n".join(lines)


def _cmd_predict(args: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()
    from e3elastic import inference as pr
    from e3elastic import runtime

    runtime.enable_compilation_cache()
    inputs: list = pr.expand_paths(args.paths)
    if args.mp_id:
        from e3elastic import data

        try:
            inputs += [data.fetch_mp_structure(m) for m in args.mp_id]
        except data.DataError as e:
            raise CLIError(str(e)) from None
    if not inputs:
        raise CLIError("nothing to predict: give structure files, folders, globs or --mp-id")
    try:
        model = pr.load_model(args.model)
    except pr.PredictError as e:
        raise CLIError(str(e)) from None

    def bar(done: int, total: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\rpredicting {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    try:
        model.theory_index(args.theory)
    except pr.PredictError as e:
        raise CLIError(str(e)) from None
    results = pr.predict(
        inputs, model, symmetrize=args.symmetrize, progress=bar, theory=args.theory
    )
    text = _format_predictions(results, args.format)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
    else:
        print(text)
    failed = [r for r in results if r["error"] is not None]
    for r in failed:
        print(f"error: {r.get('file') or r.get('id')}: {r['error']}", file=sys.stderr)
    print(
        f"{len(results) - len(failed)} of {len(results)} structures predicted in "
        f"{time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _add_model_commands(sub) -> None:
    tr = sub.add_parser(
        "train",
        help="train the equivariant model",
        description="Train on the data folder's PBE (or SiO2) tensors; writes checkpoints, "
        "metrics.jsonl and an inference bundle (best/) to --workdir.",
    )
    tr.add_argument("--config", default="default", choices=("default", "tiny", "large"))
    tr.add_argument("--data", default=None, help="data folder or file")
    tr.add_argument("--subset", default=None, choices=("pbe", "sio2", "all"))
    tr.add_argument("--workdir", default=None, help="run folder (default checkpoints/CONFIG)")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    tr.add_argument("--epochs", type=int, default=None)
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--float64", action="store_true", help="train in double precision")
    tr.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE",
        help="override any setting, e.g. --set model.n_layers=3 (repeatable)",
    )
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="metrics of a trained model on a dataset")
    ev.add_argument("--model", required=True, help="bundle folder or run folder")
    ev.add_argument("--data", default=None, help="data folder or file")
    ev.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--out", default=None, help="also write the metrics JSON here")
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser(
        "predict",
        help="predict elastic tensors of structure files",
        description="Predict C (GPa) in the frame of each structure as given. Reads any file "
        "pymatgen reads (CIF, POSCAR, ...), folders and globs.",
    )
    pr.add_argument("paths", nargs="*", help="structure files, folders or glob patterns")
    pr.add_argument("--model", default=None, help="shipped model name or bundle folder")
    pr.add_argument("--format", default="table", choices=("table", "json", "csv"))
    pr.add_argument("--symmetrize", action="store_true", help="impose the point group exactly")
    pr.add_argument(
        "--theory",
        default="pbe",
        choices=[t.lower() for t in THEORIES],
        help="level of theory of the predicted tensor (default pbe; b3lyp-d2 for the "
        "SiO2 zeolites' functional)",
    )
    pr.add_argument("--out", default=None, help="write to this file instead of stdout")
    pr.add_argument("--mp-id", action="append", default=[], help="a Materials Project id")
    pr.set_defaults(func=_cmd_predict)


def _cmd_plot(args: argparse.Namespace) -> int:
    from e3elastic import plots

    fmt = args.format
    if args.kind == "parity":
        from e3elastic import checkpoint, data, graph, runtime, train

        if not args.model:
            raise CLIError("plot parity needs --model (a bundle or run folder)")
        runtime.enable_compilation_cache()
        try:
            m = train.evaluate_model(args.model, args.data, split=args.split, return_arrays=True)
        except (train.TrainingError, data.DataError, graph.GraphError,
                checkpoint.CheckpointError) as e:
            raise CLIError(str(e)) from None
        out = args.out if args.out.endswith((".png", ".svg")) else f"{args.out}.{fmt}"
        path = plots.parity(m["pred_voigt"], m["true_voigt"], out,
                            title=f"{m['evaluated']} (n={m['n']})")
        print(path)
        return 0
    if not args.inputs:
        raise CLIError(f"plot {args.kind} needs a structure file or a 6x6 Voigt file")
    for src in args.inputs:
        if src.lower().endswith((".txt", ".csv", ".json")) and args.kind == "voigt":
            voigt, title = _read_voigt_file(src), src
        elif args.kind == "voigt":
            raise CLIError(f"{src}: plot voigt reads a 6x6 matrix (.txt, .csv or .json)")
        else:
            from e3elastic import inference as pr
            from e3elastic import runtime

            runtime.enable_compilation_cache()
            try:
                [r] = pr.predict([src], model=args.model, symmetrize=args.symmetrize)
            except pr.PredictError as e:
                raise CLIError(str(e)) from None
            if r["error"] is not None:
                raise CLIError(f"{src}: {r['error']}")
            voigt, title = r["voigt_GPa"], f"{r['formula']} ({src}, predicted)"
        stem = src.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        prefix = f"{args.out}_{stem}" if len(args.inputs) > 1 else args.out
        try:
            paths = plots.plot_tensor(voigt, prefix, fmt=fmt, title=title)
        except (ValueError, ImportError) as e:
            raise CLIError(str(e)) from None
        for p in paths:
            print(p)
    return 0


def _add_plot_command(sub) -> None:
    pl = sub.add_parser(
        "plot",
        help="directional Young's modulus, linear compressibility and parity plots",
        description="'structure': predict C for structure files and plot it; 'voigt': plot a "
        "given 6x6 tensor; 'parity': predicted against DFT values of an evaluation run.",
    )
    pl.add_argument("kind", choices=("structure", "voigt", "parity"))
    pl.add_argument("inputs", nargs="*", help="structure files (structure) or 6x6 files (voigt)")
    pl.add_argument("--model", default=None, help="model name or folder")
    pl.add_argument("--data", default=None, help="data for 'parity'")
    pl.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    pl.add_argument("--symmetrize", action="store_true")
    pl.add_argument("--out", default="e3elastic_plot", help="output file prefix")
    pl.add_argument("--format", default="png", choices=("png", "svg"))
    pl.set_defaults(func=_cmd_plot)


# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="e3elastic",
        description="Elasticity tensors of crystals: an equivariant network and a tensor toolkit.",
    )
    p.add_argument("--version", action="version", version=f"e3elastic {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "tensor",
        help="derived moduli of a given elastic tensor",
        description="Print Voigt/Reuss/Hill moduli, Young's modulus, Poisson's ratio, "
        "anisotropy and Born stability of 6x6 Voigt tensors (GPa).",
    )
    t.add_argument("files", nargs="*", help="files holding a 6x6 Voigt matrix (JSON or text)")
    t.add_argument("--example", nargs="+", metavar="NAME", help="a built-in tensor, or 'all'")
    t.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t.set_defaults(func=_cmd_tensor)

    d = sub.add_parser("data", help="read, validate and summarise elastic-tensor datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser(
        "summary",
        help="entries read, kept and dropped per source",
        description="Read, align, validate and de-duplicate the data, then print per-source "
        "counts, counts by crystal system and level of theory, SiO2 entries and split sizes.",
    )
    ds.add_argument(
        "--data",
        default=None,
        help="data folder or file (default: $E3ELASTIC_DATA, else ../shared/data)",
    )
    ds.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ds.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    ds.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder (default: $E3ELASTIC_CACHE, else ~/.cache/e3elastic)",
    )
    ds.add_argument("--subset", choices=("all", "pbe", "sio2"), default="all")
    ds.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest relative symmetry residual kept (default 0.05)",
    )
    ds.add_argument("--max-sites", type=int, default=200, help="largest structure kept (sites)")
    ds.add_argument(
        "--keep-unstable", action="store_true", help="keep tensors that are not positive definite"
    )
    ds.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    ds.add_argument(
        "--holdout",
        choices=("id", "composition"),
        default="id",
        help="split by id, or keep each reduced formula in one part",
    )
    ds.add_argument(
        "--save-split", metavar="FILE", default=None, help="also write the split ids as JSON"
    )
    df = dsub.add_parser(
        "fetch-mp", help="download MP elastic tensors (needs mp-api and MP_API_KEY)"
    )
    df.add_argument("--out", required=True, help="output JSON file in the e3elastic user format")
    df.add_argument("--limit", type=int, default=None, help="at most this many entries")
    d.set_defaults(func=_cmd_data)
    _add_model_commands(sub)
    _add_plot_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
