"""Run a measurement as numbered chunks: sharded over torch.distributed ranks, resumable from disk.

Each chunk i is a pure function of (arguments, i) (directions and noise are drawn per item from the seed),
so the result does not depend on how chunks are split across ranks or runs. Rank r takes chunks
i = r, r + W, r + 2W, ... (strided, so uneven chunk costs balance); all ranks then all-gather the chunks and
every rank, rank 0 included, assembles the same result. With `store`, each finished chunk is written
atomically as its own file; a rerun with the same arguments loads those and computes only the rest.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import torch

from .._util import FlatlensError, atomic_torch_save, atomic_write_text


def dist_info() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialize torch.distributed from torchrun's environment (NCCL on GPUs, gloo on CPUs); no-op alone."""
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist_info()


def tensor_digest(t: torch.Tensor) -> str:
    """Content hash of a tensor (directions, step vectors) for the resume key."""
    return hashlib.sha256(t.detach().double().cpu().numpy().tobytes()).hexdigest()[:16]


def args_key(args: dict) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _chunk_path(store, i):
    return os.path.join(store, f"chunk-{i:06d}.pt")


def run_chunks(n_chunks: int, compute: Callable[[int], dict], *, args: dict, store: str | None = None,
               progress: bool = True, desc: str = "points") -> list[dict]:
    """compute(i) -> dict of tensors for chunk i; returns the list for all chunks, in order, on every rank."""
    from tqdm.auto import tqdm

    rank, world = dist_info()
    key = args_key(args)
    if store:
        os.makedirs(store, exist_ok=True)
        manifest = os.path.join(store, "manifest.json")
        if os.path.exists(manifest):
            try:
                old = json.load(open(manifest)).get("key")
            except (OSError, ValueError):
                old = None
            if old != key:
                raise FlatlensError(f"{store} holds chunks of a run with other arguments; use another --resume-dir")
        elif rank == 0:
            atomic_write_text(manifest, json.dumps({"key": key, "args": args, "n_chunks": n_chunks},
                                                   default=str, indent=1))
    mine = list(range(rank, n_chunks, world))
    out: dict[int, dict] = {}
    bar = tqdm(total=len(mine), disable=not progress or rank != 0, desc=desc, leave=False)
    for i in mine:
        path = _chunk_path(store, i) if store else None
        if path and os.path.exists(path):
            try:
                out[i] = torch.load(path, map_location="cpu", weights_only=True)
                bar.update(1)
                continue
            except Exception:  # a damaged chunk is recomputed, never trusted
                pass
        out[i] = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in compute(i).items()}
        if path:
            atomic_torch_save(out[i], path)
        bar.update(1)
    bar.close()
    if world > 1:
        import torch.distributed as dist
        gathered = [None] * world
        dist.all_gather_object(gathered, out)
        out = {}
        for part in gathered:
            out.update(part)
    missing = [i for i in range(n_chunks) if i not in out]
    if missing:
        raise FlatlensError(f"chunks {missing[:5]} missing after the run")
    return [out[i] for i in range(n_chunks)]
