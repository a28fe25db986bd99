"""Worst-case sharpness: max over ||delta||_2 <= rho of F(w + delta) - F(w), by projected gradient ascent
with normalized steps (cosine-decayed from rho to rho/10) and random starts. adaptive=True (ASAM, Kwon et al. 2021) searches
delta = T_w eps with ||eps||_2 <= rho, T_w = |w| + eta, so the ball scales with the weights."""
from __future__ import annotations

import math

import torch

from .._util import FlatlensError, generator
from .._util import timer
from ..objective import Objective
from .results import SharpnessResult, WorstCaseResult


def worst_case(obj: Objective, rho: float, *, adaptive: bool = False, steps: int = 20, restarts: int = 1,
               step_size: float | None = None, eta: float = 0.0, seed: int = 0) -> WorstCaseResult:
    if not (isinstance(rho, (int, float)) and math.isfinite(rho)) or rho < 0:
        raise FlatlensError(f"rho must be a finite number >= 0; got {rho!r}")
    if steps < 1 or restarts < 1:
        raise FlatlensError("steps and restarts must be >= 1")
    elapsed = timer()
    f0 = obj.loss()
    w = obj.flatten(obj.center)
    T = (w.abs() + eta) if adaptive else torch.ones_like(w)
    best = {"inc": 0.0, "eps": torch.zeros_like(w), "traj": [0.0] * steps}
    n_grad = 0
    for r in range(restarts):
        g = generator(seed, "worst-case", r)
        eps = torch.randn(w.numel(), generator=g, dtype=torch.float64).to(w.device, w.dtype)
        eps *= 0.5 * rho / eps.norm().clamp_min(1e-30)
        run_best, run_eps, traj = -math.inf, eps.clone(), []
        for t in range(steps):
            # normalized steps from rho down to rho/10 (cosine), unless a fixed step_size is given
            alpha = step_size if step_size is not None else rho * (0.1 + 0.45 * (1 + math.cos(math.pi * t / steps)))
            f, grad = obj.grad_at(obj.unflatten(w + T * eps))
            n_grad += 1
            if f - f0 > run_best:
                run_best, run_eps = f - f0, eps.clone()
            traj.append(max(run_best, 0.0))
            ge = T * obj.flatten(grad)  # gradient with respect to eps
            gn = ge.norm()
            if gn == 0:
                break
            eps = eps + alpha * ge / gn
            n = eps.norm()
            if n > rho:
                eps *= rho / n  # project onto the ball
        f = obj.loss_at(obj.unflatten(w + T * eps))
        if f - f0 > run_best:
            run_best, run_eps = f - f0, eps.clone()
        if run_best > best["inc"] or r == 0:
            best = {"inc": run_best, "eps": run_eps, "traj": traj}
    delta = T * best["eps"]
    return WorstCaseResult(rho=float(rho), adaptive=adaptive, increase=float(best["inc"]),
                           loss=float(f0 + best["inc"]), center_loss=f0, perturbation_norm=float(delta.norm()),
                           scaled_norm=float(best["eps"].norm()), steps=steps, restarts=restarts, seed=seed,
                           trajectory=[float(t) for t in best["traj"]], n_grad=n_grad, seconds=elapsed(),
                           objective=obj.describe())


def batch_sharpness(obj: Objective, rho: float, *, batches: int, steps: int = 20, seed: int = 0) -> SharpnessResult:
    """Worst-case sharpness (ball rho) and adaptive sharpness (ball rho / 10) of each of `batches` contiguous
    slices of the objective's data, each optimized separately (tml-epfl's protocol): the spread over slices is
    the measurement's CI. Each slice's objective keeps the measured one's loss, BatchNorm mode and parameters."""
    xs = torch.cat([b[0] for b in obj.data.batches]).cpu()
    ys = torch.cat([b[1] for b in obj.data.batches]).cpu()
    wc, ad = [], []
    for idx in torch.tensor_split(torch.arange(obj.n_samples), batches):
        sub = Objective(obj.model, obj.loss_fn, (xs[idx], ys[idx]), device=obj.device, params=obj.names, bn=obj.bn)
        sub.on_progress = obj.on_progress
        wc.append(worst_case(sub, rho, steps=steps, seed=seed))
        ad.append(worst_case(sub, rho / 10, adaptive=True, steps=steps, seed=seed))
    return SharpnessResult(worst_case=wc, adaptive=ad, batches=batches)
