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
from ..resident import tensor_bytes
from ..parallel import all_min_int, group_info
from ..paths import open_regular, special


def max_points(obj, budget: int = 512 << 20) -> int:
    """How many perturbation vectors of this objective fit in `budget` bytes (at least 1): a chunk of points
    is materialized as an (m, P) matrix, so large models get small chunks."""
    per = obj.num_params * obj.center[obj.names[0]].element_size()
    return max(1, budget // max(1, per))


def init_distributed() -> tuple[int, int]:
    """Initialize torch.distributed from torchrun's environment (NCCL on GPUs, gloo on CPUs); no-op alone."""
    import datetime
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # a rank that fails leaves the others waiting in a collective: they give up after this long, not hang
        timeout = datetime.timedelta(seconds=float(os.environ.get("FLATLENS_DIST_TIMEOUT", "600")))
        dist.init_process_group(backend, timeout=timeout)
    return group_info()


def tensor_digest(t: torch.Tensor) -> str:
    """Content hash of a tensor (directions, step vectors) for the resume key."""
    return hashlib.sha256(t.detach().double().cpu().numpy().tobytes()).hexdigest()[:16]


def args_key(args: dict) -> str:
    from .._version import __version__
    return hashlib.sha256(json.dumps({**args, "flatlens": __version__}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def _chunk_path(folder, i):
    return os.path.join(folder, f"chunk-{i:06d}.pt")


def _digest(chunk: dict) -> str:
    """Integrity hash of a chunk's values, stored with it and checked on read."""
    h = hashlib.sha256()
    for k in sorted(chunk):
        h.update(k.encode())
        v = chunk[k]
        h.update(tensor_bytes(v) if isinstance(v, torch.Tensor) else repr(v).encode())
    return h.hexdigest()


def _load_chunk(path, shapes: dict | None = None):
    """The chunk stored at `path` if it is whole, its values match their hash and (`shapes`: key -> shape) it holds
    exactly the tensors expected, floating, of those shapes; else None (recomputed, never trusted; a special file
    is read as damaged without blocking on it, and never replaced). torch's own warnings about a rejected file are
    not shown: the count of rejected chunks says it."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_regular(path) as fh:  # a FIFO or device node here is damaged, never blocks the read
                d = torch.load(fh, map_location="cpu", weights_only=True)
        sha = d.pop("_sha256", None)
        if sha != _digest(d):
            return None
        if shapes is not None and (set(d) != set(shapes) or any(
                not isinstance(d[k], torch.Tensor) or not d[k].is_floating_point()
                or tuple(d[k].shape) != tuple(v) for k, v in shapes.items())):
            return None
        return d
    except Exception:  # a damaged chunk is recomputed, never trusted
        return None


def run_chunks(n_chunks: int, compute: Callable[[int], dict], *, args: dict, evaluator=None,
               store: str | None = None, progress: bool = True, desc: str = "points", counts: dict | None = None,
               shard: bool | None = None, shapes: Callable[[int], dict] | None = None) -> list[dict]:
    """compute(i) -> dict of tensors for chunk i; returns the list for all chunks, in order, on every rank.

    With `store`, chunks live in store/<key>/, the key a hash of `args` (which every caller builds from what
    it measures: the objective's fingerprint, i.e. checkpoint weights and data, and the measurement's
    settings) and the flatlens version, so a folder reused for another checkpoint or other settings
    recomputes instead of mixing runs. `counts` (optional) receives loaded / computed / rejected chunk counts.
    shard=False: every rank computes every chunk (the data axis: a data-parallel objective's ranks evaluate
    each point together); rank 0 alone writes the store. `evaluator` (the Evaluator that compute uses): its
    precision joins the key, and shard defaults to whether its objective is data-parallel (else True).
    `shapes(i)`: the tensors chunk i holds, key -> shape; a stored chunk of other keys or shapes (with a valid hash:
    written by other code, or edited and re-hashed) is recomputed."""
    from tqdm.auto import tqdm

    if evaluator is not None:
        args = {**args, "precision": evaluator.precision}  # bf16 and fp32 chunks never mix
        if shard is None:
            shard = not evaluator.obj.group.enabled
    shard = True if shard is None else shard

    true_rank = group_info()[0]
    rank, world = group_info() if shard else (0, 1)
    key = args_key(args)
    folder = os.path.join(store, key) if store else None
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise FlatlensError(f"cannot use {store} for resumable chunks: {e.strerror}") from None
        manifest = os.path.join(folder, "manifest.json")
        if true_rank == 0 and not os.path.exists(manifest):
            atomic_write_text(manifest, json.dumps({"key": key, "args": args, "n_chunks": n_chunks},
                                                   default=str, indent=1))
    tally = {"loaded": 0, "computed": 0, "rejected": 0}
    mine = list(range(rank, n_chunks, world))
    out: dict[int, dict] = {}
    bar = tqdm(total=len(mine), disable=not progress or true_rank != 0, desc=desc, leave=False)
    # shard=False under torch.distributed: every rank computes every chunk in collectives, so all ranks must
    # load alike (a chunk one rank cannot read, say on a node-local store, is recomputed by all)
    agree = not shard and group_info()[1] > 1
    device = evaluator.obj.device if evaluator is not None else torch.device("cpu")
    for i in mine:
        path = _chunk_path(folder, i) if folder else None
        exists = bool(path and os.path.exists(path))
        chunk = _load_chunk(path, shapes(i) if shapes is not None else None) if exists else None
        if agree:
            chunk = chunk if all_min_int(int(chunk is not None), device) else None
        if chunk is not None:
            out[i] = chunk
            tally["loaded"] += 1
            bar.update(1)
            continue
        if exists:
            tally["rejected"] += 1
        out[i] = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in compute(i).items()}
        tally["computed"] += 1
        if path and (shard or true_rank == 0) and not (special(path) or os.path.isdir(path)):
            # a special file (or folder) in a chunk's place is left there: that chunk stays unstored
            atomic_torch_save({**out[i], "_sha256": _digest(out[i])}, path)
        bar.update(1)
    bar.close()
    if counts is not None:
        counts.update(tally)
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
