"""Hutchinson estimate of the Hessian diagonal:  diag(H) = E[g * (H g)],  g Rademacher."""
from __future__ import annotations


import numpy as np
import torch

from .._util import FlatlensError, generator, rademacher, timer
from .operator import operator_of
from .results import DiagonalResult


def diagonal(obj, *, n_probes: int = 100, seed: int = 0, weights: torch.Tensor | None = None,
             return_samples: bool = False):
    """Per-entry estimate and standard error of diag(H), from `n_probes` Rademacher probes.

    weights (optional, flat): also return the per-probe samples of sum_i weights_i * g_i (Hg)_i, whose mean
    estimates sum_i weights_i H_ii (used by the quantization-noise test for its CI).
    """
    if n_probes < 2:
        raise FlatlensError("diagonal needs at least 2 probes for a standard error")
    op = operator_of(obj)
    elapsed = timer()
    start = op.n_hvp
    d = op.num_params
    s1 = torch.zeros(d, dtype=torch.float64, device=op.device)
    s2 = torch.zeros(d, dtype=torch.float64, device=op.device)
    weighted = []
    block = op.hvp_block if op.batched_hvps_pay() else 1  # blocks of probes where batched HVPs pay
    for i0 in range(0, n_probes, block):
        Vb = torch.stack([rademacher((d,), gen=generator(seed, "diag-probe", i), dtype=torch.float64, device="cpu")
                          for i in range(i0, min(n_probes, i0 + block))]).to(op.device, op.dtype)
        for v, hv in zip(Vb, op.hvp_many(Vb)):
            x = (v * hv).double()
            s1 += x
            s2 += x * x
            if weights is not None:
                weighted.append(float(weights.double().to(op.device) @ x))
    mean = s1 / n_probes
    var = (s2 - n_probes * mean * mean).clamp_min(0) / (n_probes - 1)
    se = (var / n_probes).sqrt()
    res = DiagonalResult(values=mean.cpu().tolist(), stderr=se.cpu().tolist(), names=list(op.names),
                         offsets=list(op.offsets), n_probes=n_probes, n_hvp=op.n_hvp - start,
                         seconds=elapsed(), seed=seed, objective=op.describe())
    if weights is not None or return_samples:
        return res, np.asarray(weighted)
    return res
