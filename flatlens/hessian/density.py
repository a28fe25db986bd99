"""Spectral density of H by stochastic Lanczos quadrature (SLQ), Gaussian-broadened.

For a unit start vector v, m Lanczos steps give T = V'HV with eigenpairs (theta_j, y_j); the quadrature
    phi(t) ~ sum_j tau_j N(t; theta_j, sigma^2),  tau_j = (e_1' y_j)^2
estimates the spectral density (averaged over runs); E[v'Hv] = tr(H)/d, so sum_j tau_j theta_j -> tr(H)/d.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from .._util import check_number, generator, rademacher
from ..objective import Objective, timer
from .lanczos import lanczos
from .results import DensityResult


def lanczos_tridiag(obj: Objective, v: torch.Tensor, m: int):
    """m steps of Lanczos with full reorthogonalization; returns the diagonals (alpha, beta) of T."""
    alpha, beta = [], []
    for alpha, beta, _, _ in lanczos(obj, v, m):
        pass
    return np.asarray(alpha), np.asarray(beta[: len(alpha) - 1])


def density(obj: Objective, *, n_iter: int = 80, n_runs: int = 4, sigma: float | None = None,
            n_grid: int = 1000, seed: int = 0) -> DensityResult:
    """SLQ density: n_runs Rademacher starts, n_iter Lanczos steps each; density integrates to 1."""
    check_number("n_iter", n_iter, lo=1, integer=True)
    check_number("n_runs", n_runs, lo=1, integer=True)
    if sigma is not None:
        check_number("sigma", sigma, lo=0, lo_open=True)
    elapsed = timer()
    start = obj.n_hvp
    m = min(n_iter, obj.num_params)
    nodes, weights = [], []
    for r in range(n_runs):
        g = generator(seed, "slq", r)
        v = rademacher((obj.num_params,), gen=g, dtype=torch.float64, device="cpu").to(obj.device, obj.dtype)
        a, b = lanczos_tridiag(obj, v, m)
        if len(a) == 1:
            theta, y = a.copy(), np.ones((1, 1))
        else:
            theta, y = eigh_tridiagonal(a, b)
        nodes.append(theta.tolist())
        weights.append((y[0] ** 2).tolist())
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
                         sigma=float(sigma), n_iter=m, n_runs=n_runs, n_hvp=obj.n_hvp - start,
                         seconds=elapsed(), seed=seed, objective=obj.describe())
