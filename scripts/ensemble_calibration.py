"""Calibrate a deep ensemble's standard deviations on its validation split; report test coverage.

    python scripts/ensemble_calibration.py ENSEMBLE_FOLDER [--data DIR]

ENSEMBLE_FOLDER holds the member bundles (``member_0/``, ``member_1/``, ...; see
scripts/train_ensemble.sh), all trained on the same split. For every crystal the ensemble mean
and standard deviation (over members) are compared with the DFT tensor, per Voigt component
that the crystal's symmetry leaves free (upper triangle) and for K_VRH and G_VRH.

The fit (``e3elastic.training.evaluation.fit_sigma_scale``): on the validation crystals, the factor
s per quantity is the 95th percentile of |error| / sigma divided by 1.96, so that s * sigma is a
Gaussian-calibrated standard deviation there. The factors go into
``ENSEMBLE_FOLDER/calibration.json`` (``sigma_scale``), which ``load_model`` applies; the test split
is used only to report coverage within 1 and 2 sigma, raw and calibrated (a calibrated Gaussian
covers 0.68 and 0.95).

The 68 % and 95 % intervals of K_VRH, G_VRH and Young's modulus live in log space
(``e3elastic.training.evaluation.fit_interval_scale``): q_mean * exp(+-k w),
w = sqrt(s^2 + f^2 + (a ln+(40 GPa / G_mean))^2), s the members' standard deviation of ln q, f a
floor for the error they share and a a widening for soft crystals (central shear modulus below
40 GPa). On every validation crystal with K and G (those with a tensor and those with K/G only),
k per quantity and level is that level's quantile of |ln(q_DFT / q_mean)| / w, and (f, a) is the
pair giving the narrowest 95 % intervals. They go into ``calibration.json`` as
``interval_scale``; the test split reports how often the DFT value falls inside, for the two
kinds of crystal apart and for the soft ones (central G below 20 GPa).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    from e3elastic import inference, runtime
    from e3elastic.cli import show_messages
    from e3elastic.training import evaluation, metrics

    show_messages()  # progress messages on stderr
    runtime.enable_compilation_cache()
    folder = Path(args.folder)
    model = inference.load_model(folder)
    if model.n_members < 2:
        print(f"error: {folder} holds one model, not an ensemble", file=sys.stderr)
        return 2
    parts, moduli_parts = {}, {}
    for split in ("val", "test"):
        records, note, _ = evaluation.load_records(model, args.data, split)
        tensor_records = [r for r in records if r.has_tensor]  # coverage of tensor components
        parts[split] = evaluation.predict_records(model, tensor_records)
        kg_records = [r for r in records if not r.has_tensor]
        if kg_records:
            moduli_parts[split] = evaluation.predict_records(model, kg_records)
        n_kg = len(moduli_parts[split].records) if split in moduli_parts else 0
        print(
            f"{split}: {len(parts[split].records)} crystals with a tensor, {n_kg} with K/G only "
            f"({note})",
            file=sys.stderr,
        )
    scale = evaluation.fit_sigma_scale(parts["val"])
    interval_scale = evaluation.fit_interval_scale(_joined(parts["val"], moduli_parts.get("val")))
    test = parts["test"]
    members = [
        metrics.tensor_metrics(test.member_voigt[k], test.true) for k in range(model.n_members)
    ]
    out = {
        "members": model.n_members,
        "sigma_scale": scale,
        "fit": "on the validation split: s = (95th percentile of |error| / sigma) / 1.96, per "
        "quantity (Voigt components free under symmetry, K_VRH, G_VRH)",
        "val_crystals": len(parts["val"].records),
        "test_crystals": len(test.records),
        "ensemble_metrics": metrics.tensor_metrics(test.mean, test.true),
        "member_metrics": members,
        "coverage_raw": {s: evaluation.coverage(p) for s, p in parts.items()},
        "coverage_calibrated": {s: evaluation.coverage(p, scale) for s, p in parts.items()},
        "interval_scale": interval_scale,
        "interval_fit": "on every validation crystal with K and G (a tensor, or K/G only), "
        "per quantity: interval q_mean * exp(+-k w), "
        "w = sqrt(s^2 + floor^2 + (softness * ln+(soft_reference_GPa / G_mean))^2), "
        "s = std over members of ln q; k = the level's quantile of |ln(q_DFT / q_mean)| / w; "
        "floor and softness: the narrowest mean 95 % interval",
        "interval_coverage_gaussian": {
            s: evaluation.interval_coverage(p) for s, p in parts.items()
        },
        "interval_coverage": {
            s: evaluation.interval_coverage(p, interval_scale) for s, p in parts.items()
        },
        "interval_coverage_moduli_only": {
            s: evaluation.interval_coverage(p, interval_scale) for s, p in moduli_parts.items()
        },
        "moduli_only_crystals": {s: len(p.records) for s, p in moduli_parts.items()},
    }
    (folder / "calibration.json").write_text(json.dumps(out, indent=2))
    em = out["ensemble_metrics"]
    print(
        f"{model.n_members} members; test: ensemble mean rel. Frobenius {em['rel_frobenius']:.3f} "
        f"(median {em['median_rel_frobenius']:.3f}, EwT25 {em['ewt_25']:.2f}, MAE K/G "
        f"{em['mae_K_VRH_GPa']:.1f}/{em['mae_G_VRH_GPa']:.1f} GPa); members "
        + ", ".join(f"{m['rel_frobenius']:.3f}" for m in members)
    )
    print("sigma scale: " + ", ".join(f"{k} x{v:.2f}" for k, v in scale.items()))
    print(
        "| split | quantity | n | raw 1 sigma | raw 2 sigma | calibrated 1 sigma | "
        "calibrated 2 sigma |"
    )
    print("|---|---|---|---|---|---|---|")
    for split in parts:
        for q in evaluation.SIGMA_QUANTITIES:
            raw, cal = out["coverage_raw"][split][q], out["coverage_calibrated"][split][q]
            print(
                f"| {split} | {q} | {raw['n']} | {raw['within_1_sigma']:.2f} | "
                f"{raw['within_2_sigma']:.2f} | {cal['within_1_sigma']:.2f} | "
                f"{cal['within_2_sigma']:.2f} |"
            )
    print("\nlog-space intervals (half-width k in std of ln q; coverage of the DFT value):")
    from e3elastic.training.calibration import SOFT_REPORT_GPA

    print(
        "| split | quantity | n | floor | softness | k68 | k95 | within 68 % | within 95 % | "
        f"soft (G < {SOFT_REPORT_GPA:g} GPa): n, within 68 % / 95 % | median width 95 % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, label in (("interval_coverage", ""), ("interval_coverage_moduli_only", ", K/G only")):
        for split, rows in out[key].items():
            for q, cov in rows.items():
                k = interval_scale[q]
                print(
                    f"| {split}{label} | {q} | {cov['n']} | {k['floor']:.3f} | "
                    f"{k['softness']:.2f} | {k['68']:.2f} | {k['95']:.2f} | "
                    f"{cov['within_68']:.2f} | {cov['within_95']:.2f} | "
                    f"{cov['n_soft']}, {cov['within_68_soft']:.2f} / {cov['within_95_soft']:.2f} | "
                    f"{cov['median_width_95']:.2f} |"
                )
    return 0


def _joined(a, b):
    """One Evaluated of the crystals of ``a`` and ``b`` (None: ``a`` alone)."""
    import numpy as np

    from e3elastic.training.evaluation import Evaluated

    if b is None:
        return a
    return Evaluated(
        records=[*a.records, *b.records],
        member_voigt=np.concatenate([a.member_voigt, b.member_voigt], axis=1),
        skipped=[*a.skipped, *b.skipped],
    )


if __name__ == "__main__":
    sys.exit(main())
