"""The shared shape of a domain-generalization dataset, and DomainBed's seeded 80/20 split."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .._util import FlatlensError, derive_seed


@dataclass
class DomainData:
    """Domains in DomainBed order. `get(domain, train)` returns a Dataset of (x, y); `train=True` applies the
    training augmentation (if any). For in-memory data, `tensors[domain]` holds (x, y) directly."""
    name: str
    domains: list[str]
    num_classes: int
    in_channels: int
    image_size: int
    get: Callable
    tensors: dict = field(default_factory=dict)
    root: str | None = None

    def index(self, domain) -> int:
        d = str(domain)
        if d not in self.domains:
            raise FlatlensError(f"unknown domain {domain!r} for {self.name}; domains: {', '.join(self.domains)}")
        return self.domains.index(d)

    def size(self, domain) -> int:
        return len(self.get(domain, False))


def split_indices(n: int, domain_index: int, seed: int, holdout: float = 0.2):
    """DomainBed's split: a seeded permutation of the domain; the first `holdout` fraction is the
    out-split (training-domain validation), the rest the in-split (training). Returns (in_idx, out_idx)."""
    g = torch.Generator().manual_seed(derive_seed(seed, "split", domain_index))
    perm = torch.randperm(n, generator=g)
    n_out = int(n * holdout)
    return perm[n_out:].sort().values, perm[:n_out].sort().values


def gather(ds, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack dataset items at `indices` into (x, y) tensors."""
    xs, ys = zip(*(ds[int(i)] for i in indices))
    return torch.stack(xs), torch.as_tensor(ys)
