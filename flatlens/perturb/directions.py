"""Perturbation directions in the objective's parameter space, generated on its device from a seed.

Direction i of a stream is drawn from its own generator (seed, kind, i), so directions can be made chunk by
chunk, or on different ranks, and still be the same numbers. Kinds:
  gaussian  d ~ N(0, I)
  sphere    d = g / ||g||, uniform on the unit sphere of the whole flattened vector (SWAD's flatness)
  filter    per filter (slice along dim 0): d_f = g_f ||w_f|| / ||g_f||  (Li et al. 2018)
  layer     per parameter tensor: d_t = g_t ||w_t|| / ||g_t||
  eigen     the top eigenvectors of the objective's Hessian, H v_i = lambda_i v_i, i = 0, 1, ... in descending
            order (Lanczos, `hessian.top_eigenvalues`): unit vectors as the sphere kind's, so F(w + a v_i) =
            F(w) + a g'v_i + (lambda_i / 2) a^2 + O(a^3); not random: the seed only starts Lanczos. Each sign is fixed
            so that the entry of largest magnitude is positive. The eigenvalues and their bounds are recorded beside
            the directions (`DirectionSpace.describe`).
Bias / BatchNorm policy (`ignore`): "biasbn" zeroes every parameter of dim <= 1 (Li et al.'s default; for eigen
directions: the eigenvectors of P H P, P the projection onto the other parameters); "none" keeps them, normalized
per tensor (filter/layer kinds) so a zero bias gives a zero direction, never a division by zero. Defaults:
"biasbn" for filter/layer, "none" for gaussian/sphere/eigen.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .._util import FlatlensError, derive_seed
from ..objective import Objective

KINDS = ("gaussian", "sphere", "filter", "layer", "eigen")
POLICIES = ("biasbn", "none")


def default_ignore(kind: str) -> str:
    return "biasbn" if kind in ("filter", "layer") else "none"


def _check(kind, ignore):
    if kind not in KINDS:
        raise FlatlensError(f"direction kind must be one of {', '.join(KINDS)}; got {kind!r}")
    ignore = default_ignore(kind) if ignore is None else ignore
    if ignore not in POLICIES:
        raise FlatlensError(f"ignore must be 'biasbn' or 'none'; got {ignore!r}")
    return ignore


class DirectionSpace:
    """Precomputed per-block norms of the centre, to normalize many directions fast (flat, batched). The eigen kind
    computes its `n` eigenvectors once, on first use (`eig_tol`: Lanczos's relative tolerance)."""

    def __init__(self, obj: Objective, kind: str, ignore: str | None = None, *, n: int = 2, eig_tol: float = 1e-3):
        self.obj = obj
        self.kind = kind
        self.ignore = _check(kind, ignore)
        self.n, self.eig_tol = int(n), float(eig_tol)
        self._eigen = None   # (vectors (n, P), the EigenResult) once computed
        self.blocks = []  # (start, end, rows, norms of the centre's rows or None, zeroed?)
        for name, a, b, shape in zip(obj.names, obj.offsets[:-1], obj.offsets[1:], obj.shapes):
            w = obj.center[name]
            small = len(shape) <= 1
            if small and self.ignore == "biasbn":
                self.blocks.append((a, b, 1, None, True))
                continue
            if kind == "filter" and not small:
                rows = shape[0]
                norms = w.reshape(rows, -1).norm(dim=1)
            else:
                rows = 1
                norms = w.reshape(1, -1).norm(dim=1)
            self.blocks.append((a, b, rows, norms, False))

    def normalize(self, D: torch.Tensor) -> torch.Tensor:
        """Apply this kind's normalization to raw directions D (m, P), in place; returns D."""
        if self.kind == "sphere":
            for a, b, _, _, zero in self.blocks:
                if zero:
                    D[:, a:b] = 0
            n = D.norm(dim=1, keepdim=True)
            return D.div_(torch.where(n > 0, n, torch.ones_like(n)))
        for a, b, rows, norms, zero in self.blocks:
            if zero:
                D[:, a:b] = 0
            elif self.kind in ("filter", "layer"):
                v = D[:, a:b].reshape(D.shape[0], rows, -1)
                dn = v.norm(dim=2, keepdim=True)
                scale = torch.where(dn > 0, norms.reshape(1, rows, 1).to(D.dtype) / dn, torch.zeros_like(dn))
                D[:, a:b] = (v * scale).reshape(D.shape[0], -1)
        return D

    def raw(self, seed: int, indices) -> torch.Tensor:
        """Gaussian draws for stream items `indices`, one generator each, on the objective's device."""
        obj = self.obj
        out = torch.empty(len(indices), obj.num_params, device=obj.device, dtype=obj.dtype)
        for row, i in enumerate(indices):
            g = torch.Generator(device=obj.device)
            g.manual_seed(derive_seed(seed, "direction", self.kind, int(i)))
            out[row] = torch.randn(obj.num_params, generator=g, device=obj.device, dtype=obj.dtype)
        return out

    def make(self, seed: int, indices) -> torch.Tensor:
        if self.kind == "eigen":
            V = self.eigenvectors(seed)
            if max(indices, default=0) >= V.shape[0]:
                raise FlatlensError(f"eigen directions: {V.shape[0]} eigenvectors were computed, index "
                                    f"{max(indices)} asked")
            return V[list(indices)].clone()
        return self.normalize(self.raw(seed, indices))

    def eigenvectors(self, seed: int) -> torch.Tensor:
        """The top `n` unit eigenvectors of H (of P H P with ignore="biasbn"), rows in descending eigenvalue order."""
        if self._eigen is None:
            from ..hessian import top_eigenvalues
            from ..hessian.scaled import ScaledHessian
            op, mask = self.obj, None
            if self.ignore == "biasbn":
                mask = torch.ones(self.obj.num_params, device=self.obj.device, dtype=self.obj.dtype)
                for a, b, _, _, zero in self.blocks:
                    if zero:
                        mask[a:b] = 0
                op = ScaledHessian(self.obj, mask)  # P H P: its top eigenvectors lie in the kept parameters
            res = top_eigenvalues(op, self.n, which="LA", tol=self.eig_tol, seed=seed, return_vectors=True)
            V = torch.stack(res.vectors)
            if mask is not None:  # the start vector's part outside P (eigenvalue 0, rounding) is removed exactly
                V = V * mask
            V = V / V.norm(dim=1, keepdim=True)
            signs = torch.sign(V.gather(1, V.abs().argmax(dim=1, keepdim=True)))
            V = V * torch.where(signs == 0, torch.ones_like(signs), signs)
            del res.vectors
            self._eigen = (V, res)
        return self._eigen[0]

    def describe(self) -> dict:
        """What a result records about these directions beyond kind, policy and seed: for eigen directions their
        eigenvalues, each one's bound (an eigenvalue of H lies within it: not a confidence interval) and the cost."""
        if self.kind != "eigen" or self._eigen is None:
            return {}
        r = self._eigen[1]
        return {"eigenvalues": list(r.values), "eigenvalue_bounds": list(r.bounds), "bound": r.bound,
                "eig_tol": r.tol, "n_hvp": r.n_hvp, "converged": r.converged,
                "operator": "P H P (bias/BN excluded)" if self.ignore == "biasbn" else "H"}

    def orthogonal_pair(self, seed: int, indices=(0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """Two directions, the second made orthogonal to the first within each normalization unit (per
        filter / tensor / whole vector) and renormalized, so both keep the kind's norms exactly. Eigen directions
        are the two top eigenvectors, orthonormal as they are."""
        D = self.make(seed, list(indices))
        if self.kind == "eigen":
            return D[0], D[1]
        dx, dy = D[0], D[1].clone()
        if self.kind in ("gaussian", "sphere"):
            n0 = dy.norm()
            dy -= (dy @ dx) / (dx @ dx) * dx
            dy *= n0 / dy.norm()
            return dx, dy
        for a, b, rows, norms, zero in self.blocks:
            if zero:
                continue
            x = dx[a:b].reshape(rows, -1)
            y = dy[a:b].reshape(rows, -1)
            xx = (x * x).sum(1, keepdim=True)
            y = y - torch.where(xx > 0, (x * y).sum(1, keepdim=True) / xx, torch.zeros_like(xx)) * x
            yn = y.norm(dim=1, keepdim=True)
            y = torch.where(yn > 0, y * norms.reshape(rows, 1).to(y.dtype) / yn, torch.zeros_like(y))
            dy[a:b] = y.reshape(-1)
        return dx, dy


def directions(obj: Objective, kind: str = "filter", *, seed: int = 0, index: int = 0,
               ignore: str | None = None, eig_tol: float = 1e-3) -> dict:
    """Direction `index` of the seeded stream of this kind (eigen: the index-th top eigenvector), as a dict
    name -> tensor."""
    flat = DirectionSpace(obj, kind, ignore, n=index + 1, eig_tol=eig_tol).make(seed, [index])[0]
    return {n: t.clone() for n, t in obj.unflatten(flat).items()}


def orthogonal_pair(obj: Objective, kind: str = "filter", *, seed: int = 0, ignore: str | None = None,
                    eig_tol: float = 1e-3):
    """(dx, dy) as dicts: an orthogonalized pair for 2D slices (eigen: the two top eigenvectors)."""
    dx, dy = DirectionSpace(obj, kind, ignore, eig_tol=eig_tol).orthogonal_pair(seed)
    return ({n: t.clone() for n, t in obj.unflatten(dx).items()},
            {n: t.clone() for n, t in obj.unflatten(dy).items()})


def as_flat_direction(obj: Objective, d) -> torch.Tensor:
    """A user direction (dict name -> tensor, or a flat vector) as a flat vector; checks every shape."""
    if isinstance(d, Mapping):
        unknown = set(d) - set(obj.names)
        if unknown:
            raise FlatlensError(f"direction has parameter(s) not in the objective: {', '.join(sorted(unknown)[:3])}")
        parts = []
        for n, shape in zip(obj.names, obj.shapes):
            if n not in d:
                parts.append(torch.zeros(shape.numel(), device=obj.device, dtype=obj.dtype))
                continue
            t = torch.as_tensor(d[n])
            if tuple(t.shape) != tuple(shape):
                raise FlatlensError(f"direction entry {n!r} has shape {tuple(t.shape)}, the parameter {tuple(shape)}")
            parts.append(t.reshape(-1).to(obj.device, obj.dtype))
        return torch.cat(parts)
    t = torch.as_tensor(d).to(obj.device, obj.dtype)
    if t.shape != (obj.num_params,):
        raise FlatlensError(f"direction has shape {tuple(t.shape)}; expected a dict or ({obj.num_params},)")
    return t
