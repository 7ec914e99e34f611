"""Calibration of a deep ensemble on its test split: how often the error is within 1 and 2 sigma.

    python scripts/ensemble_calibration.py checkpoints/ensemble [--data DIR]

``checkpoints/ensemble/members/`` holds the member bundles (see scripts/train_ensemble.sh). For
every test crystal the ensemble mean and standard deviation (over members) are compared with the
DFT tensor, per independent Voigt component (upper triangle, 21 numbers) and for K_VRH and
G_VRH. A well calibrated Gaussian ensemble puts 68 % of errors within 1 sigma and 95 % within 2.
Writes ``<folder>/calibration.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    from e3elastic import data, inference, metrics, runtime, tensors

    runtime.enable_compilation_cache()
    folder = Path(args.folder)
    model = inference.load_model(folder / "members")
    cfg = model.config
    test_ids = set(model.info["split"]["test"])
    ds = data.load_dataset(
        args.data or cfg.data.data,
        subset=cfg.data.subset,
        max_sites=cfg.data.max_sites,
        cutoff=cfg.model.cutoff,
        seed=cfg.data.seed,
    )
    recs = [r for r in ds.records if r.id in test_ids]
    res = inference.predict([r.structure for r in recs], model=model)
    ok = [(r, p) for r, p in zip(recs, res, strict=True) if p["error"] is None]
    iu = np.triu_indices(6)
    true = np.stack([r.voigt for r, _ in ok])
    mean = np.stack([p["voigt_GPa"] for _, p in ok])
    std = np.stack([p["voigt_std_GPa"] for _, p in ok])
    err_c, std_c = np.abs(mean - true)[:, iu[0], iu[1]], std[:, iu[0], iu[1]]
    # components that are zero by symmetry have zero error and zero spread: leave them out
    nonzero = np.abs(true[:, iu[0], iu[1]]) > 1e-6
    k_true, g_true = tensors.bulk_modulus(true)["hill"], tensors.shear_modulus(true)["hill"]
    k_err = np.abs(np.array([p["K_VRH_GPa"] for _, p in ok]) - k_true)
    g_err = np.abs(np.array([p["G_VRH_GPa"] for _, p in ok]) - g_true)
    k_std = np.array([p["K_VRH_std_GPa"] for _, p in ok])
    g_std = np.array([p["G_VRH_std_GPa"] for _, p in ok])

    def share(e, s, k):
        return float(np.mean(e <= k * s))

    rows = {
        "Voigt components (non-zero)": (err_c[nonzero], std_c[nonzero]),
        "K_VRH": (k_err, k_std),
        "G_VRH": (g_err, g_std),
    }
    out = {
        "members": model.n_members,
        "test_crystals": len(ok),
        "ensemble_metrics": metrics.tensor_metrics(mean, true),
        "calibration": {
            name: {
                "within_1_sigma": share(e, s, 1),
                "within_2_sigma": share(e, s, 2),
                "mean_abs_error_GPa": float(e.mean()),
                "mean_sigma_GPa": float(s.mean()),
            }
            for name, (e, s) in rows.items()
        },
    }
    (folder / "calibration.json").write_text(json.dumps(out, indent=2))
    print(
        f"{model.n_members} members, {len(ok)} test crystals; ensemble-mean MAE "
        f"{out['ensemble_metrics']['mae_voigt_GPa']:.2f} GPa, rel. Frobenius "
        f"{out['ensemble_metrics']['rel_frobenius']:.3f}"
    )
    print(
        "| quantity | within 1 sigma | within 2 sigma | mean abs error (GPa) | mean sigma (GPa) |"
    )
    print("|---|---|---|---|---|")
    for name, c in out["calibration"].items():
        print(
            f"| {name} | {c['within_1_sigma']:.2f} | {c['within_2_sigma']:.2f} | "
            f"{c['mean_abs_error_GPa']:.2f} | {c['mean_sigma_GPa']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
