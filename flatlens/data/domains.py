"""The shared shape of a domain-generalization dataset, and DomainBed's seeded 80/20 split."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import TensorDataset

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
    content_sha256: str | None = None  # in-memory data: content_hash(domains, tensors), naming exactly what ran

    def index(self, domain) -> int:
        d = str(domain)
        if d not in self.domains:
            raise FlatlensError(f"unknown domain {domain!r} for {self.name}; domains: {', '.join(self.domains)}")
        return self.domains.index(d)

    def size(self, domain) -> int:
        return len(self.get(domain, False))


def content_hash(domains, tensors: dict) -> str:
    """sha256 over every domain's (x, y), in domain order: name, dtype, shape and the raw bytes of each tensor."""
    h = hashlib.sha256()
    for d in domains:
        h.update(str(d).encode())
        for t in tensors[d]:
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def in_memory(name: str, tensors: dict, *, num_classes: int, root: str | None = None) -> DomainData:
    """A DomainData over {domain: (x, y)} tensors (x: (n, C, S, S) float, y: (n,) int64), domains in dict
    order, with its content hash."""
    domains = list(tensors)
    x0 = tensors[domains[0]][0]

    def get(domain, train=False):
        return TensorDataset(*tensors[str(domain)])

    return DomainData(name=name, domains=domains, num_classes=num_classes, in_channels=x0.shape[1],
                      image_size=x0.shape[-1], get=get, tensors=tensors, root=root,
                      content_sha256=content_hash(domains, tensors))


SPLIT_RULES = ("flatlens", "domainbed")


def split_indices(n: int, domain_index: int, seed: int, holdout: float = 0.2, rule: str = "flatlens"):
    """The 80/20 split of a domain: the first `holdout` fraction of a seeded permutation is the out-split
    (training-domain validation), the rest the in-split (training). Returns (in_idx, out_idx), sorted.

    rule "flatlens": torch's generator seeded per domain from (seed, "split", domain index);
    rule "domainbed": DomainBed's own, so imported DomainBed / QT-DoG / SWAD models are measured on the data
    they trained on: numpy's RandomState(seed_hash(trial_seed, env_i)).shuffle(range(n)), out = the first
    int(n * holdout), with seed_hash(*a) = int(md5(str(a)).hexdigest(), 16) % 2**31 (DomainBed's misc.py)."""
    n_out = int(n * holdout)
    if rule == "domainbed":
        import hashlib
        import numpy as np
        h = int(hashlib.md5(str((seed, domain_index)).encode("utf-8")).hexdigest(), 16) % (2 ** 31)
        keys = list(range(n))
        np.random.RandomState(h).shuffle(keys)
        perm = torch.as_tensor(keys)
    elif rule == "flatlens":
        g = torch.Generator().manual_seed(derive_seed(seed, "split", domain_index))
        perm = torch.randperm(n, generator=g)
    else:
        raise FlatlensError(f"unknown split rule {rule!r} ({', '.join(SPLIT_RULES)})")
    return perm[n_out:].sort().values, perm[:n_out].sort().values


def gather(ds, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack dataset items at `indices` into (x, y) tensors."""
    xs, ys = zip(*(ds[int(i)] for i in indices))
    return torch.stack(xs), torch.as_tensor(ys)
