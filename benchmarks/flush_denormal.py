"""What flushing subnormal floats to zero buys the HVP on a CPU (Objective(flush_denormal=True), the default).

Two objectives on the same trained digits CNN and inputs, one flushing and one not, time 8 HVPs each in
alternating repeats; reported: the median time per HVP of each and their ratio, and the largest difference
between their HVPs (relative to the HVP's norm).
Usage: python benchmarks/flush_denormal.py [--repeats 7] [--json out.json]
"""
import argparse
import statistics
import sys
import warnings

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import digits_inputs, loss_fn, machine, timed, trained_cnn, write_json  # noqa: E402

from flatlens import Objective  # noqa: E402


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n", type=int, default=1024, help="inputs")
    ap.add_argument("--json")
    args = ap.parse_args()
    x, y = digits_inputs(args.n)
    model = trained_cnn()
    objs = {flag: Objective(model, loss_fn(), (x, y), flush_denormal=flag) for flag in (True, False)}
    V = torch.randn(8, objs[True].num_params, generator=torch.Generator().manual_seed(0))
    hv = {flag: o.hvp_many(V) for flag, o in objs.items()}  # builds each graph, warms up
    times = {True: [], False: []}
    for r in range(args.repeats):
        for flag in ((True, False) if r % 2 == 0 else (False, True)):
            _, t = timed(objs[flag].hvp_many, V)
            times[flag].append(t / len(V))
    med = {flag: statistics.median(ts) for flag, ts in times.items()}
    diff = float(((hv[True] - hv[False]).norm(dim=1) / hv[False].norm(dim=1)).max())
    out = {"machine": machine(), "n_inputs": len(y), "num_params": objs[True].num_params, "repeats": args.repeats,
           "seconds_per_hvp": {"flush": times[True], "no_flush": times[False]},
           "median_seconds_per_hvp": {"flush": med[True], "no_flush": med[False]},
           "speedup_of_flushing": med[False] / med[True], "max_relative_hvp_difference": diff}
    print(f"HVP, digits CNN ({out['num_params']} parameters, {len(y)} inputs), median of {args.repeats} alternating "
          f"repeats: flushing {1000 * med[True]:.0f} ms, not {1000 * med[False]:.0f} ms: "
          f"{out['speedup_of_flushing']:.2f}x; HVPs differ by {diff:.1e} (relative)")
    write_json(args.json, out)


if __name__ == "__main__":
    main()
