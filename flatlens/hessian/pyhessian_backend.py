"""PyHessian 0.1 as a backend, to reproduce its numbers (and to compare against it).

PyHessian takes a model, a criterion and one (x, y) batch or a loader of them; it switches the model to eval()
and keeps it there, so it runs on a throwaway copy here. Only plain (output, target) objectives with BatchNorm
in eval mode fit it. What it runs is its own: power iteration for the largest-magnitude eigenvalues (flatlens's
`which`, `method` and Ritz bounds do not apply; the record says "LM", "power", no bound) and Hutchinson with its
running-mean rule (tol 1e-3; flatlens's `rtol` and `method` do not apply; the record's `rtol` is that tol).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .._util import FlatlensError, timer
from ..objective import Objective
from .results import EigenResult, TraceResult


def _hessian_comp(obj: Objective):
    try:
        from pyhessian import hessian as PyHessian
    except ImportError as e:  # pragma: no cover - pyhessian is a dependency
        raise FlatlensError("the pyhessian backend needs `pip install pyhessian`") from e
    if not isinstance(obj, Objective):
        raise FlatlensError("the pyhessian backend measures an Objective's Hessian, not another operator")
    if obj.custom_loss:
        raise FlatlensError("the pyhessian backend needs loss_fn(output, target), not a BatchLoss")
    if obj.bn != "eval":
        raise FlatlensError("the pyhessian backend always evaluates in eval mode; use bn='eval'")
    model = copy.deepcopy(obj.model)
    named = dict(model.named_parameters())
    for n, p in named.items():
        p.requires_grad_(n in obj.names)
    if len(obj.data.batches) == 1:
        x, y = obj.data.batches[0]
        comp = PyHessian(model, obj.loss_fn, data=(x, y), cuda=obj.device.type == "cuda")
    else:
        comp = PyHessian(model, obj.loss_fn, dataloader=obj.data.batches, cuda=obj.device.type == "cuda")
    return comp


def pyhessian_eigenvalues(obj: Objective, k: int, *, tol: float = 1e-3, max_iter: int = 100, seed: int = 0):
    elapsed = timer()
    torch.manual_seed(seed)
    comp = _hessian_comp(obj)
    vals, _ = comp.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
    # PyHessian counts no products; power iteration with its rule uses at most max_iter per eigenvalue
    return EigenResult(values=[float(v) for v in vals], which="LM", method="power", n_hvp=-1,
                       converged=False, seconds=elapsed(), seed=seed, tol=tol, backend="pyhessian",
                       objective=obj.describe())


def pyhessian_trace(obj: Objective, *, max_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                    n_probes: int | None = None):
    """PyHessian's Hutchinson trace: its running-mean stopping rule (tol), or exactly n_probes with tol=0."""
    elapsed = timer()
    torch.manual_seed(seed)
    comp = _hessian_comp(obj)
    samples = comp.trace(maxIter=n_probes or max_iter, tol=0.0 if n_probes else tol)
    x = np.asarray(samples, dtype=np.float64)
    m = float(x.mean())
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("inf")
    from .._util import t_quantile
    half = t_quantile(len(x)) * se
    return TraceResult(value=m, stderr=se, ci95=(m - half, m + half), n_hvp=len(x), n_probes=len(x),
                       converged=n_probes is None and len(x) < max_iter, seconds=elapsed(), seed=seed,
                       method="hutchinson", rtol=tol, backend="pyhessian", objective=obj.describe())
