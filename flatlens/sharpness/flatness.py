"""Local flatness (SWAD, Cha et al. 2021):  F_r(w) = E_u[ F(w + r u) - F(w) ],  u uniform on the unit sphere
of the whole flattened parameter vector. For a quadratic at its minimum, F_r = (r^2 / 2) tr(H) / D."""
from __future__ import annotations

import numpy as np
import torch

from .._util import FlatlensError, mean_ci
from ..perturb import DirectionSpace, Evaluator, max_points, run_chunks
from .._util import timer
from ..objective import Objective
from .results import FlatnessResult


def check_radii(radii) -> np.ndarray:
    r = np.asarray(radii, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise FlatlensError("radii is empty: give at least one radius")
    if not np.all(np.isfinite(r)):
        raise FlatlensError("radii must be finite")
    if np.any(r < 0):
        raise FlatlensError(f"radii must be >= 0; got {r[r < 0][0]:g}")
    return r


def local_flatness(obj: Objective, radii, *, n_directions: int = 100, seed: int = 0, kind: str = "sphere",
                   ignore: str | None = None, strategy: str = "auto", precision: str = "fp32",
                   evaluator: Evaluator | None = None, store: str | None = None, progress: bool = False,
                   directions_per_chunk: int = 10) -> FlatnessResult:
    """Mean loss increase at each radius over n seeded `kind` directions (sphere: unit norm), with 95 % CIs."""
    elapsed = timer()
    r = check_radii(radii)
    if n_directions < 2:
        raise FlatlensError("n_directions must be >= 2 for a confidence interval")
    space = DirectionSpace(obj, kind, ignore)
    ev = evaluator if evaluator is not None else Evaluator(obj, strategy=strategy, precision=precision)
    r_t = torch.as_tensor(r, dtype=obj.dtype, device=obj.device)
    k = min(directions_per_chunk, max_points(obj))
    n_chunks = -(-n_directions // k)
    f0 = obj.loss()

    def compute(i):
        idx = list(range(i * k, min(n_directions, (i + 1) * k)))
        U = space.make(seed, idx)
        lo = torch.stack([ev(rad * U)[0] for rad in r_t], dim=1)  # one (k, P) matrix at a time
        return {"inc": lo - f0}

    parts = run_chunks(n_chunks, compute, store=store, progress=progress,
                       evaluator=ev, desc="flatness",
                       shapes=lambda i: {"inc": (min(n_directions, (i + 1) * k) - i * k, len(r))},
                       args={"m": "flatness", "radii": r.tolist(), "n": n_directions, "seed": seed, "kind": kind,
                             "ignore": space.ignore, "obj": obj.identity(), "k": k})
    inc = torch.cat([p["inc"] for p in parts]).numpy()
    m, se, lo, hi = mean_ci(inc, axis=0)
    return FlatnessResult(radii=r.tolist(), mean=m.tolist(), stderr=se.tolist(),
                          ci95=list(zip(lo.tolist(), hi.tolist())), increases=inc.tolist(), center_loss=f0,
                          n_directions=n_directions, seed=seed,
                          direction={"kind": kind, "ignore": space.ignore, "seed": seed},
                          evaluator=ev.describe(), seconds=elapsed(), objective=obj.describe())
