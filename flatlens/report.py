"""report.md of a reproduce run: tables of accuracy and every flatness measure, then which of the paper's
claims held here and which did not, with the numbers."""
from __future__ import annotations

import math

import numpy as np

from ._util import atomic_write_text
from .summary import (CONFIG_LABEL, accuracy, configs, domains, models, pooled_flatness, pooled_row,
                      welch)


def _f(x, digits=4):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def _pm(p, pct=False):
    if p["n"] == 0:
        return "n/a"
    k = 100 if pct else 1
    s = f"{_f(p['mean'] * k)}"
    if p.get("ci") is not None:
        s += f" ± {_f(p['ci'] * k, 2)}"
    if p.get("std") is not None and p["n"] > 1 and "ci" in p:
        s += f" (sd {_f(p['std'] * k, 2)})"
    elif p["n"] > 1:
        s += f" ± {_f(p['std'] * k, 2)}"
    return s


ROWS = [("hessian-eig", "top eigenvalue", "top eigenvalue λ₁"),
        ("hessian-eig", "most negative", "most negative λ"),
        ("hessian-trace", "Hessian trace", "tr(H) ± 95% CI"),
        ("hessian-density", "mean eigenvalue", "SLQ mean eigenvalue"),
        ("curve", "filter-normalized", "filter-norm. curve Δ"),
        ("sharpness", "worst-case", "worst-case sharpness"),
        ("sharpness", "adaptive", "adaptive sharpness")]


def write_report(results: dict, path: str) -> str:
    L = []
    plan = results["plan"]
    cf = configs(results)
    L.append("# flatlens reproduction report: does quantization-aware training find flatter minima?\n")
    L.append(f"Rotated digits (scikit-learn's 8x8 digits, 16x16, domains {', '.join(map(str, ['0', '15', '30', '45', '60', '75']))} degrees), "
             f"leave-one-domain-out with test domain(s) {', '.join(plan['domains'])}; SmallCNN width {plan['width']}; "
             f"{plan['steps']} steps, Adam lr {plan['lr']}, quantization from step {plan['quant_start']} "
             f"(LSQ, per-channel, all layers but the classifier); seeds {', '.join(map(str, plan['seeds']))}.")
    s = plan["settings"]
    L.append(f"Measurements on {s['samples']} samples per split (train = source-domain training data, test = the "
             f"held-out domain), {results['weights_measured']}, BatchNorm in eval mode, seed {s['seed']}. "
             "Values are means over seeds; ± is the 95 % CI of the measurement (sd = spread over seeds).\n")
    L.append("## Summary\n")
    L.append(summary_table(results))
    L.append("")
    # accuracy
    L.append("## Accuracy (%)\n")
    for d in domains(results):
        L.append(f"Test domain {d}°:\n")
        L.append("| model | in-domain val (mean ± sd) | out-of-domain test (mean ± sd) | size vs fp32 |")
        L.append("|---|---|---|---|")
        for c in cf:
            ms = models(results, d, c)
            ratio = np.mean([m["metrics"]["size_ratio"] for m in ms])
            L.append(f"| {CONFIG_LABEL[c]} | {_pm(accuracy(ms, 'mean_val_acc'), True)} | "
                     f"{_pm(accuracy(ms, 'mean_test_acc'), True)} | {ratio:.3f}x |")
        e = results["eoq"].get(d)
        if e:
            test = np.mean([v for k, v in e["ensemble"].items() if k.startswith("test")])
            val = np.mean([v for k, v in e["ensemble"].items() if k.startswith("val")])
            L.append(f"| EoQ ({len(e['members'])} x 7 bit) | {100 * val:.2f} | {100 * test:.2f} | "
                     f"{e['packed_bytes'] / e['fp32_bytes_one_model']:.3f}x |")
        L.append("")
    # curvature
    for split in ("train", "test"):
        L.append(f"## Curvature and sharpness, {split} split\n")
        for d in domains(results):
            L.append(f"Test domain {d}°:\n")
            L.append("| model | " + " | ".join(r[2] for r in ROWS) + " |")
            L.append("|---|" + "---|" * len(ROWS))
            for c in cf:
                ms = models(results, d, c)
                cells = [_pm(pooled_row(ms, split, m, p)) for m, p, _ in ROWS]
                L.append(f"| {CONFIG_LABEL[c]} | " + " | ".join(cells) + " |")
            L.append("")
        L.append(f"Local flatness F_r = E_u[L(w + r u) - L(w)], u uniform unit direction, pooled over seeds "
                 f"and directions ({split} split):\n")
        for d in domains(results):
            radii = pooled_flatness(models(results, d, cf[0]), split)["radii"]
            L.append(f"Test domain {d}°:\n")
            L.append("| model | " + " | ".join(f"r = {r:g}" for r in radii if r > 0) + " |")
            L.append("|---|" + "---|" * sum(1 for r in radii if r > 0))
            for c in cf:
                pf = pooled_flatness(models(results, d, c), split)
                cells = [f"{_f(m)} [{_f(lo, 3)}, {_f(hi, 3)}]" for r, m, lo, hi in
                         zip(pf["radii"], pf["mean"], pf["lo"], pf["hi"]) if r > 0]
                L.append(f"| {CONFIG_LABEL[c]} | " + " | ".join(cells) + " |")
            L.append("")
    # quantization noise
    L.append("## The quantization-noise test: E[L(w + D)] - L(w) vs (1/24) Σ s_i² H_ii\n")
    L.append("Full-precision models get LSQ-initial 7-bit steps; quantized models their learned steps.\n")
    L.append("| model | split | measured ± CI | predicted ± CI | ratio (mean over seeds) |")
    L.append("|---|---|---|---|---|")
    for d in domains(results):
        for c in cf:
            ms = models(results, d, c)
            for split in ("train", "test"):
                meas = pooled_row(ms, split, "qnoise", "quantization noise: measured")
                pred = pooled_row(ms, split, "qnoise", "quantization noise: predicted")
                ratio = np.mean([m["measurements"][split]["qnoise"]["result"]["ratio"] for m in ms])
                L.append(f"| {CONFIG_LABEL[c]} ({d}°) | {split} | {_pm(meas)} | {_pm(pred)} | {_f(ratio, 3)} |")
    L.append("")
    L.append("## Which of the paper's claims held here\n")
    L += claims(results)
    L.append("")
    L.append(f"Versions: {results['versions']}. Regenerate with `flatlens reproduce`; figures with "
             "`flatlens figures --results DIR --out DIR`.")
    text = "\n".join(L) + "\n"
    atomic_write_text(path, text)
    return text


def _verdict(w, lower_is_claim=True):
    if w["ci"] is None or math.isnan(w["p"]):
        return "not testable (one seed)"
    lo, hi = w["ci"]
    if (hi < 0) if lower_is_claim else (lo > 0):
        return "HELD"
    if (lo > 0) if lower_is_claim else (hi < 0):
        return "CONTRADICTED"
    return "NOT SIGNIFICANT"


def claims(results) -> list[str]:
    out = []
    cf = configs(results)
    if "q7" not in cf or "fp32" not in cf:
        return ["(needs full-precision and 7-bit models)"]
    for d in domains(results):
        fp, q7 = models(results, d, "fp32"), models(results, d, "q7")
        out.append(f"Test domain {d}° (7 bit vs full precision, {len(fp)} seeds each; Welch t over seeds):\n")
        for split in ("train", "test"):
            rmax = max(fp[0]["measurements"][split]["flatness"]["result"]["radii"])
            a = [np.mean(np.asarray(m["measurements"][split]["flatness"]["result"]["increases"])[:, -1]) for m in fp]
            b = [np.mean(np.asarray(m["measurements"][split]["flatness"]["result"]["increases"])[:, -1]) for m in q7]
            w = welch(a, b)
            out.append(f"- Quantized models are flatter by local flatness (the paper's Fig. 3), {split} split, r = {rmax:g}: "
                       f"fp32 {_f(np.mean(a))}, 7 bit {_f(np.mean(b))}, difference {_f(w['diff'])} "
                       f"(95% CI {_ci(w)}, p = {_f(w['p'], 2)}): **{_verdict(w)}**.")
        for metric, prefix, name in (("hessian-trace", "Hessian trace", "Hessian trace"),
                                     ("hessian-eig", "top eigenvalue", "top Hessian eigenvalue")):
            a = pooled_row(fp, "train", metric, prefix)["values"]
            b = pooled_row(q7, "train", metric, prefix)["values"]
            w = welch(a, b)
            out.append(f"- Quantized models have a lower {name} (train split): fp32 {_f(np.mean(a))}, "
                       f"7 bit {_f(np.mean(b))}, difference {_f(w['diff'])} (95% CI {_ci(w)}, p = {_f(w['p'], 2)}): "
                       f"**{_verdict(w)}**.")
        a = [m["metrics"]["mean_test_acc"] * 100 for m in fp]
        b = [m["metrics"]["mean_test_acc"] * 100 for m in q7]
        w = welch(a, b)
        out.append(f"- 7-bit QAT improves out-of-domain accuracy: fp32 {_f(np.mean(a))} %, 7 bit {_f(np.mean(b))} %, "
                   f"difference {_f(w['diff'])} points (95% CI {_ci(w)}, p = {_f(w['p'], 2)}): "
                   f"**{_verdict(w, lower_is_claim=False)}**.")
        if "q2" in cf:
            c = [m["metrics"]["mean_test_acc"] * 100 for m in models(results, d, "q2")]
            w2 = welch(b, c)
            out.append(f"- Too few bits over-regularize (2 bit below 7 bit out of domain): 2 bit {_f(np.mean(c))} %, "
                       f"difference {_f(w2['diff'])} points (95% CI {_ci(w2)}): **{_verdict(w2)}**.")
        e = results["eoq"].get(d)
        if e:
            ens = np.mean([v for k, v in e["ensemble"].items() if k.startswith("test")]) * 100
            best = max(b)
            out.append(f"- EoQ beats its members out of domain: ensemble {_f(ens)} % vs members' mean {_f(np.mean(b))} % "
                       f"and best {_f(best)} %: **{'HELD' if ens > np.mean(b) else 'NOT HELD'}** "
                       f"({'above' if ens > best else 'not above'} the best member).")
        ratios = [m["measurements"][sp]["qnoise"]["result"]["ratio"] for m in results["models"]
                  if m["domain"] == d for sp in ("train", "test")]
        out.append(f"- The trace-penalty form (1/24) Σ s² H_ii predicts the loss increase under uniform weight "
                   f"noise: measured/predicted over all {len(ratios)} model-splits: median {_f(float(np.median(ratios)), 3)}, "
                   f"range [{_f(min(ratios), 3)}, {_f(max(ratios), 3)}] "
                   f"(**{'HELD within a factor 2' if 0.5 <= np.median(ratios) <= 2 else 'NOT HELD'}** for the median).")
        out.append("")
    return out


def _ci(w):
    return "n/a" if w["ci"] is None else f"[{_f(w['ci'][0], 3)}, {_f(w['ci'][1], 3)}]"


def summary_table(results: dict, radius: float = 2.0) -> str:
    """A compact Markdown table over both test domains: accuracy, flatness, trace, top eigenvalue."""
    doms = domains(results)
    head = ["model"] + [f"OOD acc {d}° (%)" for d in doms] + [f"in-domain {d}° (%)" for d in doms]
    head += [f"flatness r={radius:g}, train ({d}°)" for d in doms] + [f"tr(H), train ({d}°)" for d in doms]
    head += [f"λ₁, train ({d}°)" for d in doms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs(results):
        cells = [CONFIG_LABEL[c]]
        for key in ("mean_test_acc", "mean_val_acc"):
            for d in doms:
                st = accuracy(models(results, d, c), key)
                cells.append(f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}")
        for d in doms:
            pf = pooled_flatness(models(results, d, c), "train")
            j = min(range(len(pf["radii"])), key=lambda i: abs(pf["radii"][i] - radius))
            cells.append(f"{_f(pf['mean'][j], 3)} [{_f(pf['lo'][j], 3)}, {_f(pf['hi'][j], 3)}]")
        for d in doms:
            cells.append(_pm(pooled_row(models(results, d, c), "train", "hessian-trace", "Hessian trace")))
        for d in doms:
            p = pooled_row(models(results, d, c), "train", "hessian-eig", "top eigenvalue")
            cells.append(f"{_f(p['mean'])} (sd {_f(p['std'], 2)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
