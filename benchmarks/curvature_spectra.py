"""Figure 12 of the reference run: Hessian and GGN spectra of its seed-0 full-precision and paper's-bit-width
models, with every curvature number of those models (Hessian, GGN, Fisher).

The reference run (figures/results.json) keeps no checkpoints, and predates the GGN metrics. Its training is a
deterministic function of its plan, so this script retrains the seed-0 pair of every test domain with the reference
plan's own training settings (the shared full-precision prefix, then the full-precision and paper's-bit-width
branches, through `flatlens.reproduce.run`), then checks that they are the reference run's models: their Hessian
records (top eigenvalue, trace, SLQ quadrature, on the same samples with the same measurement seed) and training
accuracies must equal the stored ones. It measures the GGN and Fisher metrics with the full plan's settings and draws
figure 12 with the registry's figure function (`flatlens.plots.draw_figure`).

Usage: python benchmarks/curvature_spectra.py [--reference figures] [--out results/curvature-spectra]
           [--figures figures] [--json benchmarks/results/curvature_spectra_cpu.json] [--jobs 2]
"""
import argparse
import copy
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_json  # noqa: E402

from flatlens import metrics as M  # noqa: E402
from flatlens.plots import draw_figure  # noqa: E402
from flatlens.reproduce import load_run, plan_settings, run, with_family  # noqa: E402

HESSIAN = ("hessian-eig", "hessian-trace", "hessian-density")
NEW = ("ggn-eig", "ggn-trace", "fisher-trace", "ggn-density")
FIGURE = "fig12_hessian_vs_ggn_spectra"


def seed0_plan(ref_plan):
    """The reference plan cut to seed 0, full precision and the paper's bits (its family without the positive
    control, and no exploratory seed: nothing else is trained; the configurations stay listed, so the figure keeps
    the reference figures' colours): the reference's own settings for the Hessian metrics, the full plan's for the
    GGN and Fisher ones, on the train split."""
    plan = copy.deepcopy(ref_plan)
    full = plan_settings("full", plan.settings.common.samples)
    metrics = {n: plan.settings.of(n) for n in HESSIAN}
    metrics.update({n: full.of(n) for n in NEW})
    plan = dataclasses.replace(plan, seeds=(0,), explore_seeds=0, illustrative_seeds=(0,), control_metric="",
                               settings=M.Settings(common=plan.settings.common, metrics=metrics), family=[])
    return with_family(plan)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def identity(new, ref) -> dict:
    """The largest relative difference between the retrained model's records and the reference run's, per quantity."""
    out = {"test_accuracy": _rel(list(new.training.test_acc.values()), list(ref.training.test_acc.values()))}
    for name in HESSIAN:
        a, b = new.record("train", name), ref.record("train", name)
        if a is None or b is None:
            out[name] = None
            continue
        if name == "hessian-density":
            out[name] = _rel(np.concatenate(a.result.nodes), np.concatenate(b.result.nodes))
        else:
            out[name] = _rel([r.value for r in a.rows], [r.value for r in b.rows])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", default="figures")
    ap.add_argument("--out", default=os.path.join("results", "curvature-spectra"))
    ap.add_argument("--figures", default="figures")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    ref = load_run(args.reference)
    plan = seed0_plan(ref.plan)
    t0 = time.perf_counter()
    res = run(args.out, plan=plan, jobs=args.jobs, quiet=True, figures=False)
    seconds = time.perf_counter() - t0
    models = []
    for m in res.models:
        r = next(x for x in ref.models if (x.domain, x.config, x.seed) == (m.domain, m.config, m.seed))
        rows = {}
        for name in HESSIAN + NEW:
            rec = m.record("train", name)
            for row in rec.rows:
                rows[f"{name}:{row.key}"] = {"value": row.value, "interval": row.interval, "kind": row.interval_kind}
        neg = {n: float(min(min(x) for x in m.record("train", n).result.nodes)) for n in ("hessian-density",
                                                                                        "ggn-density")}
        models.append({"domain": m.domain, "config": m.config, "seed": m.seed,
                       "max_rel_difference_from_reference": identity(m, r), "train_rows": rows,
                       "most_negative_ritz_value": neg})
    written = draw_figure(res, FIGURE, args.figures)
    out = {"machine": machine(), "reference": os.path.join(args.reference, "results.json"),
           "reference_torch": ref.versions.get("torch"), "seconds": seconds, "figure": written, "models": models,
           "settings": {n: dataclasses.asdict(plan.settings.of(n)) for n in HESSIAN + NEW},
           "samples": plan.settings.common.samples}
    for m in models:
        d = m["max_rel_difference_from_reference"]
        same = all(v is not None and v <= 1e-6 for v in d.values())
        print(f"{m['domain']} {m['config']} seed {m['seed']}: {'the reference run' + chr(39) + 's model' if same else 'DIFFERS from the reference run'}"
              f" (largest relative differences {', '.join(f'{k} {v:.1e}' for k, v in d.items() if v is not None)})")
        for k, v in m["train_rows"].items():
            iv = v["interval"]
            print(f"    {k:32s} {v['value']:.6g}" + (f" [{iv[0]:.6g}, {iv[1]:.6g}] ({v['kind']})" if iv else ""))
        print(f"    most negative Ritz value: {m['most_negative_ritz_value']}")
    print(f"{seconds:.0f} s; wrote {', '.join(written)}")
    write_json(args.json, out)


if __name__ == "__main__":
    main()
