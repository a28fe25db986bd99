"""Extreme Hessian eigenvalues: Lanczos with full reorthogonalization stopped on its Ritz values' error bounds
(scipy's ARPACK, implicitly restarted, takes over past a memory cap on the stored basis), or power iteration with
deflation on a shifted operator.

Two bounds on the distance from a Ritz value theta (unit Ritz vector y, residual r = ||H y - theta y||) to an
eigenvalue of H:
    residual   |lambda - theta| <= r                      for some eigenvalue lambda (Bauer-Fike / Kahan; always)
    gap        |lambda - theta| <= r^2 / delta            (Kato-Temple; Parlett 1998, Thm 11.7.1) when no other
               eigenvalue lies within delta of theta. delta is estimated from the other Ritz values, each moved
               towards theta by its own residual: min_j |theta - theta_j| - r_j, once the Ritz values next to theta
               have converged (`_gaps`). An eigenvalue that Lanczos has not yet seen (a start vector nearly
               orthogonal to its eigenvector) can still sit closer: the gap bound holds when the estimate does,
               the residual bound always.
"""
from __future__ import annotations


import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from .._util import FlatlensError, check_number, generator, timer
from .operator import element_size, operator_of
from .linear_operator import as_linear_operator
from .lanczos import lanczos
from .results import EigenResult

WHICH = ("LA", "SA", "LM")
BOUNDS = ("residual", "gap")
# a gap is read off the Ritz values only once the neighbours of theta have residuals below this fraction of their
# distance from it (benchmarks/eigen_bounds.py: 0.01 gave no bound smaller than the error in 216 toy cases, 0.1
# gave 7)
NEIGHBOUR_CONVERGENCE = 0.01


def _gaps(theta: np.ndarray, resid: np.ndarray, idx) -> np.ndarray:
    """Estimated distance from each theta[i], i in idx, to the rest of the spectrum: min over the other Ritz values
    of |theta_i - theta_j| - r_j; nan (not known) unless the Ritz values next to theta_i on either side have
    converged to NEIGHBOUR_CONVERGENCE of their distance from it, and unless that estimate is positive.
    Why the neighbour rule: on a toy with eigenvalues {900, 500, 300, 120, bulk <= 40}, 7 Lanczos steps had not
    yet seen 120; the Ritz value below 300 sat at 45 with residual 33, and a gap taken from it (200, to 500) made
    the bound for 300 too small. The rule withholds the gap until 120 shows."""
    theta, resid = np.asarray(theta, dtype=np.float64), np.asarray(resid, dtype=np.float64)
    out = []
    for i in idx:
        dist = np.abs(theta - theta[i])
        dist[i] = np.inf
        above = np.where(theta > theta[i], dist, np.inf)
        below = np.where(theta < theta[i], dist, np.inf)
        # the nearest Ritz value on each side that has one (an end value has a neighbour on one side only)
        neighbours = [int(np.argmin(side)) for side in (above, below) if np.isfinite(side).any()]
        if not neighbours:
            out.append(np.nan)
            continue
        settled = all(resid[j] <= NEIGHBOUR_CONVERGENCE * dist[j] for j in neighbours)
        delta = float(np.min(dist - resid))
        out.append(delta if settled and delta > 0 else np.nan)
    return np.asarray(out, dtype=np.float64)


def _gap_bound(r: np.ndarray, delta) -> np.ndarray:
    """r^2 / delta where the estimated gap isolates theta (delta > r, so this is below r), else r (delta nan or
    None: no estimate)."""
    r = np.asarray(r, dtype=np.float64)
    delta = np.asarray([np.nan if x is None else x for x in np.atleast_1d(delta).tolist()], dtype=np.float64)
    isolated = delta > r  # False for nan
    return np.where(isolated, r * r / np.where(isolated, delta, 1.0), r)


def check_bound(bound: str, method: str = "lanczos", backend: str = "flatlens") -> None:
    """One FlatlensError unless `bound` is known and has what it needs: the gap bound needs flatlens's Lanczos."""
    if bound not in BOUNDS:
        raise FlatlensError(f"bound must be one of {', '.join(BOUNDS)}; got {bound!r}")
    if bound == "gap" and backend != "flatlens":
        raise FlatlensError("the gap bound needs flatlens's Lanczos: the pyhessian backend reports no bound")
    if bound == "gap" and method != "lanczos":
        raise FlatlensError("the gap bound needs Lanczos's Ritz values: the power method has none "
                            "(use the residual bound)")


def _residual_norms(op, vals, vecs) -> list[float]:
    """||H v - theta v|| for unit Ritz vectors v (one HVP each). For symmetric H some eigenvalue lies within
    this distance of theta (Bauer-Fike / Kahan): a bound, not a confidence interval."""
    out = []
    for lam, v in zip(vals, vecs):
        v = v / v.norm()
        out.append(float((op.hvp(v) - lam * v).norm()))
    return out


def top_eigenvalues(obj, k: int = 1, *, which: str = "LA", method: str = "lanczos",
                    tol: float = 1e-4, max_hvp: int | None = None, seed: int = 0,
                    backend: str = "flatlens", return_vectors: bool = False, bound: str = "residual") -> EigenResult:
    """The k algebraically largest ("LA"), smallest ("SA") or largest-magnitude ("LM") eigenvalues of H.

    bound: what Lanczos stops on and `bounds` reports per value, each <= tol * |value| when converged:
        "residual" ||H y - theta y|| (always a bound), or "gap" min(residual, residual^2 / estimated gap) (a bound
        when the gap estimate holds; fewer HVPs for the same tol). `residual_bounds` and `gaps` carry both parts.
    """
    check_bound(bound, method, backend)
    if which not in WHICH:
        raise FlatlensError(f"which must be one of {', '.join(WHICH)}; got {which!r}")
    if not isinstance(k, int) or k < 1:
        raise FlatlensError(f"k must be a positive integer; got {k!r}")
    op = operator_of(obj)
    if k > op.num_params:
        raise FlatlensError(f"k = {k} exceeds the number of parameters ({op.num_params})")
    check_number("tol", tol, lo=0, hi=1, lo_open=True)
    if max_hvp is not None:
        check_number("max_hvp", max_hvp, lo=1, integer=True)
    if backend == "pyhessian":  # PyHessian's own power iteration: the largest-magnitude eigenvalues, no bound
        if which == "SA":
            raise FlatlensError("the pyhessian backend finds the largest-magnitude eigenvalues only; which='SA' "
                                "needs backend='flatlens'")
        from .pyhessian_backend import pyhessian_eigenvalues
        return pyhessian_eigenvalues(obj, k, tol=tol, max_iter=max_hvp or 100, seed=seed)
    if backend != "flatlens":
        raise FlatlensError(f"unknown backend {backend!r} (flatlens or pyhessian)")
    if method == "lanczos":
        res, vecs = _lanczos(op, k, which, tol, max_hvp, seed, bound)
    elif method == "power":
        res, vecs = _power(op, k, which, tol, max_hvp, seed)
    else:
        raise FlatlensError(f"method must be lanczos or power; got {method!r}")
    r = np.asarray(_residual_norms(op, res.values, vecs))
    res.residual_bounds = r.tolist()
    res.residuals = [b / max(abs(v), 1e-30) for b, v in zip(res.residual_bounds, res.values)]
    res.bound = bound
    res.bounds = (_gap_bound(r, res.gaps) if bound == "gap" else r).tolist()  # Lanczos: one gap (or None) per value
    res.n_hvp += len(vecs)
    if return_vectors:
        res.vectors = vecs
    return res


def _pick(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    return {"LA": np.argsort(-theta), "SA": np.argsort(theta), "LM": np.argsort(-np.abs(theta))}[which][:k]


def _lanczos(op, k, which, tol, max_hvp, seed, bound="residual", memory_budget: int = 2 << 30):
    """Lanczos with full reorthogonalization, stopped on the Ritz values' own error bounds.

    After step j, T_j = V_j' H V_j has eigenpairs (theta_i, s_i) and each Ritz pair's residual is
        ||H y_i - theta_i y_i|| = beta_j |e_j' s_i|          (no extra HVP),
    a bound on the distance from theta_i to some eigenvalue of H (with bound="gap", the smaller r^2 / delta where
    the Ritz values' gap isolates theta_i: module docstring). The run stops as soon as the k wanted Ritz values
    all have that bound <= tol * |theta_i| (so a loose tol costs few HVPs), at an invariant subspace, or at
    the HVP budget. Vectors are kept on the objective's device, at most as many as `memory_budget` bytes hold;
    past that, ARPACK's implicitly restarted Lanczos (scipy's eigsh) goes on from the best Ritz vector."""
    d = op.num_params
    elapsed = timer()
    start = op.n_hvp
    budget = max_hvp or 100 * d
    if d <= max(2 * k + 1, 3) or k >= d - 1:
        return _dense(op, k, which, tol, seed, elapsed, start)
    cap = int(min(d, budget, max(2 * k + 2, memory_budget // max(1, d * element_size(op.dtype)))))
    g = generator(seed, "lanczos-v0")
    v = torch.randn(d, generator=g, dtype=torch.float64).to(op.device, op.dtype)
    converged, stop = False, "budget"
    for run in lanczos(op, v, cap):
        alpha, beta, b = run.alpha, run.beta, run.residual
        theta, S = eigh_tridiagonal(np.asarray(alpha), np.asarray(beta)) if len(alpha) > 1 else (
            np.asarray(alpha), np.ones((1, 1)))
        idx = _pick(theta, k, which)
        resid_all = b * np.abs(S[-1, :])  # ||H y - theta y|| of every Ritz pair, no extra HVP
        gaps = _gaps(theta, resid_all, idx)
        err = _gap_bound(resid_all[idx], gaps) if bound == "gap" else resid_all[idx]
        asked = tol * np.maximum(np.abs(theta[idx]), 1e-30)
        if len(idx) == k and np.all(err <= asked):
            used_gap = bound == "gap" and not np.all(resid_all[idx] <= asked)  # the residuals alone would not stop
            converged, stop = True, "ritz residual^2/gap" if used_gap else "ritz residual"
            break
        if b <= 1e-12 * max(1.0, float(np.max(np.abs(alpha)))):
            converged, stop = len(idx) == k, "invariant subspace"
            break
    n_used = len(run)
    # Ritz vectors y_i = V' s_i (k, d), summed in float64 one basis row at a time (no float64 copy of the basis)
    coef = torch.from_numpy(np.ascontiguousarray(S[:n_used, idx])).to(op.device)  # (n_used, k) float64
    Y = torch.zeros(len(idx), d, dtype=torch.float64, device=op.device)
    for j in range(n_used):
        Y += coef[j][:, None] * run.row(j).double()[None, :]
    vals = [float(t) for t in theta[idx]]
    vecs = [y.to(op.dtype) / y.norm().to(op.dtype) for y in Y]
    left = budget - (op.n_hvp - start)
    if not converged and stop == "budget" and n_used >= cap and left > 2 * k + 2 and cap < budget:
        vals, vecs, converged = _arpack(op, k, which, tol, left, vecs[0])
        stop = "arpack (restarted)"
        gaps = np.full(len(vals), np.nan)  # ARPACK returns no other Ritz values: no gap estimate (bound: residual)
    res = EigenResult(values=vals, which=which, method="lanczos", n_hvp=op.n_hvp - start,
                      converged=bool(converged and len(vals) == k), seconds=elapsed(), seed=seed, tol=tol,
                      stopped_on=stop, gaps=[None if np.isnan(g) else float(g) for g in gaps],
                      objective=op.describe())
    return res, vecs


def _dense(op, k, which, tol, seed, elapsed, start):
    """Tiny spaces: H from d HVPs, solved densely."""
    d = op.num_params
    H = torch.stack([op.hvp(e.to(op.device, op.dtype)).double().cpu() for e in torch.eye(d, dtype=torch.float64)])
    w, V = np.linalg.eigh(0.5 * (H + H.T).numpy())
    order = _pick(w, k, which)
    vecs = [torch.from_numpy(np.ascontiguousarray(V[:, i])).to(op.device, op.dtype) for i in order]
    gaps = _gaps(w, np.zeros_like(w), order)  # exact eigenvalues: their gaps are known
    res = EigenResult(values=[float(x) for x in w[order]], which=which, method="lanczos", n_hvp=op.n_hvp - start,
                      converged=True, seconds=elapsed(), seed=seed, tol=tol, stopped_on="dense",
                      gaps=[None if np.isnan(g) else float(g) for g in gaps], objective=op.describe())
    return res, vecs


def _arpack(op, k, which, tol, budget, v0):
    """scipy's implicitly restarted Lanczos (ARPACK), from v0, within `budget` HVPs."""
    d = op.num_params
    A = as_linear_operator(op)
    ncv = min(d, max(2 * k + 1, 20), budget)
    maxiter = max(1, (budget - ncv) // max(1, ncv - k))
    try:
        vals, V = eigsh(A, k=k, which=which, tol=tol, v0=v0.double().cpu().numpy(), ncv=ncv, maxiter=maxiter)
        converged = True
    except ArpackNoConvergence as e:
        vals, V = e.eigenvalues, e.eigenvectors
        converged = False
    order = _pick(vals, len(vals), which)
    return ([float(vals[i]) for i in order],
            [torch.from_numpy(np.ascontiguousarray(V[:, i])).to(op.device, op.dtype) for i in order], converged)


def _power(op, k, which, tol, max_hvp, seed):
    """Power iteration with deflation against found eigenvectors; stops when the Rayleigh quotient
    changes by less than tol (relative).

    "LA" / "SA" need the wanted end of the spectrum to be the largest in magnitude at *every* deflation step,
    or the next value found after deflation can come from the other end (on {5, 2, 1, -3} the second "LA" value
    would be -3). With rho ~ max |lambda| (a first power run, widened by 10 %), H + rho I has all eigenvalues in
    [0, 2 rho] in the order of H, so its largest-magnitude values are H's largest algebraic ones ("LA");
    H - rho I likewise for "SA"."""
    elapsed = timer()
    start = op.n_hvp
    budget = max_hvp or 1000 * k
    converged_all = True
    shift = 0.0
    if which in ("LA", "SA"):
        lm, _, ok, _ = _power_one(op, [], 0.0, tol, budget, seed, "shift")
        converged_all &= ok
        rho = 1.1 * abs(lm)
        shift = -rho if which == "LA" else rho  # operator H - shift I
    vals, vecs = [], []
    for i in range(k):
        remaining = budget - (op.n_hvp - start)
        if remaining <= 0:
            converged_all = False
            break
        lam, v, ok, _ = _power_one(op, vecs, shift, tol, remaining, seed, i)
        converged_all &= ok
        vals.append(lam + shift)
        vecs.append(v)
    order = np.argsort(-np.asarray(vals)) if which == "LA" else (
        np.argsort(vals) if which == "SA" else np.argsort(-np.abs(vals)))
    vals = [float(vals[i]) for i in order]
    vecs = [vecs[i] for i in order]
    res = EigenResult(values=vals, which=which, method="power", n_hvp=op.n_hvp - start,
                      converged=bool(converged_all and len(vals) == k), seconds=elapsed(), seed=seed, tol=tol,
                      objective=op.describe())
    return res, vecs


def _power_one(op, deflate, shift, tol, budget, seed, key):
    g = generator(seed, "power", key)
    v = torch.randn(op.num_params, generator=g, dtype=torch.float64).to(op.device, op.dtype)

    def project(x):
        for u in deflate:
            x = x - (u @ x) * u
        return x

    v = project(v)
    v = v / v.norm()
    lam_old = None
    for it in range(budget):
        hv = op.hvp(v) - shift * v
        hv = project(hv)
        lam = float(v @ hv)  # Rayleigh quotient of the shifted, deflated operator
        nrm = hv.norm()
        if nrm == 0:
            return lam, v, True, it + 1
        v = hv / nrm
        if lam_old is not None and abs(lam - lam_old) <= tol * (abs(lam) + 1e-12):
            return lam, v, True, it + 1
        lam_old = lam
    return lam, v, False, budget
