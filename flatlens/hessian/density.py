"""Spectral density of H by stochastic Lanczos quadrature (SLQ), Gaussian-broadened.

For a unit start vector v, m Lanczos steps give T = V'HV with eigenpairs (theta_j, y_j); the quadrature
    phi(t) ~ sum_j tau_j N(t; theta_j, sigma^2),  tau_j = (e_1' y_j)^2
estimates the spectral density (averaged over runs); E[v'Hv] = tr(H)/d, so sum_j tau_j theta_j -> tr(H)/d.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from .._util import FlatlensError, check_number, generator, rademacher, timer
from .operator import element_size, operator_of
from .lanczos import lanczos_lockstep
from .results import DensityResult


def _quadrature(a: np.ndarray, b: np.ndarray):
    """Gauss quadrature of T = tridiag(a, b): nodes theta_j and weights tau_j = (e_1' y_j)^2."""
    if len(a) == 1:
        return a.tolist(), [1.0]
    theta, y = eigh_tridiagonal(a, b)
    return theta.tolist(), (y[0] ** 2).tolist()


def runs_per_block(op, n_runs: int, m: int, memory_budget: int = 2 << 30) -> int:
    """SLQ runs advanced in lockstep: as many as one vmapped backward takes (`hvp_block`) and as fit the
    memory budget with their m-vector bases (m * num_params each)."""
    basis = m * op.num_params * element_size(op.dtype)
    return int(max(1, min(n_runs, op.hvp_block, memory_budget // max(1, basis))))


def density(obj, *, n_iter: int = 80, n_runs: int = 4, sigma: float | None = None,
            n_grid: int = 1000, seed: int = 0, batched: bool | str = "auto") -> DensityResult:
    """SLQ density: n_runs Rademacher starts, n_iter Lanczos steps each; density integrates to 1.

    batched: "auto" runs the starts in lockstep blocks, their HVPs through one vmapped backward per step,
    where the operator measured that this pays (`batched_hvps_pay`: accelerators only), else one
    run after another; True / False force either. The numbers agree to float summation order."""
    check_number("n_iter", n_iter, lo=1, integer=True)
    check_number("n_runs", n_runs, lo=1, integer=True)
    if sigma is not None:
        check_number("sigma", sigma, lo=0, lo_open=True)
    if batched not in (True, False, "auto"):
        raise FlatlensError(f"batched must be True, False or 'auto'; got {batched!r}")
    op = operator_of(obj)
    elapsed = timer()
    start = op.n_hvp
    m = min(n_iter, op.num_params)

    def start_vector(r):
        g = generator(seed, "slq", r)
        return rademacher((op.num_params,), gen=g, dtype=torch.float64, device="cpu").to(op.device, op.dtype)

    if batched == "auto":
        batched = n_runs > 1 and op.batched_hvps_pay()
    block = runs_per_block(op, n_runs, m) if batched else 1
    runs = []
    for first in range(0, n_runs, block):
        starts = torch.stack([start_vector(r) for r in range(first, min(n_runs, first + block))])
        runs += lanczos_lockstep(op, starts, m, batched=bool(batched))
    nodes, weights = map(list, zip(*(_quadrature(np.asarray(r.alpha), np.asarray(r.beta)) for r in runs)))
    allnodes = np.concatenate([np.asarray(n) for n in nodes])
    lo, hi = float(allnodes.min()), float(allnodes.max())
    span = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
    if sigma is None:
        sigma = 0.01 * span if hi > lo else max(1e-6, 1e-3 * abs(hi))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, n_grid)
    dens = np.zeros_like(grid)
    for th, w in zip(nodes, weights):
        th, w = np.asarray(th), np.asarray(w)
        dens += (w[None, :] * np.exp(-0.5 * ((grid[:, None] - th[None, :]) / sigma) ** 2)).sum(1)
    dens /= np.trapezoid(dens, grid)  # integrate to 1 on the grid
    return DensityResult(grid=grid.tolist(), density=dens.tolist(), nodes=nodes, weights=weights,
                         sigma=float(sigma), n_iter=m, n_runs=n_runs, n_hvp=op.n_hvp - start,
                         seconds=elapsed(), seed=seed, objective=op.describe())
