"""Curvature entries of the registry: extreme eigenvalues, trace, spectral density and diagonal of the Hessian; the
top eigenvalues, trace and spectral density of the generalized Gauss-Newton, and the trace of the Fisher (sampled and
observed labels), through the same estimators on their operators (hessian/ggn.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..hessian.results import DiagonalSummary, ExtremeEigenvalues, FisherTraces
from .registry import LOWER, Metric, Row, RowSpec, register_metric, setting, t_row


@dataclass
class CurvatureEigSettings:
    """Top eigenvalues of a curvature operator: its largest end (the GGN's, which is positive semi-definite)."""
    k: int = setting(1, "number of eigenvalues (up to 1000: each holds a vector of the model's size)", "--k", min=1,
                     max=1000)
    method: str = setting("lanczos", "eigenvalue method", "--eig-method", choices=("lanczos", "power"))
    tol: float = setting(1e-3, "eigenvalue tolerance (relative)", "--tol", gt=0, max=1)
    bound: str = setting("residual", "what Lanczos stops on and reports: residual (always a bound) or gap "
                         "(residual^2 / the Ritz values' gap: fewer HVPs, a bound when that gap estimate holds)",
                         "--eig-bound", choices=("residual", "gap"))
    max_hvp: int = setting(2000, "at most this many Hessian-vector products per estimate", "--max-hvp", min=1)

    def check(self) -> None:
        """The gap bound needs flatlens's Lanczos (checked before any work, by the estimator's own rule)."""
        from ..hessian.eigen import check_bound
        check_bound(self.bound, self.method)


@dataclass
class EigSettings(CurvatureEigSettings):
    """The Hessian's extreme eigenvalues: either end (it is indefinite), and PyHessian as a cross-check."""
    which: str = setting("LA", "which end: LA largest, SA smallest (algebraic), LM largest magnitude", "--which",
                         choices=("LA", "SA", "LM"))
    bottom: bool = setting(False, "also the most negative eigenvalue (which=SA; slow to converge: about 10x the "
                           "HVPs of the top one on the digits model)", "--bottom")
    backend: str = setting("flatlens", "flatlens, or pyhessian as a cross-check", "--backend",
                           choices=("flatlens", "pyhessian"))

    def check(self) -> None:
        from ..hessian.eigen import check_bound
        check_bound(self.bound, self.method, self.backend)


def _eig_compute(obj, s: EigSettings, ctx):
    from .. import hessian
    kw = dict(method=s.method, tol=s.tol, max_hvp=s.max_hvp, seed=ctx.seed, backend=s.backend, bound=s.bound)
    main = hessian.top_eigenvalues(obj, s.k, which=s.which, **kw)
    bottom = hessian.top_eigenvalues(obj, 1, which="SA", **kw) if s.bottom and s.which != "SA" else None
    return ExtremeEigenvalues(main=main, bottom=bottom)


def _eig_rows(r: ExtremeEigenvalues, s) -> list[Row]:
    out = []
    for res in ([r.main] + ([r.bottom] if r.bottom is not None else [])):
        for i, v in enumerate(res.values):
            b = res.bounds[i] if i < len(res.bounds) else None
            kind = "gap-bound" if res.bound == "gap" else "bound"
            out.append(Row(f"{res.which}{i + 1}", float(v), interval=None if b is None else (v - b, v + b),
                           interval_kind=None if b is None else kind))
    return out


register_metric(Metric(
    name="hessian-eig", summary="extreme Hessian eigenvalues (Lanczos) with residual bounds",
    command="hessian", role="headline", settings=EigSettings, compute=_eig_compute, rows=_eig_rows,
    specs=(RowSpec("LA", "top eigenvalue λ{rest}", "nats/w²", LOWER, prefix=True),
           RowSpec("SA", "smallest eigenvalue #{rest}", "nats/w²", None, prefix=True),
           RowSpec("LM", "largest-magnitude eigenvalue #{rest}", "nats/w²", None, prefix=True)),
    brief=lambda r: (f"{r.main.n_hvp + (r.bottom.n_hvp if r.bottom else 0)} HVPs, converged "
                     f"{r.main.converged and (r.bottom is None or r.bottom.converged)}"),
    axis="data", cost="about 4 s", summary_row=lambda s: "LA1",
    claim="{b} models have a lower top Hessian eigenvalue than {a}",
    # the density (one seed) shows the negative end
    plans={"full": lambda: EigSettings(tol=1e-3, bottom=False), "quick": lambda: EigSettings(tol=1e-2, bottom=False)},
    figures=("fig2_per_seed_pairs",)))


@dataclass
class TraceSettings:
    method: str = setting("hutch++", "trace estimator", "--trace-method", choices=("hutch++", "hutchinson"))
    rtol: float = setting(0.05, "stop when the 95 % CI half-width <= rtol * |trace|", "--rtol", gt=0, max=1)
    max_hvp: int = setting(2000, "at most this many Hessian-vector products per estimate", "--max-hvp", min=2)
    backend: str = setting("flatlens", "flatlens, or pyhessian as a cross-check", "--backend",
                           choices=("flatlens", "pyhessian"))


def _trace_compute(obj, s: TraceSettings, ctx):
    from .. import hessian
    return hessian.trace(obj, method=s.method, rtol=s.rtol, max_hvp=s.max_hvp, seed=ctx.seed, backend=s.backend)


def _trace_rows(r, s) -> list[Row]:
    # Welch against another checkpoint: Hutch++'s residual probes (I - QQ')g differ between models
    df = max(r.n_probes - 1, 0)
    return [Row("trace", r.value, r.stderr, df, tuple(r.ci95) if df else None, "ci95" if df else None,
                r.n_probes)]


register_metric(Metric(
    name="hessian-trace", summary="Hessian trace (Hutch++, stopped on its 95 % CI)", command="hessian",
    role="headline", settings=TraceSettings, compute=_trace_compute, rows=_trace_rows,
    specs=(RowSpec("trace", "Hessian trace tr(H)", "nats/w²"),),
    brief=lambda r: f"{r.n_hvp} HVPs, converged {r.converged}",
    axis="data", cost="about 3 s", summary_row=lambda s: "trace", compare_default=True,
    claim="{b} models have a lower Hessian trace than {a}",
    plans={"full": lambda: TraceSettings(rtol=0.1), "quick": lambda: TraceSettings(rtol=0.2)},
    figures=("fig2_per_seed_pairs",)))


@dataclass
class DensitySettings:
    n_iter: int = setting(40, "Lanczos steps per SLQ run", "--density-iter", min=1)
    n_runs: int = setting(3, "SLQ runs (random starts)", "--density-runs", min=2)
    sigma: float | None = setting(None, "Gaussian broadening (default 1 % of the spectrum's span)", gt=0)


def _density_compute(obj, s: DensitySettings, ctx):
    from .. import hessian
    return hessian.density(obj, n_iter=s.n_iter, n_runs=s.n_runs, sigma=s.sigma, seed=ctx.seed)


def _density_rows(r, s) -> list[Row]:
    per_run = [float(np.dot(w, v)) for w, v in zip(r.weights, r.nodes)]
    return [t_row("mean", per_run, pairing=f"slq:{r.n_runs}x{r.n_iter}:{r.seed}:{r.objective.get('num_params')}")]


register_metric(Metric(
    name="hessian-density", summary="Hessian spectral density (stochastic Lanczos quadrature)",
    command="hessian", role="illustrative", settings=DensitySettings, compute=_density_compute, rows=_density_rows,
    specs=(RowSpec("mean", "mean eigenvalue tr(H)/d (SLQ)", "nats/w²"),),
    brief=lambda r: f"{r.n_runs} runs x {r.n_iter} steps, {r.n_hvp} HVPs",
    axis="data", cost="about 10 s",
    plans={"full": lambda: DensitySettings(n_iter=20, n_runs=2), "quick": lambda: DensitySettings(n_iter=12, n_runs=2)},
    figures=("fig3_spectral_density", "fig12_hessian_vs_ggn_spectra")))


@dataclass
class DiagSettings:
    n_probes: int = setting(50, "Hutchinson probes of the diagonal", "--probes", min=2)


def _diag_compute(obj, s: DiagSettings, ctx):
    from .. import hessian
    res, sums = hessian.diagonal(obj, n_probes=s.n_probes, seed=ctx.seed, return_samples=True,
                                 weights=torch.ones(obj.num_params, dtype=obj.dtype, device=obj.device))
    return DiagonalSummary(diagonal=res, probe_sums=[float(x) for x in sums])


register_metric(Metric(
    name="hessian-diag", summary="Hessian diagonal (Hutchinson); its sum estimates the trace",
    command="hessian", role="extra", settings=DiagSettings, compute=_diag_compute,
    rows=lambda r, s: [t_row("sum", r.probe_sums,
                             pairing=f"rademacher:{len(r.probe_sums)}:{r.diagonal.objective.get('num_params')}")],
    specs=(RowSpec("sum", "sum of the diagonal (Hutchinson trace)", "nats/w²"),),
    brief=lambda r: f"{r.diagonal.n_probes} probes",
    axis="data", cost="about 5 s"))


# --------------------------------------------------------------------------- the GGN and the Fisher
def _ggn_eig_compute(obj, s: CurvatureEigSettings, ctx):
    from .. import hessian
    main = hessian.top_eigenvalues(hessian.ggn(obj), s.k, which="LA", method=s.method, tol=s.tol, max_hvp=s.max_hvp,
                                   seed=ctx.seed, bound=s.bound)
    return ExtremeEigenvalues(main=main)


register_metric(Metric(
    name="ggn-eig", summary="top eigenvalues of the generalized Gauss-Newton (Lanczos) with residual bounds",
    command="hessian", role="illustrative", settings=CurvatureEigSettings, compute=_ggn_eig_compute,
    rows=_eig_rows, specs=(RowSpec("LA", "GGN top eigenvalue λ{rest}", "nats/w²", LOWER, prefix=True),),
    brief=lambda r: f"{r.main.n_hvp} GGN products, converged {r.main.converged}",
    axis="data", cost="about 3 s",
    plans={"full": lambda: CurvatureEigSettings(tol=1e-3), "quick": lambda: CurvatureEigSettings(tol=1e-2)}))


@dataclass
class CurvatureTraceSettings:
    method: str = setting("hutch++", "trace estimator", "--trace-method", choices=("hutch++", "hutchinson"))
    rtol: float = setting(0.05, "stop when the 95 % CI half-width <= rtol * |trace|", "--rtol", gt=0, max=1)
    max_hvp: int = setting(2000, "at most this many Hessian-vector products per estimate", "--max-hvp", min=2)


def _ggn_trace_compute(obj, s: CurvatureTraceSettings, ctx):
    from .. import hessian
    return hessian.trace(hessian.ggn(obj), method=s.method, rtol=s.rtol, max_hvp=s.max_hvp, seed=ctx.seed)


register_metric(Metric(
    name="ggn-trace", summary="trace of the generalized Gauss-Newton (Hutch++, stopped on its 95 % CI)",
    command="hessian", role="illustrative", settings=CurvatureTraceSettings, compute=_ggn_trace_compute,
    rows=_trace_rows, specs=(RowSpec("trace", "GGN trace tr(G)", "nats/w²"),),
    brief=lambda r: f"{r.n_hvp} GGN products, converged {r.converged}",
    axis="data", cost="about 3 s",
    plans={"full": lambda: CurvatureTraceSettings(rtol=0.1), "quick": lambda: CurvatureTraceSettings(rtol=0.2)}))


@dataclass
class FisherTraceSettings(CurvatureTraceSettings):
    mc_samples: int = setting(16, "label draws per input for the sampled-label Fisher (its trace's CI covers the "
                              "probes, not the draws: on the digits CNN one draw per input moved tr(F) by 12 % between "
                              "two seeds, 16 draws by 0.05 %; more draws cost almost nothing)", "--fisher-mc-samples",
                              min=1)


def _fisher_trace_compute(obj, s: FisherTraceSettings, ctx):
    from .. import hessian
    kw = dict(method=s.method, rtol=s.rtol, max_hvp=s.max_hvp, seed=ctx.seed)
    sampled = hessian.trace(hessian.fisher(obj, labels="sampled", mc_samples=s.mc_samples, seed=ctx.seed), **kw)
    empirical = hessian.trace(hessian.fisher(obj, labels="empirical"), **kw)
    return FisherTraces(sampled=sampled, empirical=empirical, mc_samples=s.mc_samples)


def _fisher_trace_rows(r: FisherTraces, s) -> list[Row]:
    # each row's CI covers the probes; the sampled one's is conditional on its seeded label draws
    return [dataclasses.replace(_trace_rows(t, s)[0], key=key) for key, t in (("sampled", r.sampled),
                                                                              ("empirical", r.empirical))]


register_metric(Metric(
    name="fisher-trace", summary="trace of the Fisher: labels sampled from the model (type 2) and observed (empirical)",
    command="hessian", role="illustrative", settings=FisherTraceSettings, compute=_fisher_trace_compute,
    rows=_fisher_trace_rows,
    specs=(RowSpec("sampled", "Fisher trace, sampled labels (type 2)", "nats/w²"),
           RowSpec("empirical", "Fisher trace, observed labels (empirical)", "nats/w²")),
    brief=lambda r: (f"{r.sampled.n_hvp} + {r.empirical.n_hvp} Fisher products, converged "
                     f"{r.sampled.converged and r.empirical.converged}"),
    axis="data", cost="about 6 s",
    plans={"full": lambda: FisherTraceSettings(rtol=0.1), "quick": lambda: FisherTraceSettings(rtol=0.2)}))


def _ggn_density_compute(obj, s: DensitySettings, ctx):
    from .. import hessian
    return hessian.density(hessian.ggn(obj), n_iter=s.n_iter, n_runs=s.n_runs, sigma=s.sigma, seed=ctx.seed)


register_metric(Metric(
    name="ggn-density", summary="spectral density of the generalized Gauss-Newton (stochastic Lanczos quadrature)",
    command="hessian", role="illustrative", settings=DensitySettings, compute=_ggn_density_compute,
    rows=lambda r, s: [t_row("mean", [float(np.dot(w, v)) for w, v in zip(r.weights, r.nodes)],
                             pairing=f"slq-ggn:{r.n_runs}x{r.n_iter}:{r.seed}:{r.objective.get('num_params')}")],
    specs=(RowSpec("mean", "mean GGN eigenvalue tr(G)/d (SLQ)", "nats/w²"),),
    brief=lambda r: f"{r.n_runs} runs x {r.n_iter} steps, {r.n_hvp} GGN products",
    axis="data", cost="about 10 s",
    plans={"full": lambda: DensitySettings(n_iter=20, n_runs=2), "quick": lambda: DensitySettings(n_iter=12, n_runs=2)},
    figures=("fig12_hessian_vs_ggn_spectra",)))
