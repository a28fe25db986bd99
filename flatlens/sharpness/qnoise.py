"""The quantization-noise test: the paper's analytical argument made measurable.

With D_i ~ U(-s_i/2, s_i/2) independent, E[D_i^2] = s_i^2 / 12, and the second-order expansion gives
    E_D[F(w + D)] - F(w)  ~  (1/24) sum_i s_i^2 H_ii          (exact for a quadratic at any point).
measured:  Monte-Carlo mean of F(w + D) - F(w) over n_samples draws (with its 95 % CI);
predicted: (1/24) sum_i s_i^2 H_ii from Hutchinson probes, each giving sum_i s_i^2 g_i (H g)_i (with its CI).
"""
from __future__ import annotations

import math

import torch

from .._util import FlatlensError, derive_seed, mean_ci
from ..hessian.diagonal import diagonal
from ..landscape.curves import max_points
from ..landscape.evaluator import Evaluator
from ..landscape.runner import run_chunks, tensor_digest
from ..objective import Objective, timer
from .results import QuantNoiseResult


def step_vector(obj: Objective, steps: dict) -> torch.Tensor:
    """Flat vector of per-entry step sizes s_i (0 where a parameter has no step), broadcast per channel."""
    unknown = set(steps) - set(obj.names)
    if unknown:
        raise FlatlensError(f"steps name parameter(s) not in the objective: {', '.join(sorted(unknown)[:3])}")
    if not steps:
        raise FlatlensError("steps is empty: no parameter gets noise")
    parts = []
    for n, shape in zip(obj.names, obj.shapes):
        if n not in steps:
            parts.append(torch.zeros(shape.numel(), device=obj.device, dtype=obj.dtype))
            continue
        s = torch.as_tensor(steps[n], dtype=obj.dtype).to(obj.device)
        if s.numel() == 1:
            s = s.reshape(()).expand(shape)
        elif s.numel() == shape[0]:
            s = s.reshape((shape[0],) + (1,) * (len(shape) - 1)).expand(shape)
        elif tuple(s.shape) != tuple(shape):
            raise FlatlensError(f"step for {n!r} has {s.numel()} entries; expected 1, {shape[0]} or {shape.numel()}")
        if torch.any(s < 0):
            raise FlatlensError(f"step for {n!r} is negative")
        parts.append(s.reshape(-1))
    return torch.cat(parts)


def quantization_noise(obj: Objective, steps: dict, *, n_samples: int = 200, seed: int = 0, n_probes: int = 100,
                       strategy: str = "auto", precision: str = "fp32", evaluator: Evaluator | None = None,
                       store: str | None = None, progress: bool = False, samples_per_chunk: int = 20
                       ) -> QuantNoiseResult:
    if n_samples < 2 or n_probes < 2:
        raise FlatlensError("n_samples and n_probes must be >= 2 for confidence intervals")
    elapsed = timer()
    S = step_vector(obj, steps)
    ev = evaluator if evaluator is not None else Evaluator(obj, strategy=strategy, precision=precision)
    f0 = obj.loss()
    k = min(samples_per_chunk, max_points(obj))
    n_chunks = -(-n_samples // k)

    def compute(i):
        idx = range(i * k, min(n_samples, (i + 1) * k))
        D = torch.empty(len(idx), obj.num_params, device=obj.device, dtype=obj.dtype)
        for row, j in enumerate(idx):
            g = torch.Generator(device=obj.device)
            g.manual_seed(derive_seed(seed, "qnoise", j))
            D[row] = (torch.rand(obj.num_params, generator=g, device=obj.device, dtype=obj.dtype) - 0.5) * S
        lo, _ = ev(D)
        return {"inc": lo - f0}

    parts = run_chunks(n_chunks, compute, store=store, progress=progress, desc="qnoise",
                       args={"m": "qnoise", "n": n_samples, "seed": seed, "S": tensor_digest(S),
                             "obj": obj.describe(), "k": k})
    inc = torch.cat([p["inc"] for p in parts]).numpy()
    m, se, lo, hi = (float(x) for x in mean_ci(inc))
    _, weighted = diagonal(obj, n_probes=n_probes, seed=seed, weights=S * S)
    pm, pse, plo, phi = (float(x) / 24.0 for x in mean_ci(weighted))
    return QuantNoiseResult(measured=m, measured_stderr=se, measured_ci95=(lo, hi), predicted=pm,
                            predicted_stderr=pse, predicted_ci95=(plo, phi),
                            ratio=m / pm if pm != 0 else math.nan, n_samples=n_samples, n_probes=n_probes,
                            seed=seed, n_noisy_params=int((S > 0).sum()), center_loss=f0,
                            evaluator=ev.describe(), seconds=elapsed(), objective=obj.describe())
