"""Perturbation directions in the objective's parameter space, generated on its device from a seed.

Direction i of a stream is drawn from its own generator (seed, kind, i), so directions can be made chunk by
chunk, or on different ranks, and still be the same numbers. Kinds:
  gaussian  d ~ N(0, I)
  sphere    d = g / ||g||, uniform on the unit sphere of the whole flattened vector (SWAD's flatness)
  filter    per filter (slice along dim 0): d_f = g_f ||w_f|| / ||g_f||  (Li et al. 2018)
  layer     per parameter tensor: d_t = g_t ||w_t|| / ||g_t||
Bias / BatchNorm policy (`ignore`): "biasbn" zeroes every parameter of dim <= 1 (Li et al.'s default);
"none" keeps them, normalized per tensor (filter/layer kinds) so a zero bias gives a zero direction, never a
division by zero. Defaults: "biasbn" for filter/layer, "none" for gaussian/sphere.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .._util import FlatlensError, derive_seed
from ..objective import Objective

KINDS = ("gaussian", "sphere", "filter", "layer")
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
    """Precomputed per-block norms of the centre, to normalize many directions fast (flat, batched)."""

    def __init__(self, obj: Objective, kind: str, ignore: str | None = None):
        self.obj = obj
        self.kind = kind
        self.ignore = _check(kind, ignore)
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
        return self.normalize(self.raw(seed, indices))

    def orthogonal_pair(self, seed: int, indices=(0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """Two directions, the second made orthogonal to the first within each normalization unit (per
        filter / tensor / whole vector) and renormalized, so both keep the kind's norms exactly."""
        D = self.make(seed, list(indices))
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
               ignore: str | None = None) -> dict:
    """Direction `index` of the seeded stream of this kind, as a dict name -> tensor."""
    flat = DirectionSpace(obj, kind, ignore).make(seed, [index])[0]
    return {n: t.clone() for n, t in obj.unflatten(flat).items()}


def orthogonal_pair(obj: Objective, kind: str = "filter", *, seed: int = 0, ignore: str | None = None):
    """(dx, dy) as dicts: an orthogonalized pair for 2D slices."""
    dx, dy = DirectionSpace(obj, kind, ignore).orthogonal_pair(seed)
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
