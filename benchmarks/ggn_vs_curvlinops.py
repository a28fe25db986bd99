"""flatlens's GGN operator against curvlinops's (curvlinops-for-pytorch 3.x) on the same model, data and machine, in
one run.

Model: the digits CNN of benchmarks/common.py (width 32, ~57k parameters, briefly trained), cross-entropy on 1024
inputs of 16x16, cut into 4 batches of 256 for both libraries (what flatlens's operator uses on a CPU), float32.
 (a) one GGN-vector product: agreement of the two (relative max difference) and the time per product, medians of
     alternating repeats after one warm-up product each (flatlens keeps each batch's linearization: its first
     product, which builds them, is reported apart);
 (b) a block of 8 products (curvlinops multiplies a matrix through one vmapped pass; flatlens loops on a CPU);
 (c) the GGN trace to +-2 %: the exact trace (sum over samples of tr(J_i' Lambda_i J_i), per-sample Jacobians by
     torch.func, float64 sums); flatlens's Hutch++ stopped on its 95 % CI (rtol 0.02), and curvlinops's Hutch++
     (`hutchpp_trace`, a fixed budget, no interval) at the same number of products, over `--seeds` seeds: the error
     of each, and the wall time.
Usage: python benchmarks/ggn_vs_curvlinops.py [--repeats 7] [--seeds 5] [--json out.json]
       `--tiny`: every code path in a few seconds (width 8 trained 20 steps, 128 inputs in 2 batches of 64, one
       repeat, one seed, at most 300 products for the trace; the smoke test's mode, not a measurement).
Needs curvlinops-for-pytorch (`pip install -e '.[bench]'`)."""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import digits_inputs, loss_fn, machine, timed, trained_cnn, write_json  # noqa: E402

from flatlens import Objective, hessian  # noqa: E402


def exact_ggn_trace(model, batches) -> float:
    """tr(G) = (1/N) sum_i tr(J_i' Lambda_i J_i) = (1/N) sum_i <Lambda_i, J_i J_i'>, Lambda_i = diag(p_i) - p_i p_i'
    (cross-entropy's output Hessian), J_i the per-sample Jacobian of the logits (torch.func.jacrev under vmap, in
    chunks), summed in float64."""
    from torch.func import functional_call, jacrev, vmap
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    N = sum(len(y) for _, y in batches)
    total = 0.0

    def logits(p, x):
        return functional_call(model, {**p, **buffers}, (x[None],))[0]

    for x, _ in batches:
        for i in range(0, len(x), 32):
            xs = x[i:i + 32]
            J = vmap(jacrev(logits), in_dims=(None, 0))(params, xs)          # name -> (n, C, *shape)
            K = sum(j.reshape(j.shape[0], j.shape[1], -1).double() @ j.reshape(j.shape[0], j.shape[1], -1).double()
                    .transpose(1, 2) for j in J.values())                      # (n, C, C) = J_i J_i'
            with torch.no_grad():
                p = torch.softmax(functional_call(model, {**params, **buffers}, (xs,)).double(), 1)
            lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
            total += float((lam * K).sum())
    return total / N


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tiny", action="store_true", help="every code path in seconds (the smoke test), no timing claim")
    args = ap.parse_args()
    if args.tiny:
        args.repeats, args.seeds = 1, 1
    width, steps, n_in, bs = (8, 20, 128, 64) if args.tiny else (32, 150, 1024, 256)
    try:
        import curvlinops
        from curvlinops import GGNLinearOperator, hutchpp_trace
    except ImportError:
        sys.exit("curvlinops is not installed: pip install -e '.[bench]' (curvlinops-for-pytorch)")
    from importlib.metadata import version
    torch.manual_seed(0)
    model = trained_cnn(width=width, steps=steps).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    x, y = digits_inputs(n_in)
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]
    obj = Objective(model, loss_fn(), batches)
    ours = hessian.ggn(obj)
    params = [p for p in model.parameters() if p.requires_grad]
    theirs = GGNLinearOperator(model, loss_fn(), params, batches, check_deterministic=False)
    out = {"machine": machine(), "curvlinops": version("curvlinops-for-pytorch"), "num_params": obj.num_params,
           "n_inputs": len(y), "batches": [len(b[1]) for b in batches], "dtype": "float32",
           "flatlens_mode": ours.mode, "tiny": args.tiny}
    g = torch.Generator().manual_seed(0)
    V = torch.randn(8, obj.num_params, generator=g)

    # (a) one product: agreement, then alternating timed repeats
    first, t_first = timed(ours.hvp, V[0])
    ref = theirs @ V[0]
    out["a_matvec"] = {"max_rel_difference": float((first - ref).abs().max() / ref.abs().max()),
                       "flatlens_first_product_seconds": t_first}
    ours.hvp(V[1])
    theirs @ V[1]
    to, tt = [], []
    for r in range(args.repeats):
        _, a = timed(ours.hvp, V[r % 8])
        _, b = timed(theirs.__matmul__, V[r % 8])
        to.append(a)
        tt.append(b)
    out["a_matvec"].update({"flatlens_seconds": float(np.median(to)), "curvlinops_seconds": float(np.median(tt)),
                            "speedup": float(np.median(np.asarray(tt) / np.asarray(to))), "repeats": args.repeats})

    # (b) a block of 8 products
    to, tt = [], []
    for r in range(max(3, args.repeats // 2)):
        _, a = timed(ours.hvp_many, V)
        _, b = timed(theirs.__matmul__, V.T.contiguous())
        to.append(a)
        tt.append(b)
    out["b_block_of_8"] = {"flatlens_seconds": float(np.median(to)), "curvlinops_seconds": float(np.median(tt)),
                           "speedup": float(np.median(np.asarray(tt) / np.asarray(to))),
                           "flatlens_batched": ours.batched_hvps_pay()}

    # (c) the trace to +-2 %
    exact, t_exact = timed(exact_ggn_trace, model, batches)
    res = []
    for seed in range(args.seeds):
        tr, t_ours = timed(hessian.trace, ours, rtol=0.02, seed=seed, per_layer=False,
                           max_hvp=300 if args.tiny else None)
        n = max(3, 3 * round(tr.n_hvp / 3))  # curvlinops's Hutch++ splits its budget in thirds
        torch.manual_seed(seed)
        est, t_theirs = timed(hutchpp_trace, theirs, n)
        res.append({"seed": seed, "flatlens": {"value": tr.value, "ci95": tr.ci95, "n_products": tr.n_hvp,
                                               "seconds": t_ours, "rel_error": tr.value / exact - 1,
                                               "ci_covers_exact": tr.ci95[0] <= exact <= tr.ci95[1]},
                    "curvlinops": {"value": float(est), "n_products": n, "seconds": t_theirs,
                                   "rel_error": float(est) / exact - 1}})
    ratio = [r["curvlinops"]["seconds"] / r["flatlens"]["seconds"] for r in res]
    out["c_trace_2pct"] = {
        "exact": exact, "exact_seconds": t_exact, "seeds": res,
        "flatlens_max_abs_rel_error": max(abs(r["flatlens"]["rel_error"]) for r in res),
        "curvlinops_max_abs_rel_error": max(abs(r["curvlinops"]["rel_error"]) for r in res),
        "flatlens_ci_coverage": sum(r["flatlens"]["ci_covers_exact"] for r in res),
        "median_time_ratio_curvlinops_over_flatlens": float(np.median(ratio))}
    print(f"curvlinops {out['curvlinops']}, {obj.num_params} parameters, {len(y)} inputs, {out['machine']['cpu']}")
    a, b, c = out["a_matvec"], out["b_block_of_8"], out["c_trace_2pct"]
    print(f"(a) one GGN product: flatlens {a['flatlens_seconds'] * 1e3:.0f} ms, curvlinops "
          f"{a['curvlinops_seconds'] * 1e3:.0f} ms ({a['speedup']:.2f}x); max relative difference "
          f"{a['max_rel_difference']:.1e}; flatlens's first product {a['flatlens_first_product_seconds']:.2f} s")
    print(f"(b) 8 products: flatlens {b['flatlens_seconds']:.2f} s, curvlinops {b['curvlinops_seconds']:.2f} s "
          f"({b['speedup']:.2f}x)")
    print(f"(c) exact tr(G) = {c['exact']:.6g} ({c['exact_seconds']:.1f} s); over {args.seeds} seeds flatlens's "
          f"error at most {100 * c['flatlens_max_abs_rel_error']:.2f} %, its CI covered {c['flatlens_ci_coverage']}; "
          f"curvlinops at the same products at most {100 * c['curvlinops_max_abs_rel_error']:.2f} %; "
          f"time curvlinops / flatlens {c['median_time_ratio_curvlinops_over_flatlens']:.2f}")
    del curvlinops
    write_json(args.json, out)


if __name__ == "__main__":
    main()
