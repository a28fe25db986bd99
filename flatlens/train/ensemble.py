"""EoQ: an ensemble of quantized models; prediction = argmax of the averaged softmax outputs."""
from __future__ import annotations

import torch

from .._util import FlatlensError
from ..checkpoint import build_model
from ..data import load, split_indices
from ..data.domains import gather


def _same(ckpts, key):
    vals = {repr(c["data"][key]) for c in ckpts}
    return len(vals) == 1


def ensemble_accuracy(ckpts: list[dict], split: str = "test", device="cpu") -> dict:
    """Accuracy per domain of the ensemble and of each member; total packed size of the members."""
    if not ckpts:
        raise FlatlensError("an ensemble needs at least one checkpoint")
    for key in ("dataset", "test_domains", "split_seed"):
        if not _same(ckpts, key):
            raise FlatlensError(f"ensemble members differ in data {key}; they must share the protocol")
    meta = ckpts[0]["data"]
    data = load(meta["dataset"], meta.get("root"), seed=meta["split_seed"])
    models = [build_model(c).to(device) for c in ckpts]
    sets = {}
    if split in ("test", "both"):
        for d in meta["test_domains"]:
            sets[("test", d)] = torch.arange(data.size(d))
    if split in ("val", "both"):
        for d in meta["train_domains"]:
            sets[("val", d)] = split_indices(data.size(d), data.index(d), meta["split_seed"], meta["holdout"])[1]
    if not sets:
        raise FlatlensError(f"split must be test, val or both; got {split!r}")
    out = {"split": split, "ensemble": {}, "members": [{} for _ in models]}
    with torch.no_grad():
        for (kind, d), idx in sets.items():
            if d in data.tensors:
                x, y = data.tensors[d][0][idx], data.tensors[d][1][idx]
            else:
                x, y = gather(data.get(d, False), idx)
            x, y = x.to(device), y.to(device)
            probs = [torch.softmax(m(x), dim=1) for m in models]
            key = f"{kind}:{d}"
            out["ensemble"][key] = float((torch.stack(probs).mean(0).argmax(1) == y).float().mean())
            for i, p in enumerate(probs):
                out["members"][i][key] = float((p.argmax(1) == y).float().mean())
    out["packed_bytes"] = int(sum(c["metrics"]["packed_bytes"] for c in ckpts))
    out["fp32_bytes_one_model"] = int(ckpts[0]["metrics"]["fp32_bytes"])
    return out
