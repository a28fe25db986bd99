"""Objectives whose curvature is known exactly, for validating estimators.

    quadratic:          F(t) = 1/2 (t - t*)' A (t - t*),   A = Q diag(eigenvalues) Q',  H = A
    linear_regression:  F(w) = 1/n ||X w - y||^2,                                       H = 2/n X'X
"""
from __future__ import annotations

import torch
from torch import nn

from .objective import BatchLoss, Objective


class _Quadratic(nn.Module):
    def __init__(self, A: torch.Tensor, t_star: torch.Tensor, t0: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("t_star", t_star)
        self.theta = nn.Parameter(t0.clone())

    def forward(self):
        d = self.theta - self.t_star
        return 0.5 * d @ (self.A @ d)  # 1/2 (t - t*)' A (t - t*)


def _quadratic_loss(model, batch):
    return model(), 1


def random_rotation(d: int, *, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


class ToyObjective(Objective):
    """An Objective that also carries its exact dense `hessian`."""

    hessian: torch.Tensor
    eigenvalues: torch.Tensor | None = None


def quadratic(eigenvalues, *, seed: int = 0, offset=None, dtype=torch.float64, device=None) -> ToyObjective:
    """1/2 (t - t*)' A (t - t*) evaluated at t = t* + offset (default: at the minimum, offset 0)."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).reshape(-1)
    d = lam.numel()
    Q = random_rotation(d, seed=seed)
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    g = torch.Generator().manual_seed(seed + 1)
    t_star = torch.randn(d, generator=g, dtype=torch.float64)
    t0 = t_star + (torch.as_tensor(offset, dtype=torch.float64) if offset is not None else 0.0)
    model = _Quadratic(A.to(dtype), t_star.to(dtype), t0.to(dtype))
    obj = Objective(model, BatchLoss(_quadratic_loss), [()], device=device or "cpu", hvp_mode="graph")
    obj.__class__ = ToyObjective
    obj.hessian = A.to(dtype)
    obj.eigenvalues = torch.sort(lam, descending=True).values
    obj.eigenvectors = Q.to(dtype)  # column i belongs to eigenvalues[i] as given (unsorted)
    return obj


def linear_regression(n: int, d: int, *, seed: int = 0, noise: float = 0.1, dtype=torch.float64,
                      device=None, batch_size: int | None = None) -> ToyObjective:
    """MSE of a bias-free linear model on seeded Gaussian data; exact Hessian 2/n X'X."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = X @ w_true + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).to(torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
    model = model.to(dtype)
    X, y = X.to(dtype), y.to(dtype)
    if batch_size is None:
        data = (X, y)
    else:
        data = [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]
    obj = Objective(model, nn.MSELoss(), data, device=device or "cpu")
    obj.__class__ = ToyObjective
    obj.hessian = (2.0 / n) * (X.T @ X)
    obj.eigenvalues = torch.linalg.eigvalsh(obj.hessian.double()).flip(0).to(dtype)
    return obj
