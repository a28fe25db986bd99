"""Processes the distributed and resume tests start (kept importable for torch.multiprocessing.spawn)."""
import json
import os
import sys

import torch
from torch import nn


def digits_objective(n=200, seed=0):
    from flatlens import Objective
    from flatlens.data import rotated_digits
    from flatlens.models import SmallCNN
    torch.manual_seed(seed)
    x, y = rotated_digits().tensors["0"]
    return Objective(SmallCNN(width=8), nn.CrossEntropyLoss(), (x[:n], y[:n]))


def flatness(obj, store=None):
    from flatlens import sharpness
    return sharpness.local_flatness(obj, [0.0, 0.5, 1.0], n_directions=12, seed=3, strategy="loop",
                                    directions_per_chunk=1, store=store)


def distributed_rank(rank, world, port, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    res = flatness(digits_objective())
    from flatlens import landscape
    obj = digits_objective()
    surf = landscape.random_surface(obj, [-0.5, 0.0, 0.5], [0.0, 1.0], kind="filter", seed=1, strategy="loop",
                                    chunk=2)
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"flatness": res.increases, "surface": surf.losses}, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":  # resume test: python workers.py STORE (killed from outside)
    torch.set_num_threads(1)
    obj = digits_objective(n=1000)
    from flatlens import sharpness
    sharpness.local_flatness(obj, [0.0, 0.5, 1.0], n_directions=400, seed=3, strategy="loop",
                             directions_per_chunk=1, store=sys.argv[1])
