"""The ``e3elastic`` command line: one program, several subcommands.

Subcommands import their heavy dependencies (JAX, pymatgen) only when they run, so
``e3elastic tensor`` starts quickly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from e3elastic import __version__
from e3elastic.config import THEORIES

from .errors import E3ElasticError
from .files import atomic_write


class CLIError(E3ElasticError):
    """An error whose message is shown to the user without a traceback."""


#: Output formats chosen from the extension of ``--out`` when ``--format`` is not given.
_FORMAT_BY_SUFFIX = {".json": "json", ".csv": "csv"}


def _output_format(out: str | None, fmt: str | None, default: str = "table") -> str:
    if fmt is not None:
        return fmt
    if out is None:
        return default
    return _FORMAT_BY_SUFFIX.get(Path(out).suffix.lower(), default)


def _check_output_path(out: str | None) -> None:
    """Fail before any work when ``out`` cannot be written."""
    if out is None:
        return
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise CLIError(f"--out {out}: is a folder; give a file name")
    if not parent.is_dir():
        raise CLIError(f"--out {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CLIError(f"--out {out}: not writable")


def _write_output(out: str, text: str) -> None:
    """Write ``text`` to ``out`` through a temporary file, so a failure leaves no half file."""
    try:
        atomic_write(out, text if text.endswith("\n") else text + "\n")
    except OSError as e:
        raise CLIError(f"--out {out}: cannot write ({e.strerror or e})") from None


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
        lines.append(f"  {label}: {props[a]:8.2f} {props[b]:8.2f} {props[c]:8.2f} {unit}")
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
        "  E along x, y, z                     : " + " ".join(f"{x:8.2f}" for x in e_dir) + " GPa"
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
            return _data_summary(args)
        if args.data_command == "fetch-mp":
            return _data_fetch_mp(args)
    except data.DataError as err:
        raise CLIError(str(err)) from None
    raise CLIError("usage: e3elastic data {summary,fetch-mp} ...")


def _data_summary(args: argparse.Namespace) -> int:
    """``e3elastic data summary``: print the report (table, or JSON with ``--json``) of the
    dataset a training run of ``--config`` (with the options given) sees."""
    from e3elastic import data

    ds = data.load_for_config(
        _config_from_args(args, _SUMMARY_OPTIONS),
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(ds.report, indent=2))
    else:
        print(data.format_report(ds.report))
    if args.save_split:
        ds.save_split(args.save_split)
    return 0


def _data_fetch_mp(args: argparse.Namespace) -> int:
    """``e3elastic data fetch-mp --out FILE [--limit N]``."""
    from e3elastic import data

    written, skipped = data.fetch_mp(args.out, limit=args.limit)
    print(f"wrote {written} entries to {args.out} ({skipped} skipped)")
    return 0


# --------------------------------------------------------------------------------------
# e3elastic train | evaluate | predict
# --------------------------------------------------------------------------------------
#: Options of ``train`` and the settings they set.
_TRAIN_OPTIONS = {
    "data": "data.data",
    "subset": "data.subset",
    "epochs": "train.epochs",
    "seed": "train.seed",
}
#: Options of ``data summary`` and the settings they set.
_SUMMARY_OPTIONS = {
    "data": "data.data",
    "subset": "data.subset",
    "tolerance": "data.tolerance",
    "max_sites": "data.max_sites",
    "seed": "data.seed",
    "holdout": "data.holdout",
}


def _config_from_args(args: argparse.Namespace, options: dict[str, str] = _TRAIN_OPTIONS):
    """The ``--config`` preset with ``--set`` overrides, then the named ``options``."""
    from e3elastic import config as cfgmod

    try:
        cfg = cfgmod.preset(args.config)
        sets = list(args.set or [])
        for name, key in options.items():
            if getattr(args, name, None) is not None:
                sets.append(f"{key}={json.dumps(getattr(args, name))}")
        if getattr(args, "keep_unstable", False):
            sets.append("data.keep_unstable=true")
        if getattr(args, "float64", False):
            sets.append('train.dtype="float64"')
        return cfg.override(sets)
    except ValueError as err:
        raise CLIError(str(err)) from None


class _StderrLines(logging.Handler):
    """Each message as one line on the ``sys.stderr`` of the moment, flushed."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr, flush=True)


def _show_messages() -> None:
    """Show the package's progress messages (``logging``, level INFO) on stderr, once, and
    only there (not also through handlers that libraries put on the root logger)."""
    package = logging.getLogger("e3elastic")
    package.setLevel(logging.INFO)
    package.propagate = False
    if not any(isinstance(h, _StderrLines) for h in package.handlers):
        package.addHandler(_StderrLines())


def _cmd_train(args: argparse.Namespace) -> int:
    from e3elastic import checkpoint, data, graph, runtime, train

    _show_messages()
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


def _print_metrics_table(m: dict, mae_definition: str) -> None:
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
    print(
        f"({mae_definition}; rel Frob = mean ||C_pred - C|| / ||C||; EwT = share of crystals "
        "with rel Frob under 5/10/25 %; MAE K/G of the Hill averages, GPa)"
    )


def _evaluate(args: argparse.Namespace) -> dict:
    from e3elastic import checkpoint, data, evaluation, graph, runtime
    from e3elastic.prepare import TrainingError

    _show_messages()
    runtime.enable_compilation_cache()
    try:
        return evaluation.evaluate(args.model, args.data, split=args.split)
    except (
        evaluation.EvaluationError,
        TrainingError,
        data.DataError,
        graph.GraphError,
        checkpoint.CheckpointError,
    ) as e:
        raise CLIError(str(e)) from None


def _crystals_csv(rows: list[dict]) -> str:
    import csv
    import io

    keys = [k for k in rows[0] if not k.endswith("voigt_GPa")] if rows else []
    buf = io.StringIO()
    w = csv.writer(buf)
    upper = [(i, j) for i in range(6) for j in range(i, 6)]
    w.writerow(
        keys
        + [f"C{i + 1}{j + 1}_pred" for i, j in upper]
        + [f"C{i + 1}{j + 1}_true" for i, j in upper]
    )
    for r in rows:
        w.writerow(
            [r[k] for k in keys]
            + [f"{r['pred_voigt_GPa'][i][j]:.4f}" for i, j in upper]
            + [f"{r['true_voigt_GPa'][i][j]:.4f}" for i, j in upper]
        )
    return buf.getvalue()


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from e3elastic.prediction import to_json_ready

    _check_output_path(args.out)
    res = _evaluate(args)
    report = {k: v for k, v in res.items() if k != "arrays"}
    if args.out:
        if Path(args.out).suffix.lower() == ".csv":
            _write_output(args.out, _crystals_csv(report["crystals"]))
        else:
            _write_output(args.out, json.dumps(to_json_ready(report), indent=2))
    if args.json:
        print(
            json.dumps(
                to_json_ready({k: v for k, v in report.items() if k != "crystals"}), indent=2
            )
        )
        return 0
    print(
        f"model {res['model']} ({res['model_version']}, {res['members']} member(s)); "
        f"evaluated on {res['evaluated']}"
    )
    _print_metrics_table(res["metrics"], res["mae_definition"])
    if "coverage" in res:
        scale = res["sigma_scale"]
        factors = ", ".join(f"{k} x{v:.2f}" for k, v in scale.items())
        print(f"ensemble sigma: {'calibrated (' + factors + ')' if scale else 'uncalibrated'}")
        print(f"{'quantity':<10}{'n':>7}{'within 1 sigma':>16}{'within 2 sigma':>16}")
        for q, c in res["coverage"].items():
            print(f"{q:<10}{c['n']:>7}{c['within_1_sigma']:>16.2f}{c['within_2_sigma']:>16.2f}")
    if res["skipped"]:
        print(f"skipped {len(res['skipped'])} crystal(s) whose graph failed", file=sys.stderr)
    if args.out:
        print(f"per-crystal predictions written to {args.out}", file=sys.stderr)
    return 0


def _format_predictions(results: list, fmt: str) -> str:
    from e3elastic.inference import to_json_ready

    if fmt == "json":
        return json.dumps([to_json_ready(r) for r in results], indent=2)
    if fmt == "csv":
        import csv
        import io

        keys = [
            "file",
            "formula",
            "K_VRH_GPa",
            "G_VRH_GPa",
            "youngs_modulus_GPa",
            "poisson_ratio",
            "universal_anisotropy",
            "born_stable",
            "K_VRH_std_GPa",
            "G_VRH_std_GPa",
            "space_group",
            "theory",
            "model",
            "error",
            "warnings",
        ]
        upper = [(i, j) for i in range(6) for j in range(i, 6)]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            keys
            + [f"C{i + 1}{j + 1}" for i, j in upper]
            + [f"C{i + 1}{j + 1}_std" for i, j in upper]
        )
        for r in results:
            v, sd = r.get("voigt_GPa"), r.get("voigt_std_GPa")
            comps = [] if v is None else [f"{v[i][j]:.4f}" for i, j in upper]
            stds = [""] * len(upper) if sd is None else [f"{sd[i][j]:.4f}" for i, j in upper]
            row = [r.get(k) if r.get(k) is not None else "" for k in keys]
            row[keys.index("warnings")] = " | ".join(r.get("warnings") or [])
            row[keys.index("space_group")] = (r.get("symmetry") or {}).get("space_group", "")
            model = r.get("model") or {}
            row[keys.index("model")] = f"{model.get('name', '')} {model.get('version', '')}".strip()
            w.writerow(row + (comps + stds if comps else []))
        return buf.getvalue()
    lines = []
    for r in results:
        head = r.get("file") or r.get("id") or "structure"
        if r["error"] is not None:
            lines.append(f"{head}: FAILED: {r['error']}\n")
            continue
        lines.append(f"{head}: {r['formula']}")
        sym = r.get("symmetry")
        if sym:
            lines.append(
                f"  space group {sym['space_group']} (point group {sym['point_group']}, "
                f"symprec {sym['symprec']:g} A)"
                + ("; tensor symmetrized over it" if sym.get("symmetrized") else "")
            )
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
    fmt = _output_format(args.out, args.format)
    _check_output_path(args.out)
    if not (args.symprec > 0):
        raise CLIError(f"--symprec must be a positive number of Angstrom, got {args.symprec}")
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
        inputs,
        model,
        symmetrize=args.symmetrize,
        progress=bar,
        theory=args.theory,
        symprec=args.symprec,
    )
    if not isinstance(results, list):
        results = [results]
    text = _format_predictions(results, fmt)
    if args.out:
        _write_output(args.out, text)
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
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override any setting, e.g. --set model.n_layers=3 (repeatable)",
    )
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="metrics of a trained model on a dataset")
    ev.add_argument(
        "--model",
        required=True,
        help="shipped model name (default, ensemble), bundle, run or ensemble folder",
    )
    ev.add_argument("--data", default=None, help="data folder or file")
    ev.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument(
        "--out",
        default=None,
        help="also write metrics and per-crystal predictions here (.json; .csv: one row per "
        "crystal)",
    )
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser(
        "predict",
        help="predict elastic tensors of structure files",
        description="Predict C (GPa) in the frame of each structure as given. Reads any file "
        "pymatgen reads (CIF, POSCAR, ...), folders and globs.",
    )
    pr.add_argument("paths", nargs="*", help="structure files, folders or glob patterns")
    pr.add_argument("--model", default=None, help="shipped model name or bundle folder")
    pr.add_argument(
        "--format",
        default=None,
        choices=("table", "json", "csv"),
        help="output format (default: from the --out extension, .json or .csv; else table)",
    )
    pr.add_argument("--symmetrize", action="store_true", help="impose the point group exactly")
    pr.add_argument(
        "--symprec",
        type=float,
        default=0.01,
        help="symmetry tolerance in Angstrom for the reported and imposed group (default 0.01)",
    )
    pr.add_argument(
        "--theory",
        default="pbe",
        choices=[t.lower() for t in THEORIES],
        help="level of theory of the predicted tensor (default pbe; b3lyp-d2 for the "
        "SiO2 zeolites' functional)",
    )
    pr.add_argument(
        "--out", default=None, help="write to this file instead of stdout (checked first)"
    )
    pr.add_argument("--mp-id", action="append", default=[], help="a Materials Project id")
    pr.set_defaults(func=_cmd_predict)


def _cmd_plot(args: argparse.Namespace) -> int:
    from e3elastic import plots

    fmt = args.format
    if args.kind == "parity":
        if not args.model:
            raise CLIError("plot parity needs --model (a model name, bundle or run folder)")
        m = _evaluate(args)
        out = args.out if args.out.endswith((".png", ".svg")) else f"{args.out}.{fmt}"
        arrays = m["arrays"]
        path = plots.parity(
            arrays["pred_voigt"],
            arrays["true_voigt"],
            out,
            title=f"{m['evaluated']} (n={m['metrics']['n']})",
        )
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


def _cmd_doctor(args: argparse.Namespace) -> int:
    from e3elastic import doctor

    result = doctor.run(args.model)
    ok = result["loss_finite"] and result["all_ok"]
    if not ok:
        print("error: a check gave non-finite or failed results", file=sys.stderr)
    return 0 if ok else 1


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
    ds.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    ds.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder (default: $E3ELASTIC_CACHE, else ~/.cache/e3elastic)",
    )
    ds.add_argument(
        "--config",
        default="default",
        choices=("default", "tiny", "large"),
        help="preset whose data settings and model cutoff apply (default: default)",
    )
    ds.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a setting of the preset, e.g. --set model.cutoff=6 (repeatable)",
    )
    ds.add_argument("--subset", choices=("all", "pbe", "sio2"), default=None)
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
        choices=("id", "composition"),
        default=None,
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
    doc = sub.add_parser(
        "doctor",
        help="devices JAX sees; speed of a short training and of a prediction",
        description="Print the devices JAX runs on, time a few training steps of the tiny "
        "config and a prediction of the example crystals, and report memory. Needs no data.",
    )
    doc.add_argument("--model", default="default", help="model for the prediction check")
    doc.set_defaults(func=_cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2: bad input, 130: Ctrl-C, 141: the reader
    of stdout went away, as for any Unix filter)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
        return status
    except CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `e3elastic ... | head`: stop quietly; point stdout at /dev/null so the interpreter's
        # final flush does not raise again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141


if __name__ == "__main__":
    sys.exit(main())
