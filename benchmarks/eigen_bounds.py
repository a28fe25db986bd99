"""The two Lanczos bounds (residual, residual^2 / gap) side by side.

toys: random outlier-over-bulk spectra (float64, exact eigenvalues): for each neighbour-convergence rule, how
      many gap bounds came out smaller than the actual error (must be 0) and the HVPs saved against the residual
      rule, over seeds x k x tolerances;
cnn:  the digits CNN (1,024 inputs, float32): HVPs, error against a tol-1e-9 reference and reported bound per
      tolerance, k = 1 and 3.
Usage: python benchmarks/eigen_bounds.py [--seeds 12] [--json out.json]
"""
import argparse
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import digits_inputs, loss_fn, machine, trained_cnn, write_json  # noqa: E402

from flatlens import Objective, hessian, toys  # noqa: E402
from flatlens.hessian import eigen  # noqa: E402

TOLS = (1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-10)


def toy_study(seeds: int, rule: float) -> dict:
    eigen.NEIGHBOUR_CONVERGENCE = rule
    too_small, saved, cases = 0, [], 0
    for seed in range(seeds):
        g = np.random.default_rng(seed)
        n_out = int(g.integers(2, 8))
        lam = np.concatenate([np.sort(g.uniform(50, 1000, n_out)), g.uniform(-2, 40, 300 - n_out)])
        obj = toys.quadratic(lam, seed=seed)
        exact = np.sort(lam)[::-1]
        for k in (1, 2, 3):
            for tol in TOLS:
                res = hessian.top_eigenvalues(obj, k, tol=tol, seed=seed)
                gap = hessian.top_eigenvalues(obj, k, tol=tol, seed=seed, bound="gap")
                err = np.abs(np.asarray(gap.values) - exact[:k])
                too_small += int(np.any(err > np.asarray(gap.bounds) * (1 + 1e-6) + 1e-9))
                saved.append(res.n_hvp - gap.n_hvp)
                cases += 1
    return {"rule": rule, "cases": cases, "bounds_smaller_than_error": too_small,
            "hvps_saved_mean": float(np.mean(saved)), "hvps_saved_min": int(min(saved)),
            "hvps_saved_max": int(max(saved))}


def cnn_study() -> dict:
    x, y = digits_inputs(1024)
    obj = Objective(trained_cnn(), loss_fn(), (x, y))
    ref = hessian.top_eigenvalues(obj, 3, tol=1e-9, max_hvp=1500).values
    rows = []
    for k in (1, 3):
        for tol in (1e-3, 1e-5, 1e-7):
            for bound in ("residual", "gap"):
                r = hessian.top_eigenvalues(obj, k, tol=tol, bound=bound)
                rows.append({"k": k, "tol": tol, "bound": bound, "n_hvp": r.n_hvp, "stopped_on": r.stopped_on,
                             "max_abs_error": float(np.max(np.abs(np.asarray(r.values) - ref[:k]))),
                             "bounds": r.bounds, "residual_bounds": r.residual_bounds, "gaps": r.gaps})
    return {"reference": ref, "num_params": obj.num_params, "runs": rows}


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    default = eigen.NEIGHBOUR_CONVERGENCE
    out = {"machine": machine(), "toys": [toy_study(args.seeds, r) for r in (default, 0.1)]}
    eigen.NEIGHBOUR_CONVERGENCE = default
    out["cnn"] = cnn_study()
    for t in out["toys"]:
        print(f"toys, rule {t['rule']}: {t['bounds_smaller_than_error']} of {t['cases']} gap bounds smaller than the "
              f"error; HVPs saved {t['hvps_saved_mean']:.2f} on average, {t['hvps_saved_min']} at least, "
              f"{t['hvps_saved_max']} at most")
    for r in out["cnn"]["runs"]:
        print(f"cnn k={r['k']} tol={r['tol']:g} {r['bound']:8s}: {r['n_hvp']:3d} HVPs, error {r['max_abs_error']:.1e}, "
              f"bound {max(r['bounds']):.1e} ({r['stopped_on']})")
    write_json(args.json, out)


if __name__ == "__main__":
    main()
