"""flatlens vs PyHessian 0.1 on the same model, data and machine, in one run.

Model: the digits CNN (width 32, ~57k parameters, briefly trained) on 1024 inputs of 16x16 (CPU), and
ResNet-18 on 32x32 inputs where a GPU and torchvision are present. Reports
 (a) top eigenvalue to 1e-3 relative: wall time, HVPs, error vs a tight Lanczos reference;
 (b) trace with the same 64 Rademacher probes (PyHessian with tol=0): wall time;
 (c) trace error per unit time: RMSE over seeds at a fixed HVP budget against a long reference,
     flatlens Hutch++ vs PyHessian Hutchinson; RMSE x wall time compared;
 (d) where PyHessian's default stopping rule (tol 1e-3) lands relative to the reference;
 (e) trace to a +-2 % 95 % CI: flatlens's adaptive Hutch++ vs Hutchinson run until the same CI (flatlens's
     Hutchinson with the same stopping rule), wall time and HVPs;
 (f) one HVP against one gradient (forward + backward) on the same objective.
Usage: python benchmarks/hessian_vs_pyhessian.py [--seeds 10] [--parts abcdef] [--json out.json]
"""
import argparse
import warnings
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import digits_inputs, loss_fn, machine, timed, trained_cnn, write_json  # noqa: E402

from flatlens import Objective, hessian  # noqa: E402


def count_pyhessian_hvps():
    import importlib
    ph = importlib.import_module("pyhessian.hessian")
    ph = sys.modules["pyhessian.hessian"]
    counter = {"n": 0}
    orig = ph.hessian_vector_product

    def counting(*a, **k):
        counter["n"] += 1
        return orig(*a, **k)

    ph.hessian_vector_product = counting
    return counter


def pyhessian_comp(model, x, y, device):
    from pyhessian import hessian as PyHessian
    import copy
    m = copy.deepcopy(model).to(device)
    return PyHessian(m, loss_fn(), data=(x.to(device), y.to(device)), cuda=device == "cuda")


def trace_64(model, x, y, device, obj, repeats):
    """(b) the same 64 Rademacher probes, flatlens then PyHessian, `repeats` times; the median ratio."""
    ours, theirs = [], []
    for rep in range(repeats):
        obj.hessian_op.release_graph()
        _, tb = timed(hessian.trace, obj, method="hutchinson", n_probes=64, seed=rep, per_layer=False)
        comp, t_setup = timed(pyhessian_comp, model, x, y, device)
        torch.manual_seed(rep)
        _, tpb = timed(comp.trace, maxIter=64, tol=0.0)
        ours.append(tb)
        theirs.append(tpb + t_setup)
    ratios = [t / o for o, t in zip(ours, theirs)]
    return {"flatlens_seconds": float(np.median(ours)), "pyhessian_seconds": float(np.median(theirs)),
            "speedup": float(np.median(ratios)), "speedups": ratios, "repeats": repeats}


def run(model, x, y, device, seeds, budget, label, parts="abcd", repeats=1, trace_rtol=0.02, max_hvp=5000):
    out = {"label": label, "num_params": sum(p.numel() for p in model.parameters()), "n_inputs": len(x)}
    obj = Objective(model, loss_fn(), (x, y), device=device)
    counter = count_pyhessian_hvps()
    if parts == "b":
        out["b_trace_64_probes"] = trace_64(model, x, y, device, obj, repeats)
        return out
    if "f" in parts:  # (f) one HVP against one gradient, medians of alternating repeats
        v = torch.randn(obj.num_params, device=device)
        obj.hvp(v)
        obj.grad_at()
        th, tg = [], []
        for _ in range(max(5, repeats)):
            th.append(timed(obj.hvp, v)[1])
            tg.append(timed(obj.grad_at)[1])
        out["f_hvp_vs_gradient"] = {"hvp_seconds": float(np.median(th)), "grad_seconds": float(np.median(tg)),
                                    "ratio": float(np.median(th) / np.median(tg))}
    if "e" in parts:  # (e) trace to a +-2 % CI, adaptive Hutch++ vs Hutchinson to the same CI
        rows = {}
        for method in ("hutch++", "hutchinson"):
            obj.hessian_op.release_graph()
            r, t = timed(hessian.trace, obj, method=method, rtol=trace_rtol, max_hvp=max_hvp, seed=7,
                         per_layer=False)
            rows[method] = {"seconds": t, "n_hvp": r.n_hvp, "value": r.value, "ci95": r.ci95,
                            "converged": r.converged}
        rows["speedup"] = rows["hutchinson"]["seconds"] / rows["hutch++"]["seconds"]
        out["e_trace_to_2pct_ci"] = rows
    if not set(parts) & set("acd"):
        return out

    # reference values
    ref_eig = hessian.top_eigenvalues(obj, 1, tol=1e-7, max_hvp=min(1500, max_hvp)).values[0]
    out["reference"] = {"top_eigenvalue": ref_eig}
    if set(parts) & set("cd"):
        ref_tr = hessian.trace(obj, method="hutch++", n_probes=960, seed=12345, per_layer=False)
        out["reference"].update({"trace": ref_tr.value, "trace_ci95": ref_tr.ci95, "trace_hvps": ref_tr.n_hvp})

    # how to apply HVPs: one retained graph + loop, one graph + vmap over vectors, recompute per HVP
    V = torch.randn(16, obj.num_params, device=device)
    modes = {}
    for name, o, kw in (("graph_loop", obj, {}), ("graph_vmap", obj, {"batched": True}),
                        ("recompute", Objective(model, loss_fn(), (x, y), device=device, hvp_mode="recompute"), {})):
        o.hvp_many(V[:2], **kw)  # builds the graph once (graph modes), warms up
        _, t = timed(o.hvp_many, V, **kw)
        modes[name] = t / len(V)
    out["hvp_seconds_each"] = modes

    # (a) top eigenvalue to 1e-3
    obj.hessian_op.release_graph()
    r, t = timed(hessian.top_eigenvalues, obj, 1, tol=1e-3, seed=0)
    obj.hessian_op.release_graph()
    rg, tg = timed(hessian.top_eigenvalues, obj, 1, tol=1e-3, seed=0, bound="gap")  # residual^2 / Ritz gap
    obj.hessian_op.release_graph()
    # PyHessian's power iteration at its own tol=1e-3, then at tighter tols until it is within 1e-3
    runs = []
    for ptol in (1e-3, 1e-4, 1e-5):
        comp, t_setup = timed(pyhessian_comp, model, x, y, device)
        counter["n"] = 0
        torch.manual_seed(0)
        (pv, _), tp = timed(comp.eigenvalues, maxIter=min(300, max_hvp), tol=ptol, top_n=1)
        runs.append({"tol": ptol, "seconds": tp + t_setup, "n_hvp": counter["n"], "value": pv[0],
                     "rel_error": abs(pv[0] / ref_eig - 1)})
        if runs[-1]["rel_error"] <= 1e-3:
            break
    ok = runs[-1]
    out["a_top_eigenvalue"] = {
        "flatlens": {"seconds": t, "n_hvp": r.n_hvp, "value": r.values[0], "rel_error": abs(r.values[0] / ref_eig - 1)},
        "flatlens_gap_bound": {"seconds": tg, "n_hvp": rg.n_hvp, "value": rg.values[0], "bound": rg.bounds[0],
                               "residual_bound": rg.residual_bounds[0], "gap": rg.gaps[0], "stopped_on": rg.stopped_on,
                               "rel_error": abs(rg.values[0] / ref_eig - 1)},
        "pyhessian": ok, "pyhessian_runs": runs,
    }
    out["a_top_eigenvalue"]["flatlens"].update(bound=r.bounds[0], stopped_on=r.stopped_on)
    out["a_top_eigenvalue"]["speedup"] = ok["seconds"] / t
    out["a_top_eigenvalue"]["speedup_gap_bound"] = ok["seconds"] / tg

    # (b) trace, the same fixed 64 Rademacher probes
    if "b" in parts:
        out["b_trace_64_probes"] = trace_64(model, x, y, device, obj, repeats)
    if not set(parts) & set("cd"):
        return out

    # (c) error per unit time at a fixed HVP budget, over seeds
    ours, theirs, t_ours, t_theirs, stop_err, stop_n = [], [], [], [], [], []
    for s in range(seeds):
        obj.hessian_op.release_graph()
        rc, tc = timed(hessian.trace, obj, method="hutch++", n_probes=budget, seed=100 + s, per_layer=False)
        ours.append(rc.value)
        t_ours.append(tc)
        comp, t_setup = timed(pyhessian_comp, model, x, y, device)
        torch.manual_seed(100 + s)
        samples, tp = timed(comp.trace, maxIter=budget, tol=0.0)
        theirs.append(float(np.mean(samples)))
        t_theirs.append(tp + t_setup)
        # (d) PyHessian's default rule: stop when the running mean moves by < 0.1 %
        torch.manual_seed(100 + s)
        samples = comp.trace(maxIter=100, tol=1e-3)
        stop_err.append(float(np.mean(samples)) / ref_tr.value - 1)
        stop_n.append(len(samples))
    rmse_o = math.sqrt(np.mean((np.array(ours) - ref_tr.value) ** 2))
    rmse_t = math.sqrt(np.mean((np.array(theirs) - ref_tr.value) ** 2))
    wo, wt = rmse_o * np.mean(t_ours), rmse_t * np.mean(t_theirs)
    out["c_trace_error_per_time"] = {
        "hvp_budget": budget, "seeds": seeds,
        "flatlens_hutchpp": {"rmse": rmse_o, "rel_rmse": rmse_o / abs(ref_tr.value), "seconds": float(np.mean(t_ours))},
        "pyhessian_hutchinson": {"rmse": rmse_t, "rel_rmse": rmse_t / abs(ref_tr.value),
                                 "seconds": float(np.mean(t_theirs))},
        "rmse_x_time_ratio": wt / wo,
    }
    out["d_pyhessian_default_stop"] = {
        "rel_error_mean": float(np.mean(stop_err)), "rel_error_abs_max": float(np.max(np.abs(stop_err))),
        "rel_errors": stop_err, "probes_used": stop_n,
    }
    return out


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--json")
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--parts", default="abcdef", help="which parts; 'b' alone times only the 64-probe trace")
    ap.add_argument("--repeats", type=int, default=1, help="(b) alternating repeats; the median ratio is reported")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"machine": machine(), "runs": []}
    if not args.gpu_only:
        x, y = digits_inputs(1024)
        results["runs"].append(run(trained_cnn(), x, y, "cpu", args.seeds, args.budget, "digits CNN, CPU",
                                   args.parts, args.repeats))
    if torch.cuda.is_available():
        try:
            import torchvision
            m = torchvision.models.resnet18(num_classes=10).eval()
            g = torch.Generator().manual_seed(0)
            x, y = torch.randn(256, 3, 32, 32, generator=g), torch.randint(0, 10, (256,), generator=g)
            results["runs"].append(run(m, x, y, "cuda", args.seeds, args.budget, "ResNet-18 32x32, GPU",
                                       args.parts, args.repeats))
        except ImportError:
            pass
    for r in results["runs"]:
        print(f"== {r['label']}: {r['num_params']} parameters, {r['n_inputs']} inputs ==")
        if "f_hvp_vs_gradient" in r:
            f = r["f_hvp_vs_gradient"]
            print(f"(f) one HVP {1000 * f['hvp_seconds']:.0f} ms, one gradient {1000 * f['grad_seconds']:.0f} ms: "
                  f"ratio {f['ratio']:.2f}")
        if "e_trace_to_2pct_ci" in r:
            e = r["e_trace_to_2pct_ci"]
            print(f"(e) trace to a +-2 % CI: Hutch++ {e['hutch++']['seconds']:.1f} s / {e['hutch++']['n_hvp']} HVPs, "
                  f"Hutchinson {e['hutchinson']['seconds']:.1f} s / {e['hutchinson']['n_hvp']} HVPs: "
                  f"{e['speedup']:.1f}x")
        if "a_top_eigenvalue" in r:
            a = r["a_top_eigenvalue"]
            print(f"(a) top eigenvalue to 1e-3: flatlens {a['flatlens']['seconds']:.2f} s / {a['flatlens']['n_hvp']} "
                  f"HVPs (rel err {a['flatlens']['rel_error']:.1e}); pyhessian (tol {a['pyhessian']['tol']:g}) "
                  f"{a['pyhessian']['seconds']:.2f} s / {a['pyhessian']['n_hvp']} HVPs (rel err "
                  f"{a['pyhessian']['rel_error']:.1e}); speedup {a['speedup']:.2f}x")
            ag = a["flatlens_gap_bound"]
            print(f"    flatlens with bound='gap' (stopped on {ag['stopped_on']}): {ag['seconds']:.2f} s / {ag['n_hvp']} HVPs (rel err "
                  f"{ag['rel_error']:.1e}, bound {ag['bound']:.2e}, gap {ag['gap']}); speedup "
                  f"{a['speedup_gap_bound']:.2f}x")
        if "c_trace_error_per_time" not in r and "b_trace_64_probes" not in r:
            continue
        b = r.get("b_trace_64_probes")
        if "a_top_eigenvalue" not in r and b:
            print(f"(b) trace, 64 probes, {b['repeats']} alternating repeats: flatlens {b['flatlens_seconds']:.2f} s, "
                  f"pyhessian {b['pyhessian_seconds']:.2f} s (medians); speedups "
                  f"{', '.join(f'{v:.2f}' for v in b['speedups'])}, median {b['speedup']:.2f}x")
            continue
        if "c_trace_error_per_time" not in r:
            continue
        a, c, d = r["a_top_eigenvalue"], r["c_trace_error_per_time"], r["d_pyhessian_default_stop"]
        hm = r["hvp_seconds_each"]
        print("HVP cost: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in hm.items()))
        for pr in a["pyhessian_runs"][:-1]:
            print(f"    pyhessian at tol {pr['tol']:g}: {pr['seconds']:.2f} s, {pr['n_hvp']} HVPs, rel err {pr['rel_error']:.1e}")
        if b:
            print(f"(b) trace, 64 probes: flatlens {b['flatlens_seconds']:.2f} s, pyhessian {b['pyhessian_seconds']:.2f} "
                  f"s; speedup {b['speedup']:.2f}x")
        print(f"(c) trace at {c['hvp_budget']} HVPs over {c['seeds']} seeds: rel RMSE flatlens Hutch++ "
              f"{c['flatlens_hutchpp']['rel_rmse']:.2e} ({c['flatlens_hutchpp']['seconds']:.2f} s), pyhessian "
              f"{c['pyhessian_hutchinson']['rel_rmse']:.2e} ({c['pyhessian_hutchinson']['seconds']:.2f} s); "
              f"RMSE x time {c['rmse_x_time_ratio']:.1f}x better")
        print(f"(d) pyhessian default stop: {np.mean(d['probes_used']):.1f} probes, relative error mean "
              f"{d['rel_error_mean']:+.1%}, worst {d['rel_error_abs_max']:.1%}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
