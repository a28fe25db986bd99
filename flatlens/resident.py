"""Resident data: the evaluation batches of an Objective, moved to its device once and kept there.

It loads what the caller passes (an (x, y) pair, a list of batches, a DataLoader read once), keeps this rank's
deterministic shard of it when the objective is data-parallel, weighs each batch by its share of the samples

    F(theta) = sum_b w_b loss_b(theta),   w_b = n_b / N    (N: the samples of every rank)

and re-cuts it into batches of another size where that leaves F unchanged (a mean-reduced loss with BatchNorm in
eval mode; the objective checks at the centre). Nothing here evaluates the model."""
from __future__ import annotations

import hashlib
from typing import Mapping

import torch

from ._util import FlatlensError
from .parallel import Collectives, shard


def to_device(batch, device):
    """A batch (a tensor, or a tuple / list / dict of them, nested) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(to_device(v, device) for v in batch)
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype (bfloat16 included, which numpy lacks)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def batch_tensors(batch):
    """Every tensor of a batch (a tensor, a tuple / list / dict of them, nested), dict keys in sorted order."""
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for k in sorted(batch, key=str):
            yield from batch_tensors(batch[k])
    elif isinstance(batch, (list, tuple)):
        for b in batch:
            yield from batch_tensors(b)


class ResidentData:
    """This rank's batches on `device`. `custom`: batches of any shape for a custom loss (never re-cut or
    split into samples); otherwise (x, y) pairs. `whole_batches`: shard by whole batches (a custom loss, or
    batch-statistics BatchNorm, whose F of a batch needs the batch whole) instead of by contiguous samples."""

    def __init__(self, data, device, *, custom: bool, whole_batches: bool, group: Collectives):
        self.device = device
        self.custom = custom
        self.group = group
        self.batches = self._shard(self._load(data), whole_batches)
        self.sample_counts: list[int] | None = None   # this rank's, per batch: set by `weigh`
        self.weights: list[float] | None = None
        self.samples_per_rank: list[int] | None = None
        self.n_samples = 0

    def _load(self, data) -> list:
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            batches = [data]
        elif isinstance(data, (torch.Tensor, str, bytes)) or data is None:
            raise FlatlensError("data must be an (x, y) pair of tensors or an iterable of batches")
        else:
            try:
                batches = list(data)
            except TypeError:
                raise FlatlensError("data must be an (x, y) pair of tensors or an iterable of batches") from None
        if not batches:
            raise FlatlensError("data is empty: no batches")
        out = []
        for b in batches:
            if not self.custom:
                if not (isinstance(b, (tuple, list)) and len(b) >= 2):
                    raise FlatlensError("each batch must be (x, y); pass a BatchLoss for other batch shapes")
                b = (b[0], b[1])
                if len(b[0]) == 0:
                    continue
            out.append(to_device(b, self.device))
        if not out:
            raise FlatlensError("data holds no samples")
        return out

    def _shard(self, batches: list, whole_batches: bool) -> list:
        """This rank's share of the data (all of it in one process)."""
        g = self.group
        if not g.enabled:
            return batches
        if whole_batches:
            mine = batches[g.rank::g.world_size]
        else:  # contiguous samples, re-cut at the caller's largest batch size
            size = max(len(b[1]) for b in batches)
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
            idx = shard(len(y), g.rank, g.world_size)
            x, y = x[idx.start:idx.stop], y[idx.start:idx.stop]
            mine = [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]
        if not mine:
            raise FlatlensError(f"rank {g.rank} of {g.world_size} holds no data: fewer ranks, or more data")
        return mine

    def weigh(self, counts: list[int]) -> None:
        """Record the samples of each of this rank's batches (as the loss counted them) and weigh each batch by
        its share of every rank's samples."""
        self.sample_counts = [int(c) for c in counts]
        self.samples_per_rank = [int(c) for c in self.group.gather(int(sum(counts)))]
        self.n_samples = int(sum(self.samples_per_rank))
        if self.n_samples <= 0 or min(self.samples_per_rank) <= 0:
            raise FlatlensError("data holds no samples" if self.n_samples <= 0 else
                                f"a rank holds no samples ({self.samples_per_rank}): fewer ranks, or more data")
        self.weights = [c / self.n_samples for c in counts]

    def batches_of(self, size: int | None):
        """(batches, weights): the resident data re-cut into batches of `size` samples, or the caller's own
        batches (size None, or a custom loss, whose batches flatlens cannot re-cut). F is the same function of
        theta over either when the loss is a mean and BatchNorm is in eval mode; callers check at the centre."""
        if not size or self.custom:
            return self.batches, list(self.weights)
        x = torch.cat([b[0] for b in self.batches])
        y = torch.cat([b[1] for b in self.batches])
        batches = [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]
        return batches, [len(b[1]) / self.n_samples for b in batches]

    def digest(self, h: "hashlib._Hash") -> None:
        """Feed every resident tensor (shape, then bytes) into the hash `h`."""
        for batch in self.batches:
            for t in batch_tensors(batch):
                h.update(str(tuple(t.shape)).encode())
                h.update(tensor_bytes(t))
