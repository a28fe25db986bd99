"""Figures 1-8 of a reproduce run, PNG and PDF, one style. Each function returns its matplotlib Figure."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from ..summary import (CONFIG_BITS, CONFIG_LABEL, configs, domains, models, pooled_flatness,  # noqa: E402
                       seed_stats)

PALETTE = dict(zip(["fp32", "q8", "q7", "q4", "q2"], sns.color_palette("colorblind", 5)))


def _style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def _first(results, domain, config, seed=None):
    ms = models(results, domain, config)
    if seed is not None:
        ms = [m for m in ms if m["seed"] == seed] or ms
    return ms[0] if ms else None


def fig_flatness(results):
    """(1) Local flatness against radius, train and test panels, full precision vs each bit-width (Fig. 3)."""
    doms = domains(results)
    fig, axes = plt.subplots(len(doms), 2, figsize=(10, 3.6 * len(doms)), squeeze=False)
    for i, d in enumerate(doms):
        for j, split in enumerate(("train", "test")):
            ax = axes[i, j]
            for c in configs(results):
                pf = pooled_flatness(models(results, d, c), split)
                ax.plot(pf["radii"], pf["mean"], marker="o", ms=3, color=PALETTE[c], label=CONFIG_LABEL[c])
                ax.fill_between(pf["radii"], pf["lo"], pf["hi"], color=PALETTE[c], alpha=0.2)
            ax.set_title(f"{split} flatness, test domain {d}°")
            ax.set_xlabel("radius γ (L2 norm of the weight perturbation)")
            ax.set_ylabel("loss increase E[L(w+γu)] − L(w) (nats)")
    axes[0, 0].legend(title="model")
    fig.tight_layout()
    return fig


def fig_curvature(results):
    """(2) Top eigenvalue and trace with CIs, per model (points: seeds; bar: mean)."""
    doms = domains(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    specs = (("hessian-eig", "top eigenvalue", "top Hessian eigenvalue λ₁"),
             ("hessian-trace", "Hessian trace", "Hessian trace tr(H)"))
    for ax, (metric, prefix, ylabel) in zip(axes, specs):
        xt, xl = [], []
        for k, d in enumerate(doms):
            for ci, c in enumerate(configs(results)):
                x = k * (len(configs(results)) + 1) + ci
                for m in models(results, d, c):
                    r = next(r for r in m["measurements"]["train"][metric]["rows"] if r["label"].startswith(prefix))
                    err = None if r["ci95"] is None else [[r["value"] - r["ci95"][0]], [r["ci95"][1] - r["value"]]]
                    ax.errorbar(x + 0.1 * (m["seed"] - 1), r["value"], yerr=err, fmt="o", ms=4, color=PALETTE[c],
                                capsize=2)
                xt.append(x)
                xl.append(f"{CONFIG_LABEL[c]}\n{d}°")
        ax.set_xticks(xt, xl, rotation=60, fontsize=7)
        ax.set_ylabel(f"{ylabel} (train split)")
        ax.set_yscale("log")
        ax.set_xlabel("model and test domain")
    axes[0].set_title("Top eigenvalue (Lanczos, residual bound)")
    axes[1].set_title("Trace (Hutch++, 95 % CI)")
    fig.tight_layout()
    return fig


def fig_density(results):
    """(3) Hessian spectral densities (SLQ, Gaussian broadening) on a log scale."""
    d = domains(results)[0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for c in configs(results):
        m = _first(results, d, c, seed=0)
        r = m["measurements"]["train"]["hessian-density"]["result"]
        ax.semilogy(r["grid"], np.maximum(np.asarray(r["density"]), 1e-12), color=PALETTE[c], label=CONFIG_LABEL[c])
    ax.set_ylim(1e-8, None)
    ax.set_xlabel("eigenvalue λ of the Hessian")
    ax.set_ylabel("spectral density (log scale)")
    ax.set_title(f"Hessian spectral density, train split, test domain {d}°")
    ax.legend(title="model")
    fig.tight_layout()
    return fig


def fig_curves(results):
    """(4) Filter-normalized 1D curves: mean and 95 % band over random directions."""
    doms = domains(results)
    fig, axes = plt.subplots(1, len(doms), figsize=(5.5 * len(doms), 4), squeeze=False)
    for ax, d in zip(axes[0], doms):
        for c in configs(results):
            m = _first(results, d, c, seed=0)
            r = m["measurements"]["train"]["curve"]["result"]
            lo, hi = zip(*r["ci95"])
            ax.plot(r["alphas"], r["mean"], color=PALETTE[c], label=CONFIG_LABEL[c])
            ax.fill_between(r["alphas"], lo, hi, color=PALETTE[c], alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("step α along a filter-normalized direction")
        ax.set_ylabel("training loss L(w + α d) (nats, log scale)")
        ax.set_title(f"1D curves, test domain {d}°")
    axes[0, 0].legend(title="model")
    fig.tight_layout()
    return fig


def fig_surfaces(results):
    """(5) 2D contour slices side by side (shared levels), the surface's 3D view in a separate figure."""
    d = domains(results)[0]
    cf = [c for c in configs(results) if "surface" in _first(results, d, c, 0)["measurements"]["train"]]
    fig, axes = plt.subplots(1, len(cf), figsize=(3.3 * len(cf), 3.3), squeeze=False)
    surfs = [_first(results, d, c, 0)["measurements"]["train"]["surface"]["result"] for c in cf]
    vmax = max(np.log10(np.asarray(s["losses"])).max() for s in surfs)
    vmin = min(np.log10(np.asarray(s["losses"])).min() for s in surfs)
    levels = np.linspace(vmin, vmax, 15)
    for ax, c, s in zip(axes[0], cf, surfs):
        X, Y = np.meshgrid(s["xs"], s["ys"])
        cs = ax.contourf(X, Y, np.log10(np.asarray(s["losses"])), levels=levels, cmap="viridis")
        ax.plot([0], [0], "r+", ms=8)
        ax.set_title(CONFIG_LABEL[c])
        ax.set_xlabel("α (filter-normalized dx)")
    axes[0, 0].set_ylabel("β (filter-normalized dy)")
    fig.colorbar(cs, ax=axes[0].tolist(), label="log10 training loss")
    return fig


def fig_surface_3d(results):
    d = domains(results)[0]
    m = _first(results, d, "fp32", 0)
    s = m["measurements"]["train"]["surface"]["result"]
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    X, Y = np.meshgrid(s["xs"], s["ys"])
    ax.plot_surface(X, Y, np.asarray(s["losses"]), cmap="viridis", edgecolor="none", alpha=0.9)
    ax.set_xlabel("α (dx)")
    ax.set_ylabel("β (dy)")
    ax.set_zlabel("training loss (nats)")
    ax.set_title(f"Loss surface, full precision, test domain {d}°")
    return fig


def fig_qnoise(results):
    """(6) Quantization-noise test: measured vs predicted, one point per model and split, y = x line."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    vals = []
    for m in results["models"]:
        for split, marker in (("train", "o"), ("test", "^")):
            r = m["measurements"][split]["qnoise"]["result"]
            px, py = r["predicted"], r["measured"]
            xerr = [[px - r["predicted_ci95"][0]], [r["predicted_ci95"][1] - px]]
            yerr = [[py - r["measured_ci95"][0]], [r["measured_ci95"][1] - py]]
            ax.errorbar(px, py, xerr=xerr, yerr=yerr, fmt=marker, ms=4, color=PALETTE[m["config"]], alpha=0.8,
                        capsize=1.5, lw=0.8)
            vals += [px, py]
    pos = [v for v in vals if v > 0]
    lim = (min(pos) / 2, max(pos) * 2) if pos else (1e-4, 1)
    ax.plot(lim, lim, "k--", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    for c in configs(results):
        ax.plot([], [], "o", color=PALETTE[c], label=CONFIG_LABEL[c])
    ax.plot([], [], "k^", label="test split (circles: train)")
    ax.set_xlabel("predicted (1/24) Σ s² H_ii (nats)")
    ax.set_ylabel("measured E[L(w+D)] − L(w) (nats)")
    ax.set_title("Quantization-noise test")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_accuracy(results):
    """(7) Out-of-domain accuracy against bits, and learning curves with the quantization switch (Fig. 4)."""
    doms = domains(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for d, mk in zip(doms, "os^"):
        xs, ys, es = [], [], []
        for c in configs(results):
            st = seed_stats([m["metrics"]["mean_test_acc"] * 100 for m in models(results, d, c)])
            xs.append(CONFIG_BITS[c])
            ys.append(st["mean"])
            es.append(st["std"])
        ax.errorbar(xs, ys, yerr=es, marker=mk, capsize=3, label=f"out of domain, test {d}°")
        e = results["eoq"].get(d)
        if e:
            ens = np.mean([v for k, v in e["ensemble"].items() if k.startswith("test")]) * 100
            ax.axhline(ens, ls=":", color="gray")
            ax.annotate(f"EoQ 7 bit ({d}°)", (8.2, ens), fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xticks([2, 4, 7, 8, 32], ["2", "4", "7", "8", "32 (fp)"])
    ax.set_xlabel("weight bits")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Out-of-domain accuracy against bit-width (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    ax = axes[1]
    d = doms[0]
    for c in ("fp32", "q7"):
        m = _first(results, d, c, 0)
        if not m:
            continue
        recs = [h for h in m["history"] if "mean_test_acc" in h]
        ax.plot([h["step"] for h in recs], [100 * h["mean_test_acc"] for h in recs], color=PALETTE[c],
                label=f"{CONFIG_LABEL[c]}: out of domain")
        ax.plot([h["step"] for h in recs], [100 * h["mean_val_acc"] for h in recs], color=PALETTE[c], ls="--",
                label=f"{CONFIG_LABEL[c]}: in-domain validation")
        if m.get("quant_start"):
            ax.axvline(m["quant_start"], color="k", ls=":", lw=1)
            ax.annotate("quantization on", (m["quant_start"], ax.get_ylim()[0] + 1), rotation=90, fontsize=7)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Learning curves, test domain {d}°, seed 0")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_quant_error(results):
    """(8) Quantization error histogram (in units of the step) against the uniform law, with KL (Fig. 2)."""
    d = domains(results)[0]
    qs = [c for c in configs(results) if c != "fp32"]
    fig, axes = plt.subplots(1, len(qs), figsize=(3.3 * len(qs), 3.2), squeeze=False)
    for ax, c in zip(axes[0], qs):
        m = _first(results, d, c, 0)
        q = m["quant_error"]
        edges = np.asarray(q["edges"])
        counts = np.asarray(q["counts"])
        dens = counts / counts.sum() / np.diff(edges)
        ax.bar(edges[:-1], dens, width=np.diff(edges), align="edge", color=PALETTE[c], alpha=0.7,
               label="measured")
        ax.axhline(1.0, color="k", ls="--", label="uniform U(−½, ½)")
        ax.set_title(f"{CONFIG_LABEL[c]}: KL = {q['kl']:.4f}")
        ax.set_xlabel("quantization error (w_q − w) / s (steps)")
        ax.set_ylabel("density")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


FIGURES = {
    "fig1_local_flatness": fig_flatness,
    "fig2_eigenvalue_trace": fig_curvature,
    "fig3_spectral_density": fig_density,
    "fig4_filter_normalized_curves": fig_curves,
    "fig5_surfaces_2d": fig_surfaces,
    "fig5b_surface_3d": fig_surface_3d,
    "fig6_quantization_noise": fig_qnoise,
    "fig7_accuracy_vs_bits": fig_accuracy,
    "fig8_quantization_error": fig_quant_error,
}


def make_figures(results: dict, out: str, *, formats=("png", "pdf")) -> list[str]:
    from .._util import atomic_write_bytes
    import io
    _style()
    os.makedirs(out, exist_ok=True)
    written = []
    for name, fn in FIGURES.items():
        fig = fn(results)
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=130, bbox_inches="tight")
            path = os.path.join(out, f"{name}.{fmt}")
            atomic_write_bytes(path, buf.getvalue())
            written.append(path)
        plt.close(fig)
    return written


def plot_compare(report: dict, path: str) -> None:
    """`compare --plot`: each measure's value and 95 % CI per checkpoint, one panel per measure and split."""
    from .._util import atomic_write_bytes
    import io
    _style()
    keys = list(dict.fromkeys((r["split"], r["label"]) for r in report["table"]))
    n = len(keys)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        rs = [r for r in report["table"] if (r["split"], r["label"]) == key]
        names = [os.path.basename(r["checkpoint"]) for r in rs]
        vals = [r["value"] for r in rs]
        err = [[r["value"] - r["ci95"][0] if r["ci95"] else 0 for r in rs],
               [r["ci95"][1] - r["value"] if r["ci95"] else 0 for r in rs]]
        ax.errorbar(range(len(rs)), vals, yerr=err, fmt="o", capsize=3)
        ax.set_xticks(range(len(rs)), names, rotation=30, fontsize=7)
        ax.set_title(f"{key[1]} ({key[0]})", fontsize=8)
        ax.set_ylabel("value (95 % CI)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path)[1][1:] or "png", dpi=130)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
