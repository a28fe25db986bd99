"""Figures 1-12 of a reproduce run, PNG and PDF, one style, drawn from the typed run and its seed-level
analysis. Each function returns its matplotlib Figure, or None when the run lacks what it draws (a metric
that was not measured)."""
from __future__ import annotations

import io
import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import metrics as M  # noqa: E402
from .._util import FlatlensError, atomic_write_bytes  # noqa: E402
from ..analysis import ACCURACY, registered_analysis  # noqa: E402

FORMATS = ("png", "pdf", "svg")


def _style():
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def _palette(plan):
    return dict(zip([c for c, _ in plan.configs], sns.color_palette("colorblind", len(plan.configs))))


def _first(run, domain, config, split, metric):
    """The record of `metric` on the first illustrative seed (else the first seed) that has it."""
    if metric not in M.REGISTRY:
        return None, None
    ms = sorted(run.runs(domain, config), key=lambda m: (m.seed not in run.plan.illustrative_seeds, m.seed))
    for m in ms:
        rec = m.record(split, metric)
        if rec is not None:
            return m, rec
    return None, None


def fig_flatness(run):
    """(1) Local flatness against radius, train and test panels (the form of the paper's Fig. 3): mean and
    95 % CI over seeds (the two-level estimate)."""
    plan, an = run.plan, registered_analysis(run)
    drawn = M.drawn_in("fig1_local_flatness")
    if not drawn:
        return None
    metric = drawn[0]
    radii = [r for r in plan.settings.of(metric).radii]
    pal = _palette(plan)
    fig, axes = plt.subplots(len(plan.domains), 2, figsize=(10, 3.6 * len(plan.domains)), squeeze=False)
    for i, d in enumerate(plan.domains):
        for j, split in enumerate(("train", "test")):
            ax = axes[i, j]
            for c, _ in plan.configs:
                xs, ms, lo, hi = [], [], [], []
                for r in radii:
                    if r == 0:
                        xs.append(0.0), ms.append(0.0), lo.append(0.0), hi.append(0.0)
                        continue
                    a = an.aggregate(d, c, split, metric, f"r={r:g}")
                    if a is None or a.estimate.ci95 is None:
                        continue
                    xs.append(r), ms.append(a.estimate.value), lo.append(a.estimate.ci95[0]), hi.append(
                        a.estimate.ci95[1])
                if len(xs) < 2:
                    continue
                ax.plot(xs, ms, marker="o", ms=3, color=pal[c], label=plan.label(c))
                ax.fill_between(xs, lo, hi, color=pal[c], alpha=0.18)
            ax.set_title(f"{split} flatness, test domain {plan.where(d)}")
            ax.set_xlabel("radius γ (L2 norm of the weight perturbation)")
            ax.set_ylabel("loss increase E[L(w+γu)] − L(w) (nats)")
    axes[0, 0].legend(title="model (95 % CI over seeds)", fontsize=7)
    fig.tight_layout()
    return fig


def fig_per_seed(run):
    """(2) Each declared metric's summary row per seed (train split, with its bound / measurement CI), each seed's
    values joined by a grey line across the configurations of one test domain (the pairs: one prefix, one set of
    directions and probes), and the mean over seeds with its 95 % CI (black)."""
    plan, an = run.plan, registered_analysis(run)
    specs = [(n, k, M.get(n).label(k)) for n in M.drawn_in("fig2_per_seed_pairs")
             for k in [M.get(n).summary_row(plan.settings.of(n))]]
    if not specs:
        return None
    pal = _palette(plan)
    fig, axes = plt.subplots(1, len(specs), figsize=(5.6 * len(specs), 4.2), squeeze=False)
    for ax, (metric, key, ylabel) in zip(axes[0], specs):
        xt, xl, seen = [], [], []
        for k, d in enumerate(plan.domains):
            lines: dict[int, list] = {}
            for ci, (c, _) in enumerate(plan.configs):
                x = k * (len(plan.configs) + 1) + ci
                for m in run.runs(d, c):
                    rec = m.record("train", metric)
                    if rec is None or not rec.has_row(key):
                        continue
                    r = rec.row(key)
                    err = None if r.interval is None else [[r.value - r.interval[0]], [r.interval[1] - r.value]]
                    ax.errorbar(x, r.value, yerr=err, fmt="o", ms=2.5, color=pal[c], capsize=1.2, alpha=0.75,
                                zorder=3)
                    lines.setdefault(m.seed, []).append((x, r.value))
                a = an.aggregate(d, c, "train", metric, key)
                if a is not None and a.estimate.ci95 is not None:
                    e = a.estimate
                    ax.errorbar(x + 0.3, e.value, yerr=[[e.value - e.ci95[0]], [e.ci95[1] - e.value]], fmt="D",
                                ms=4, color="k", capsize=3, zorder=4)
                xt.append(x)
                xl.append(f"{plan.label(c)}\n{plan.where(d)}")
            for pts in lines.values():
                if len(pts) > 1:
                    ax.plot(*zip(*sorted(pts)), color="0.6", lw=0.6, alpha=0.6, zorder=2)
            seen += [v for pts in lines.values() for _, v in pts]
        if seen:  # the seeds' range: a mean over 2 seeds has a t-interval far wider than the data
            lo, hi = min(seen), max(seen)
            pad = 0.15 * (hi - lo or abs(hi) or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(xt, xl, rotation=60, fontsize=7)
        ax.set_ylabel(f"{ylabel} (train split)")
        ax.set_xlabel("model, test domain")
        kinds = {r.row(key).interval_kind for m in run.models for r in [m.record("train", metric)]
                 if r is not None and r.has_row(key)} - {None}
        what = " / ".join(sorted(M.interval_label(k) for k in kinds)) or "no interval"
        ax.set_title(f"{ylabel[:1].upper() + ylabel[1:]} (dots: {what} of each measurement)", fontsize=9)
    fig.suptitle("Coloured dots: seeds; grey lines join one seed's models (its pairs); black: mean and 95 % CI "
                 "over seeds (axes span the seeds' values: a CI over 2 seeds may leave them)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_claims(run):
    """(9) The confirmatory family: each seed's difference b - a (relative to a where the margin is relative),
    each the mean over the test domains, the mean with its 95 % CI (the difference test) and its 90 % CI (what
    TOST checks), against the equivalence margin (shaded) and 0."""
    plan, an = run.plan, registered_analysis(run)
    if not an.claims:
        return None
    fig, axes = plt.subplots(1, len(an.claims), figsize=(2.9 * len(an.claims), 4.2), squeeze=False)
    for ax, c in zip(axes[0], an.claims):
        t = c.test
        A, B = np.asarray(t.a_values), np.asarray(t.b_values)
        rel = t.margin_relative and A.size and A.mean() > 0
        scale = 100 / A.mean() if rel else 1.0
        d = (B - A) * scale
        jitter = np.linspace(-0.18, 0.18, max(len(d), 1))
        ax.scatter(jitter[:len(d)], d, s=12, color="0.35", zorder=3, label="seeds")
        if t.margin is not None:
            m = 100 * t.margin if rel else t.margin
            ax.axhspan(-m, m, color="tab:green", alpha=0.12, lw=0, label=f"margin ±{m:g}{' %' if rel else ''}")
        ax.axhline(0, color="k", lw=0.8)
        dt = t.difference
        if dt.ci95 is not None:
            ax.errorbar(0.35, dt.estimate * scale, yerr=[[(dt.estimate - dt.ci95[0]) * scale],
                                                         [(dt.ci95[1] - dt.estimate) * scale]],
                        fmt="D", color="k", capsize=4, ms=5, label="mean, 95 % CI")
        e = t.equivalence
        if e is not None and e.ci95 is not None:
            lo, hi = (100 * e.ci95[0], 100 * e.ci95[1]) if rel else e.ci95
            ax.plot([0.5, 0.5], [lo, hi], color="tab:green", lw=4, solid_capstyle="butt", label="90 % CI (TOST)")
        ax.set_xlim(-0.4, 0.8)
        ax.set_xticks([])
        ax.set_ylabel(("difference, % of " if rel else "difference, ") + (plan.label(t.a) if rel else t.unit))
        ax.set_title(f"{plan.label(t.b)} vs {plan.label(t.a)}\n{_claim_label(c)}\n{c.verdict}", fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="best")
    where = (f"each the mean over test domains {', '.join(plan.domains)}" if len(plan.domains) > 1
             else f"test domain {plan.where(plan.domains[0])}")
    fig.suptitle(f"Confirmatory family: paired differences over {len(plan.seeds)} seeds ({where}); title: the "
                 f"verdict", fontsize=9)
    fig.tight_layout()
    return fig


def _finished(fig, drawn: int, legend_ax=None, **legend):
    """The figure laid out (with its legend on `legend_ax`), or None, closed, when nothing was drawn on it."""
    if not drawn:
        plt.close(fig)
        return None
    if legend_ax is not None:
        legend_ax.legend(fontsize=7, **legend)
    fig.tight_layout()
    return fig


def _claim_label(c) -> str:
    if c.spec.metric == ACCURACY:
        return "out-of-domain accuracy"
    return M.get(c.spec.metric).label(c.spec.row) + (f", {c.spec.split}" if c.spec.split else "")


def _drawn(figure: str) -> str | None:
    """The metric the figure `figure` draws (the first registry entry naming it), or None."""
    names = M.drawn_in(figure)
    return names[0] if names else None


def fig_density(run):
    """(3) Hessian spectral densities (SLQ, Gaussian broadening) on a log scale, one seed per model."""
    metric = _drawn("fig3_spectral_density")
    if metric is None:
        return None
    plan = run.plan
    d = plan.domains[0]
    pal = _palette(plan)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = 0
    for c, _ in plan.configs:
        m, rec = _first(run, d, c, "train", metric)
        if rec is None:
            continue
        r = rec.result
        ax.semilogy(r.grid, np.maximum(np.asarray(r.density), 1e-12), color=pal[c], label=f"{plan.label(c)} (seed {m.seed})")
        drawn += 1
    ax.set_ylim(1e-8, None)
    ax.set_xlabel("eigenvalue λ of the Hessian")
    ax.set_ylabel("spectral density (log scale)")
    ax.set_title(f"Hessian spectral density, train split, test domain {plan.where(d)}")
    return _finished(fig, drawn, ax, title="model")


CURVATURE_NAMES = {"hessian": "Hessian", "ggn": "GGN"}


def fig_curvature_spectra(run):
    """(12) The spectra of every curvature whose metric names this figure (the Hessian and the GGN) for full precision
    and the paper's bit-width, one seed each, one panel per test domain: the SLQ quadrature itself (each run's Ritz
    values theta_j and weights tau_j / runs, no Gaussian broadening, which would smear the GGN's spectrum below 0) on a
    symmetric-log eigenvalue axis that shows the outliers, the bulk and the negative side at once."""
    metrics = M.drawn_in("fig12_hessian_vs_ggn_spectra")
    plan = run.plan
    configs = [c for c in (plan.config_with_bits(None), plan.config_with_bits(plan.paper_bits)) if c]
    if not metrics or not configs:
        return None
    pal = _palette(plan)
    markers = ("o", "x", "^", "s")
    fig, axes = plt.subplots(1, len(plan.domains), figsize=(6.5 * len(plan.domains), 4.2), squeeze=False)
    drawn = 0
    for ax, d in zip(axes[0], plan.domains):
        for c in configs:
            for metric, mk in zip(metrics, markers):
                m, rec = _first(run, d, c, "train", metric)
                if rec is None:
                    continue
                r = rec.result
                name = CURVATURE_NAMES.get(metric.split("-")[0], metric)
                theta = np.concatenate([np.asarray(n, dtype=float) for n in r.nodes])
                tau = np.concatenate([np.asarray(w, dtype=float) for w in r.weights]) / len(r.nodes)
                ax.scatter(theta, np.maximum(tau, 1e-12), s=18, marker=mk, color=pal[c], alpha=0.8,
                           facecolors="none" if mk == "o" else None,
                           label=f"{plan.label(c)}, {name} (seed {m.seed})")
                drawn += 1
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yscale("log")
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xlabel("Ritz value θ (eigenvalue estimate; symmetric log scale, linear in [-1, 1])")
        ax.set_ylabel("SLQ weight τ (spectral mass)")
        ax.set_title(f"train split, test domain {plan.where(d)}")
    fig.suptitle("Hessian and GGN spectra: stochastic Lanczos quadrature's Ritz values and weights", fontsize=10)
    return _finished(fig, drawn, axes[0, 0], title="model, curvature")


def fig_curves(run):
    """(4) Filter-normalized 1D curves: mean and 95 % band over random directions (measurement), one seed."""
    metric = _drawn("fig4_filter_normalized_curves")
    if metric is None:
        return None
    plan = run.plan
    pal = _palette(plan)
    fig, axes = plt.subplots(1, len(plan.domains), figsize=(5.5 * len(plan.domains), 4), squeeze=False)
    drawn = 0
    for ax, d in zip(axes[0], plan.domains):
        for c, _ in plan.configs:
            m, rec = _first(run, d, c, "train", metric)
            if rec is None:
                continue
            r = rec.result
            lo, hi = zip(*r.ci95)
            ax.plot(r.alphas, r.mean, color=pal[c], label=f"{plan.label(c)} (seed {m.seed})")
            ax.fill_between(r.alphas, np.maximum(lo, 1e-6), hi, color=pal[c], alpha=0.2)
            drawn += 1
        ax.set_yscale("log")
        ax.set_xlabel("step α along a filter-normalized direction")
        ax.set_ylabel("training loss L(w + α d) (nats, log scale)")
        ax.set_title(f"1D curves, test domain {plan.where(d)} (95 % band over directions)")
    return _finished(fig, drawn, axes[0, 0], title="model")


def _surfaces(run, figure: str):
    plan = run.plan
    d = plan.domains[0]
    out = []
    metric = _drawn(figure)
    if metric is None:
        return d, out
    for c, _ in plan.configs:
        m, rec = _first(run, d, c, "train", metric)
        if rec is not None:
            out.append((c, m, rec.result))
    return d, out


def fig_surfaces(run):
    """(5) 2D contour slices side by side (shared levels and axes), one seed per model."""
    plan = run.plan
    d, surfs = _surfaces(run, "fig5_surfaces_2d")
    if not surfs:
        return None
    fig, axes = plt.subplots(1, len(surfs), figsize=(3.0 * len(surfs) + 1.2, 3.4), squeeze=False,
                             sharex=True, sharey=True)
    logs = [np.log10(np.asarray(s.losses)) for _, _, s in surfs]
    levels = np.linspace(min(x.min() for x in logs), max(x.max() for x in logs), 15)
    cs = None
    for ax, (c, m, s), Z in zip(axes[0], surfs, logs):
        X, Y = np.meshgrid(s.xs, s.ys)
        cs = ax.contourf(X, Y, Z, levels=levels, cmap="viridis")
        ax.plot([0], [0], "r+", ms=8)
        ax.set_title(f"{plan.label(c)} (seed {m.seed})", fontsize=9)
        ax.set_xlabel("α (dx)")
        ax.locator_params(nbins=5)
    axes[0, 0].set_ylabel("β (dy)")
    fig.suptitle(f"2D slices along filter-normalized directions, train split, test domain {plan.where(d)}", fontsize=10)
    fig.colorbar(cs, ax=axes[0].tolist(), label="log10 training loss")
    return fig


def fig_surface_3d(run):
    """(5b) The full-precision loss surface in 3D, seen from above its minimum."""
    plan = run.plan
    d, surfs = _surfaces(run, "fig5b_surface_3d")
    pick = next(((c, m, s) for c, m, s in surfs if dict(plan.configs)[c] is None), surfs[0] if surfs else None)
    if pick is None:
        return None
    c, m, s = pick
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    X, Y = np.meshgrid(s.xs, s.ys)
    Z = np.log10(np.asarray(s.losses))  # log scale: the basin is what matters, not the corners' walls
    ax.plot_surface(X, Y, Z, cmap="viridis", edgecolor="none", alpha=0.85, rstride=1, cstride=1)
    ax.contour(X, Y, Z, levels=12, zdir="z", offset=Z.min(), cmap="viridis", linewidths=0.8)
    j, i = np.unravel_index(np.argmin(Z), Z.shape)
    ax.scatter([s.xs[i]], [s.ys[j]], [Z.min()], color="r", marker="o", s=18, depthshade=False)
    ax.view_init(elev=50, azim=-125)  # from above the basin, so its minimum is in view
    ax.set_xlabel("α (dx)")
    ax.set_ylabel("β (dy)")
    ax.set_zlabel("log10 training loss")
    ax.set_title(f"Loss surface, {plan.label(c)} (seed {m.seed}), test domain {plan.where(d)}")
    return fig


def fig_qnoise(run):
    """(6) Quantization-noise test: measured vs predicted, one point per model and split, y = x and 2x lines."""
    plan, an = run.plan, registered_analysis(run)
    if an.noise is None:
        return None
    pal = _palette(plan)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    vals = []
    for ch in an.noise.checks:
        marker = "o" if ch.split == "train" else "^"
        px, py = ch.predicted, ch.measured
        xerr = None if ch.predicted_ci95 is None else [[max(px - ch.predicted_ci95[0], 0)], [ch.predicted_ci95[1] - px]]
        yerr = None if ch.measured_ci95 is None else [[max(py - ch.measured_ci95[0], 0)], [ch.measured_ci95[1] - py]]
        ax.errorbar(px, py, xerr=xerr, yerr=yerr, fmt=marker, ms=4, color=pal[ch.config], alpha=0.75, capsize=1.5,
                    lw=0.8, mfc="none" if not ch.ratio_within_2x else pal[ch.config])
        vals += [px, py]
    pos = [v for v in vals if v > 0]
    lim = (min(pos) / 2, max(pos) * 2) if pos else (1e-4, 1)
    ax.plot(lim, lim, "k--", lw=1, label="y = x")
    ax.plot(lim, [2 * v for v in lim], "k:", lw=0.8, label="y = 2x, y = x/2")
    ax.plot(lim, [v / 2 for v in lim], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    for axis in (ax.xaxis, ax.yaxis):  # labels at 1, 2, 5 x 10^k only: all minor labels collide
        axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for c, _ in plan.configs:
        ax.plot([], [], "o", color=pal[c], label=plan.label(c))
    ax.plot([], [], "k^", label="test split (circles: train)")
    ax.plot([], [], "ko", mfc="none", label="ratio CI not inside [1/2, 2]")
    ax.set_xlabel("predicted (1/24) Σ s² H_ii (nats)")
    ax.set_ylabel("measured E[L(w+D)] − L(w) (nats)")
    ax.set_title(f"Quantization-noise test: the ratio's Fieller CI lies\ninside [1/2, 2] for "
                 f"{an.noise.n_ratio_within_2x} of {an.noise.n} model-splits", fontsize=10)
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    return fig


def fig_accuracy(run):
    """(7) Out-of-domain accuracy against bits (mean and 95 % CI over seeds), and learning curves with the
    quantization switch (the form of the paper's Fig. 4)."""
    plan, an = run.plan, registered_analysis(run)
    pal = _palette(plan)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.2))
    ax = axes[0]
    for j, (d, mk) in enumerate(zip(plan.domains, "os^v")):
        xs, ys, lo, hi = [], [], [], []
        for c, _ in plan.configs:
            a = an.aggregate(d, c, "", ACCURACY, "ood")
            if a is None or a.estimate.ci95 is None:
                continue
            xs.append(plan.bits(c) * (1 + 0.03 * j))
            ys.append(a.estimate.value)
            lo.append(a.estimate.value - a.estimate.ci95[0])
            hi.append(a.estimate.ci95[1] - a.estimate.value)
        line = ax.errorbar(xs, ys, yerr=[lo, hi], marker=mk, capsize=3, label=f"out of domain, test {plan.where(d)}")
        e = run.eoq.get(d)
        if e:  # one ensemble per test domain: a star at its bit-width, named in the legend
            ens = 100 * e.mean_test_acc
            ax.plot([e.bits * (1 + 0.03 * j)], [ens], marker="*", ms=12, ls="none", color=line[0].get_color(),
                    label=f"EoQ {len(e.members)} x {e.bits} bit, test {plan.where(d)}: {ens:.1f}")
    ax.set_xscale("log", base=2)
    ticks = sorted({plan.bits(c) for c, _ in plan.configs})
    ax.set_xticks(ticks, [f"{b} (fp)" if b == 32 else str(b) for b in ticks])
    ax.set_xlabel("weight bits")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Out-of-domain accuracy (mean, 95 % CI over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    d = plan.domains[0]
    paper = plan.config_with_bits(plan.paper_bits)
    for c in [x for x in (plan.config_with_bits(None), paper) if x]:
        ms = sorted(run.runs(d, c), key=lambda m: m.seed)
        if not ms:
            continue
        m = ms[0]
        recs = [h for h in m.history if "mean_test_acc" in h]
        ax.plot([h["step"] for h in recs], [100 * h["mean_test_acc"] for h in recs], color=pal[c],
                label=f"{plan.label(c)}: out of domain")
        ax.plot([h["step"] for h in recs], [100 * h["mean_val_acc"] for h in recs], color=pal[c], ls="--",
                label=f"{plan.label(c)}: in-domain validation")
        if m.quant_start:
            ax.axvline(m.quant_start, color="k", ls=":", lw=1)
            ax.annotate("quantization on", (m.quant_start, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                        fontsize=7)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Learning curves, test domain {plan.where(d)}, seed {min(plan.seeds)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_quant_error(run):
    """(8) Quantization error histogram (in units of the step) against the uniform law, with the bias-corrected
    KL divergence and the G-test (the form of the paper's Fig. 2), one seed per bit-width."""
    plan = run.plan
    d = plan.domains[0]
    qs = [c for c, b in plan.configs if b is not None]
    picks = []
    for c in qs:
        ms = sorted(run.runs(d, c), key=lambda m: m.seed)
        if ms and ms[0].quant_error is not None:
            picks.append((c, ms[0]))
    if not picks:
        return None
    pal = _palette(plan)
    fig, axes = plt.subplots(1, len(picks), figsize=(3.4 * len(picks), 3.3), squeeze=False)
    for ax, (c, m) in zip(axes[0], picks):
        q = m.quant_error
        edges = np.asarray(q.edges)
        counts = np.asarray(q.counts)
        dens = counts / max(counts.sum(), 1) / np.diff(edges)
        ax.bar(edges[:-1], dens, width=np.diff(edges), align="edge", color=pal[c], alpha=0.7, label="measured")
        ax.axhline(1.0, color="k", ls="--", label="uniform U(−½, ½)")
        ax.set_title(f"{plan.label(c)}: KL {q.fit.kl_plugin:.4f} (floor {q.fit.bias_floor:.4f}),\n"
                     f"corrected {q.fit.kl_corrected:.4f}, G-test p = {q.fit.p:.2g}", fontsize=8)
        ax.set_xlabel("quantization error (w_q − w) / s (steps)")
        ax.set_ylabel("density")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_domain_samples(run):
    """(10) What the data look like: one image of each class from every domain (the first of its class), rows =
    domains in the data set's order, the test domains marked. Drawn from the data set itself (embedded sets only:
    a set on disk is not read by `figures`)."""
    from ..data import dataset_spec, load
    plan = run.plan
    spec = dataset_spec(plan.dataset)
    if spec.needs_root:
        return None
    data = load(plan.dataset, None, seed=0, image_size=plan.image_size)
    classes = data.num_classes
    fig, axes = plt.subplots(len(data.domains), classes, figsize=(0.9 * classes, 0.95 * len(data.domains)),
                             squeeze=False)
    for i, d in enumerate(data.domains):
        x, y = data.tensors[d]
        for k in range(classes):
            ax = axes[i, k]
            idx = (y == k).nonzero().flatten()
            if len(idx):
                img = x[int(idx[0])].squeeze(0).numpy()
                ax.imshow(img, cmap="gray", vmin=float(img.min()), vmax=float(img.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(d + (" (test)" if d in plan.domains else ""), rotation=0, ha="right", va="center",
                              fontsize=8)
    fig.suptitle(f"{plan.dataset}: one image per class and domain ({data.image_size} x {data.image_size} px; "
                 f"test domains of the run marked)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_domain_accuracy(run):
    """(11) The accuracy of every configuration on every domain: the held-out test domain (out of domain) and each
    training domain's 20 % validation split (in domain), mean and 95 % CI over the seeds, one panel per test
    domain."""
    from .. import stats
    plan = run.plan
    pal = _palette(plan)
    fig, axes = plt.subplots(1, len(plan.domains), figsize=(6.5 * len(plan.domains), 3.8), squeeze=False)
    drawn = 0
    for ax, d in zip(axes[0], plan.domains):
        ms0 = run.runs(d, plan.configs[0][0])
        if not ms0:
            continue
        doms = list(ms0[0].training.val_acc) + list(ms0[0].training.test_acc)
        width = 0.8 / len(plan.configs)
        for j, (c, _) in enumerate(plan.configs):
            ms = run.runs(d, c)
            if not ms:
                continue
            means, err = [], [[], []]
            for dom in doms:
                vals = [100 * (m.training.test_acc if dom in m.training.test_acc else m.training.val_acc)[dom]
                        for m in ms]
                e = stats.t_interval(vals)
                means.append(e.value)
                lo, hi = e.ci95 if e.ci95 else (e.value, e.value)
                err[0].append(e.value - lo)
                err[1].append(hi - e.value)
            xs = np.arange(len(doms)) + (j - (len(plan.configs) - 1) / 2) * width
            ax.bar(xs, means, width=width, color=pal[c], yerr=err, capsize=1.5, label=f"{plan.label(c)} ({len(ms)})",
                   error_kw={"lw": 0.7})
            drawn += 1
        ax.set_xticks(np.arange(len(doms)), [dom + ("\n(held out)" if dom == d else "") for dom in doms], fontsize=7)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"Test domain {plan.where(d)}: accuracy per domain (mean, 95 % CI over seeds)", fontsize=9)
    return _finished(fig, drawn, axes[0, 0], title="model (seeds)")


def fig_barriers(run):
    """(12) Linear mode connectivity of each seed's pairs: left, every pair's loss above the straight line between
    its endpoints, L(a) - [(1 - a) L(0) + a L(1)], from the seed's full-precision model (a = 0) to each quantized
    one (a = 1), one line per pair, and the mean over seeds (thick); right, the barrier per bit-width: each seed's
    value with its own simultaneous 95 % interval, and the barrier of the mean curve with its simultaneous 95 %
    interval over seeds (analysis.barriers; exploratory)."""
    from ..analysis import BARRIER
    metric = _drawn("fig13_loss_barriers")
    if metric is None:
        return None
    plan, an = run.plan, registered_analysis(run)
    pal = _palette(plan)
    quant = [(c, b) for c, b in plan.configs if b is not None]
    fig, axes = plt.subplots(len(plan.domains), 2, figsize=(11.5, 3.9 * len(plan.domains)), squeeze=False)
    drawn = 0
    for i, d in enumerate(plan.domains):
        ax, bx = axes[i]
        tops = []  # the upper ends the axis keeps in view: every seed's own, and the seed-level ones of >= 3 seeds
        few = []   # seed-level intervals of fewer seeds: drawn to the axis's top where longer, their end written
        for k, (c, bits) in enumerate(quant):
            ms = sorted(run.runs(d, c), key=lambda m: m.seed)
            first, curves = True, []
            for m in ms:
                rec = m.record("train", metric)
                if rec is None:
                    continue
                r = rec.result
                ax.plot(r.alphas, r.excess, color=pal[c], lw=0.6, alpha=0.45, label=plan.label(c) if first else None)
                curves.append(r)
                first = False
                drawn += 1
                b = rec.row("barrier")
                err = None if b.interval is None else [[b.value - b.interval[0]], [b.interval[1] - b.value]]
                bx.errorbar(k - 0.12 + 0.24 * (m.seed % 7) / 6, b.value, yerr=err, fmt="o", ms=3, color=pal[c],
                            capsize=1.5, alpha=0.8)
                tops.append(b.value if b.interval is None else b.interval[1])
            if curves and all(r.alphas == curves[0].alphas for r in curves):
                ax.plot(curves[0].alphas, np.mean([r.excess for r in curves], axis=0), color=pal[c], lw=2.4)
            e = next((x for x in an.exploratory if x.key == f"{BARRIER}{metric}:{c}@{d}"), None)
            if e is not None and e.one_sample.ci95 is not None:
                t = e.one_sample
                bx.errorbar(k + 0.3, t.estimate, yerr=[[t.estimate - t.ci95[0]], [t.ci95[1] - t.estimate]], fmt="D",
                            color="k", ms=5, capsize=4, zorder=4)
                if len(e.values) >= 3:
                    tops.append(t.ci95[1])
                else:
                    few.append((k + 0.3, t.ci95[1]))
        ax.axhline(0, color="k", lw=0.7)
        ax.axvspan(0, 1, color="0.92", zorder=0)
        ax.set_xlabel(f"a (0: the seed's {plan.label(plan.config_with_bits(None))} model, 1: its quantized model)")
        ax.set_ylabel("train loss above the line (nats)")
        ax.set_title(f"Pairs (thin), mean over seeds (thick); test domain {plan.where(d)}; BatchNorm recomputed",
                     fontsize=8)
        ax.legend(fontsize=7, title="quantized end")
        bx.axhline(0, color="k", lw=0.7)
        if tops and max(tops) > 0:
            top = 1.3 * max(tops)
            bx.set_ylim(-0.05 * top, top)
            for x, hi in few:
                if hi > top:
                    bx.text(x + 0.06, 0.97 * top, f"to {hi:.2g}", fontsize=6, ha="left", va="top")
        bx.set_xticks(range(len(quant)), [plan.label(c) for c, _ in quant])
        bx.set_xlabel("quantized model of the pair")
        bx.set_ylabel("loss barrier (nats)")
        bx.set_title("Per seed (its own simultaneous 95 %); black: the mean curve's barrier,\nsimultaneous 95 % CI "
                     "over seeds (exploratory)", fontsize=8)
    return _finished(fig, drawn)


FIGURES = {
    "fig1_local_flatness": fig_flatness,
    "fig2_per_seed_pairs": fig_per_seed,
    "fig3_spectral_density": fig_density,
    "fig4_filter_normalized_curves": fig_curves,
    "fig5_surfaces_2d": fig_surfaces,
    "fig5b_surface_3d": fig_surface_3d,
    "fig6_quantization_noise": fig_qnoise,
    "fig7_accuracy_vs_bits": fig_accuracy,
    "fig8_quantization_error": fig_quant_error,
    "fig9_confirmatory_claims": fig_claims,
    "fig10_domain_samples": fig_domain_samples,
    "fig11_domain_accuracy": fig_domain_accuracy,
    "fig12_hessian_vs_ggn_spectra": fig_curvature_spectra,
    "fig13_loss_barriers": fig_barriers,
}


def make_figures(run, out: str, *, formats=("png", "pdf")) -> list[str]:
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise FlatlensError(f"unknown figure format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    _style()
    os.makedirs(out, exist_ok=True)
    written = []
    for name, fn in FIGURES.items():
        written += draw_figure(run, name, out, formats=formats)
    return written


def draw_figure(run, name: str, out: str, *, formats=("png", "pdf")) -> list[str]:
    """Figure `name` of FIGURES drawn from `run` into out/name.{format} (atomically, no creation date: the same run
    redraws byte-identical files); the paths written (none when the run lacks what it draws)."""
    _style()
    fig = FIGURES[name](run)
    if fig is None:
        return []
    written = []
    for fmt in formats:
        buf = io.BytesIO()
        meta = {"CreationDate": None} if fmt == "pdf" else ({"Date": None} if fmt == "svg" else {})
        fig.savefig(buf, format=fmt, dpi=130, bbox_inches="tight", metadata=meta)
        path = os.path.join(out, f"{name}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    plt.close(fig)
    return written


def plot_compare(rep, path: str) -> None:
    """`compare --plot`: each row's value and interval per checkpoint (or group), one panel per row and split."""
    ext = os.path.splitext(path)[1][1:].lower() or "png"
    if ext not in FORMATS:
        raise FlatlensError(f"--plot {path}: unknown format {ext!r}; use one of {', '.join(FORMATS)}")
    _style()
    keys = list(dict.fromkeys((r.split, r.metric, r.key) for r in rep.rows))
    n = len(keys)
    cols = min(3, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        rs = [r for r in rep.rows if (r.split, r.metric, r.key) == key]
        names = [os.path.basename(r.subject) for r in rs]
        vals = [r.value for r in rs]
        err = [[r.value - r.interval[0] if r.interval else 0 for r in rs],
               [r.interval[1] - r.value if r.interval else 0 for r in rs]]
        ax.errorbar(range(len(rs)), vals, yerr=err, fmt="o", capsize=3)
        ax.set_xticks(range(len(rs)), names, rotation=30, fontsize=7)
        ax.set_title(f"{rs[0].label} ({key[0]})", fontsize=8)
        ax.set_ylabel("value (95 % CI or bound)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=ext, dpi=130)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
