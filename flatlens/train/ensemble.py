"""EoQ: an ensemble of quantized models; prediction = argmax of the averaged softmax outputs."""
from __future__ import annotations

import torch

from .._util import FlatlensError
from ..checkpoint import build_model
from ..data import for_protocol, protocol_split
from ..data.domains import gather


def _same(ckpts, key):
    vals = {repr(getattr(c.data, key)) for c in ckpts}
    return len(vals) == 1


def ensemble_accuracy(ckpts: list, split: str = "test", device="cpu") -> dict:
    """Accuracy per domain of the ensemble and of each member; total packed size of the members."""
    if not ckpts:
        raise FlatlensError("an ensemble needs at least one checkpoint")
    if any(c.data is None for c in ckpts):
        raise FlatlensError("a checkpoint records no data protocol (an imported state dict); import it with "
                            "--dataset NAME --data-root DIR --test-domain D")
    for key in ("dataset", "test_domains", "split_seed", "split_rule", "image_size"):
        if not _same(ckpts, key):
            raise FlatlensError(f"ensemble members differ in data {key}; they must share the protocol")
    meta = ckpts[0].data
    data = for_protocol(meta)
    models = [build_model(c).to(device) for c in ckpts]
    sets = {}
    if split in ("test", "both"):
        for d in meta.test_domains:
            sets[("test", d)] = torch.arange(data.size(d))
    if split in ("val", "both"):
        for d in meta.train_domains:
            sets[("val", d)] = protocol_split(meta, data, d)[1]
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
    from ..quant import packed_size
    sizes = [packed_size(c.state_dict, c.quant) for c in ckpts]  # computed: imported files record none
    out["packed_bytes"] = int(sum(z["bytes"] for z in sizes))
    out["fp32_bytes_one_model"] = int(sizes[0]["fp32_bytes"])
    return out
