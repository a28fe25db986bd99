"""The data axis of parallelism over torch.distributed: every rank holds a deterministic shard of the data and
sums (all-reduces) its share of F, of its gradient and of every HVP, so F is the same function of theta on
every rank whatever the world size. (The points axis, perturbation grids sharded over ranks, is the runner's:
perturb.runner.) One process, or torch.distributed not initialized: every helper is the identity."""
from __future__ import annotations

import torch


def group_info() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks, in place (and returned)."""
    if group_info()[1] > 1:
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_sum_float(x: float, device) -> float:
    return float(all_sum(torch.tensor([float(x)], dtype=torch.float64, device=device))[0])


def all_min_int(x: int, device) -> int:
    """The smallest `x` over ranks (for decisions every rank must take alike)."""
    if group_info()[1] == 1:
        return int(x)
    import torch.distributed as dist
    t = torch.tensor([int(x)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t[0])


def all_gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    if group_info()[1] == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * group_info()[1]
    dist.all_gather_object(out, obj)
    return out


class Collectives:
    """The collectives of one data-parallel group, or the identity when the group is off (one process, or an
    objective that holds all the data): what an Objective, its resident data and its Hessian operator sum and
    agree on over ranks."""

    def __init__(self, enabled: bool, device):
        self.rank, self.world_size = group_info() if enabled else (0, 1)
        self.enabled = self.world_size > 1
        self.device = device

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks, in place."""
        return all_sum(t) if self.enabled else t

    def sum_float(self, x: float) -> float:
        return all_sum_float(x, self.device) if self.enabled else float(x)

    def min_int(self, x: int) -> int:
        """The smallest `x` over ranks: for decisions every rank must take alike."""
        return all_min_int(x, self.device) if self.enabled else int(x)

    def gather(self, x) -> list:
        return all_gather(x) if self.enabled else [x]


def shard(n: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of n items: sizes differ by at most one (uneven shards welcome)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
