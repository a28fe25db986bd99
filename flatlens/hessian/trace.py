"""Hessian trace by Hutchinson or adaptive Hutch++, stopped on the width of a 95 % CI.

Hutchinson:  tr(H) = E[g' H g],  g Rademacher.
Hutch++:     tr(H) = tr(Q' H Q) + tr((I-QQ') H (I-QQ')),  Q = orth(H S) from a sketch S; the first term
             is exact, the second is estimated by Hutchinson on the deflated operator, so its CI is the CI.
The run stops when the CI half-width <= rtol * |estimate| (after `min_probes`), never on a running mean.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .._util import FlatlensError, check_number, generator, mean_ci, rademacher, t_quantile, timer
from .operator import operator_of
from .results import TraceResult

METHODS = ("hutch++", "hutchinson")


def _block_dots(op, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-parameter-tensor inner products a_l . b_l (rows of a, b may be stacked)."""
    prod = (a * b)
    return np.array([float(prod[..., s:e].sum()) for s, e in zip(op.offsets[:-1], op.offsets[1:])])


def trace(obj, *, method: str = "hutch++", rtol: float = 0.02, max_hvp: int | None = None,
          seed: int = 0, min_probes: int = 10, sketch_size: int | None = None, n_probes: int | None = None,
          per_layer: bool = True, backend: str = "flatlens", sketch_bytes: int = 1 << 30) -> TraceResult:
    """Estimate tr(H) with a 95 % CI.

    rtol: stop when the CI half-width is at most rtol * |estimate| (ignored when n_probes is given).
    max_hvp: hard cap on Hessian-vector products (default 2000); `converged` says whether rtol was met.
    n_probes: a fixed HVP budget instead of the stopping rule (Hutch++ splits it in thirds, as in
        Meyer et al. 2021).
    sketch_size: Hutch++ sketch width k for the adaptive mode (default min(10, d - 1)); costs 2k HVPs.
    """
    if method not in METHODS:
        raise FlatlensError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_number("rtol", rtol, lo=0, hi=1, lo_open=True)
    for name, v in (("max_hvp", max_hvp), ("n_probes", n_probes)):
        if v is not None:
            check_number(name, v, lo=2, integer=True)
    if backend == "pyhessian":
        from .pyhessian_backend import pyhessian_trace
        return pyhessian_trace(obj, max_iter=max_hvp or 100, tol=1e-3 if n_probes is None else 0.0,
                               seed=seed, n_probes=n_probes)
    if backend != "flatlens":
        raise FlatlensError(f"unknown backend {backend!r} (flatlens or pyhessian)")
    op = operator_of(obj)
    elapsed = timer()
    start = op.n_hvp
    d = op.num_params
    budget = n_probes if n_probes is not None else (max_hvp or 2000)
    if budget < 2:
        raise FlatlensError("the HVP budget must be at least 2")

    exact_total, exact_layers, Q, k = 0.0, np.zeros(len(op.names)), None, 0
    if method == "hutch++":
        if n_probes is not None:
            k = min(budget // 3, d)
        else:
            k = min(sketch_size if sketch_size is not None else 10, d - 1, max(0, (budget - 2) // 2))
        # the sketch S, H S and Q are (k, d) matrices: at most `sketch_bytes` of them (a ResNet's 11 M
        # parameters x 320 sketch vectors would be 28 GB); the rest of the budget goes to residual probes
        k = min(k, max(1, sketch_bytes // (4 * 8 * d)))
        if k > 0:
            g = generator(seed, "hutch++-sketch")
            S = rademacher((k, d), gen=g, dtype=torch.float64, device="cpu").to(op.device, op.dtype)
            HS = op.hvp_many(S)
            Q = torch.linalg.qr(HS.double().T).Q.T.to(op.dtype)  # k orthonormal rows spanning range(HS)
            HQ = op.hvp_many(Q)
            T = Q.double() @ HQ.double().T
            T = 0.5 * (T + T.T)
            exact_total = float(torch.trace(T))
            if per_layer:
                # tr(P_l H) = tr(P_l H QQ') + tr(P_l H R), R = I - QQ'; the first is exact from HQ, and
                # E[v_l . (Hv)_l] = tr(R P_l H R) = tr(P_l H R) for v = R g; both sum over l to the total
                exact_layers = _block_dots(op, Q, HQ)

    samples, layer_samples = [], []
    n_res = budget - (op.n_hvp - start) if n_probes is not None else None
    converged = False
    i = 0
    # probes go through hvp_many in blocks where batched HVPs pay (accelerators), one at a time otherwise;
    # probe i is drawn from its own generator and the rule is read after every probe (a block's probes past the
    # stopping one are paid for but not used), so the blocking changes neither the probes nor where the run stops
    block = op.hvp_block if op.batched_hvps_pay() else 1
    while True:
        used = op.n_hvp - start
        if n_probes is not None and i >= n_res:
            converged = True
            break
        if used >= budget:
            break
        b = min(block, budget - used, (n_res - i) if n_probes is not None else block)
        Vb = torch.stack([rademacher((d,), gen=generator(seed, "hutch-probe", i + j), dtype=torch.float64,
                                     device="cpu") for j in range(b)]).to(op.device, op.dtype)
        if Q is not None:
            Vb = Vb - (Vb @ Q.T) @ Q  # (I - QQ') g
        HVb = op.hvp_many(Vb)
        for v, hv in zip(Vb, HVb):
            samples.append(float(v.double() @ hv.double()))
            if per_layer:
                layer_samples.append(_block_dots(op, v, hv))
            i += 1
            if n_probes is None and i >= min_probes:
                m, se, _, _ = mean_ci(samples)
                if t_quantile(i) * float(se) <= rtol * abs(exact_total + float(m)):
                    converged = True
                    break
        if converged:
            break

    if samples:
        m, se, lo, hi = mean_ci(samples)
        m, se, lo, hi = float(m), float(se), float(lo), float(hi)
    else:
        m, se, lo, hi = 0.0, math.inf, -math.inf, math.inf
    if Q is not None and k >= d:
        se, lo, hi = 0.0, m, m  # Q spans the space: the sketch is the exact trace
    value = exact_total + m
    layers = {}
    if per_layer:
        L = np.asarray(layer_samples) if layer_samples else np.zeros((0, len(op.names)))
        for j, name in enumerate(op.names):
            if len(L) >= 2:
                lm, lse, llo, lhi = (float(x) for x in mean_ci(L[:, j]))
            else:
                lm = float(L[:, j].mean()) if len(L) else 0.0
                lse, llo, lhi = math.inf, -math.inf, math.inf
            base = float(exact_layers[j])
            layers[name] = {"value": base + lm, "stderr": lse, "ci95": (base + llo, base + lhi)}
    return TraceResult(value=value, stderr=se, ci95=(exact_total + lo, exact_total + hi),
                       n_hvp=op.n_hvp - start, n_probes=len(samples), converged=converged,
                       seconds=elapsed(), seed=seed, method=method, rtol=rtol, sketch_size=k,
                       per_layer=layers, objective=op.describe())
