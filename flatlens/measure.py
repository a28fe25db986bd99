"""From checkpoints to typed records: the data selection, the Objective of a checkpoint, and `measure`, which
computes one registered metric of one checkpoint on one split (through the cache) as a `MetricRecord`.
`compare`, `reproduce` and the measuring commands all go through here."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import __version__
from . import metrics as M
from ._util import FlatlensError
from .checkpoint import build_model, weights_label
from .data import load as load_data
from .data import split_indices
from .data.domains import gather
from .objective import Objective
from .progress import measurement as progress_line
from .results import Result, register


# --------------------------------------------------------------------------- data
def select_data(meta: dict, split: str, samples: int, seed: int):
    """The evaluation samples of a checkpoint's protocol: 'train' = the source domains' in-splits (the data
    it trained on), 'test' = the held-out domain(s). A seeded subset of `samples` (all if fewer)."""
    if split not in ("train", "test"):
        raise FlatlensError(f"split must be train or test; got {split!r}")
    data = load_data(meta["dataset"], meta.get("root"), seed=meta["split_seed"])
    pool = []
    if split == "train":
        for d in meta["train_domains"]:
            idx_in, _ = split_indices(data.size(d), data.index(d), meta["split_seed"], meta.get("holdout", 0.2))
            pool += [(d, int(i)) for i in idx_in]
    else:
        for d in meta["test_domains"]:
            pool += [(d, i) for i in range(data.size(d))]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=g)[: min(samples, len(pool))].sort().values
    chosen = [pool[i] for i in order]
    xs, ys = [], []
    for d in dict.fromkeys(c[0] for c in chosen):
        idx = torch.tensor([i for dd, i in chosen if dd == d])
        if d in data.tensors:
            xs.append(data.tensors[d][0][idx])
            ys.append(data.tensors[d][1][idx])
        else:
            x, y = gather(data.get(d, False), idx)
            xs.append(x)
            ys.append(y)
    digest = hashlib.sha256(repr(chosen).encode()).hexdigest()[:16]
    info = {"dataset": meta["dataset"], "split": split, "domains": sorted({c[0] for c in chosen}),
            "n": len(chosen), "seed": seed, "indices_sha256": digest}
    return torch.cat(xs), torch.cat(ys), info


def load_data_file(path: str):
    """--data override: a torch file holding {"x": tensor, "y": tensor} (loaded with weights_only)."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FlatlensError(f"{path}: no such file") from None
    except Exception as e:
        raise FlatlensError(f"{path}: not a data file ({type(e).__name__})") from None
    if not isinstance(d, dict) or not isinstance(d.get("x"), torch.Tensor) or not isinstance(d.get("y"), torch.Tensor):
        raise FlatlensError(f"{path}: a data file is a dict with tensors 'x' and 'y'")
    digest = hashlib.sha256(d["x"].numpy().tobytes() + d["y"].numpy().tobytes()).hexdigest()[:16]
    return d["x"], d["y"], {"dataset": "file", "path": path, "split": "custom", "n": len(d["y"]),
                            "indices_sha256": digest}


def objective_for(ckpt: dict, x, y, *, device="cpu", weights: str = "deployed", batch_size: int = 256,
                  params=None) -> Objective:
    model = build_model(ckpt, weights)
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    return Objective(model, nn.CrossEntropyLoss(), batches, device=device, bn="eval", params=params)


@register
@dataclass
class MetricRecord(Result):
    """One registered metric of one checkpoint on one split: its summary rows (by key), its full typed
    result, and everything it depended on (settings, data selection, weights, objective, seed)."""
    metric: str
    split: str
    rows: list[M.Row]
    result: Result
    settings: dict
    data: dict
    checkpoint: str | None
    checkpoint_sha256: str
    weights: str                 # "deployed" or "latent"
    weights_label: str           # what was measured, in words
    bn: str
    center_loss: float
    objective: dict
    seed: int
    cached: bool = False

    def row(self, key: str) -> M.Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"{self.metric} record has no row {key!r}")

    def has_row(self, key: str) -> bool:
        return any(r.key == key for r in self.rows)


def versions() -> dict:
    import platform
    import scipy
    return {"flatlens": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"}


def measure(ckpt: dict, metric: str, split: str, settings: M.Settings, *, cache=None, device="cpu", data=None,
            progress=False, store: str | None = None, qnoise_steps: dict | None = None) -> MetricRecord:
    """A registered metric of a checkpoint on a split, through the cache. `data`: (x, y, info) overrides the
    checkpoint's own data selection. `store`: a folder for resumable chunks (perturbation metrics)."""
    m = M.get(metric)
    common = settings.common
    x, y, info = data if data is not None else select_data(ckpt["data"], split, common.samples, common.seed)
    parts = {"ckpt": ckpt["sha256"], "metric": metric, "settings": settings.key(metric), "data": info,
             "version": __version__, "device_type": torch.device(device).type}
    if cache is not None:
        hit = cache.get(parts)
        if hit is not None:
            try:
                rec = MetricRecord.from_dict(hit)
                rec.cached = True
                return rec
            except (ValueError, TypeError, KeyError):
                cache.reject()
    torch.manual_seed(common.seed)
    obj = objective_for(ckpt, x, y, device=device, weights=common.weights, batch_size=common.batch_size)
    # one live line per measurement (the estimators' own chunk bars stay off under it)
    ctx = M.Context(seed=common.seed, ckpt=ckpt, progress=False, store=store, qnoise_steps=qnoise_steps)
    s = settings.of(metric)
    name = os.path.basename(ckpt.get("path") or "checkpoint")
    with progress_line(obj, f"{metric} {name} ({split})", progress):
        result = m.compute(obj, s, ctx)
    rec = MetricRecord(metric=metric, split=split, rows=m.rows(result, s), result=result,
                       settings=settings.key(metric), data=info, checkpoint=ckpt.get("path"),
                       checkpoint_sha256=ckpt["sha256"], weights=common.weights,
                       weights_label=weights_label(ckpt, common.weights), bn=obj.bn, center_loss=obj.loss(),
                       objective=obj.describe(), seed=common.seed)
    if cache is not None:
        cache.put(parts, rec.to_dict())
    return rec
