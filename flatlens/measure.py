"""From one checkpoint to one typed record: the checks of its samples, and `measure`, which computes one registered
metric of one checkpoint on one split (through the cache) as a `MetricRecord` (its samples chosen by
`data.select_data`, its Objective built by `checkpoint.objective_for`).
Many checkpoints, metrics and splits go through `pipeline.measure_all`, which chooses and checks the data once."""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._version import __version__
from . import metrics as M
from ._util import FlatlensError
from .checkpoint import Checkpoint, build_model, objective_for, weights_label
from .data import select_data
from .resident import tensor_bytes
from .parallel import all_min_int, group_info
from .progress import measurement as progress_line
from .results import Result, register, to_plain


def load_data_file(path: str):
    """--data override: a torch file holding {"x": tensor, "y": tensor} (loaded with weights_only), checked:
    floating inputs with a batch dimension, integer class labels (n,), as many labels as inputs."""
    from .checkpoint import safe_load
    d = safe_load(path, what="data file")
    if not isinstance(d, dict) or not isinstance(d.get("x"), torch.Tensor) or not isinstance(d.get("y"), torch.Tensor):
        raise FlatlensError(f"{path}: a data file is a dict with tensors 'x' and 'y'")
    x, y = d["x"], d["y"]
    if not x.is_floating_point() or x.dim() < 2:
        raise FlatlensError(f"{path}: x must be a floating tensor (n, ...); got {x.dtype} of shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise FlatlensError(f"{path}: x holds non-finite values")
    if y.dim() != 1 or y.dtype not in (torch.int64, torch.int32, torch.int16):
        raise FlatlensError(f"{path}: y must hold integer class labels of shape (n,) (int64); got {y.dtype} of "
                            f"shape {tuple(y.shape)}")
    if len(y) != len(x) or len(y) == 0:
        raise FlatlensError(f"{path}: x has {len(x)} samples and y {len(y)} labels; they must match and be > 0")
    digest = hashlib.sha256(tensor_bytes(x) + tensor_bytes(y)).hexdigest()[:16]  # any dtype, bfloat16 too
    return x, y.long(), {"dataset": "file", "path": path, "split": "custom", "n": len(y), "indices_sha256": digest}


def check_data(ckpt: Checkpoint, x, y, info) -> None:
    """Inputs a checkpoint's model can take: float32 (the models' dtype: no silent cast), labels within its classes,
    its channels, and a shape it can run (one forward on the meta device: no memory, no time)."""
    kw = ckpt.arch.kwargs
    if x.dtype != torch.float32:
        raise FlatlensError(f"{info.get('path', 'data')}: inputs of dtype {x.dtype}; the models are float32 (cast "
                            "the file's x with .float())")
    classes = kw.get("num_classes")
    where = info.get("path", "data")
    if classes is not None and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise FlatlensError(f"{where}: labels span [{int(y.min())}, {int(y.max())}]; "
                            f"{ckpt.path or 'the model'} has {classes} classes")
    channels = kw.get("in_channels", 3 if ckpt.arch.name.startswith("resnet") else None)
    if channels is not None and (x.dim() != 4 or x.shape[1] != channels):
        raise FlatlensError(f"{where}: inputs of shape {tuple(x.shape)}; {ckpt.path or 'the model'} takes "
                            f"images (n, {channels}, H, W)")
    if ckpt.arch.name != "module":
        from .models import build
        try:
            with torch.device("meta"):
                build(ckpt.arch.name, **kw).eval()(torch.empty(1, *x.shape[1:]))
        except RuntimeError as e:
            raise FlatlensError(f"{where}: {ckpt.path or 'the model'} cannot take inputs of shape "
                                f"{tuple(x.shape[1:])} ({str(e).splitlines()[0][:80]})") from None


def check_centre(ckpt: Checkpoint, x, y, *, weights: str = "deployed") -> None:
    """The loss at the centre is finite on these samples: a model whose loss is NaN or inf is refused before any
    measurement, naming the checkpoint (one forward pass)."""
    model = build_model(ckpt, weights)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x[:256]), y[:256])
    if not bool(torch.isfinite(loss)):
        raise FlatlensError(f"{ckpt.path or 'the checkpoint'}: its loss at the centre is {float(loss)} on the "
                            "evaluation samples; nothing can be measured there")


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
    version: str = ""            # the flatlens that computed it

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


def measure(ckpt: Checkpoint, metric: str, split: str, settings: M.Settings, *, cache=None, device="cpu", data=None,
            progress=False, store: str | None = None, prepared=None, axis: str = "auto") -> MetricRecord:
    """A registered metric of a checkpoint on a split, through the cache. `data`: (x, y, info), samples the
    caller chose and checked for this checkpoint (`pipeline.DataSource`); default: the checkpoint's own
    selection. `store`: a folder for resumable chunks (perturbation metrics). `prepared`: what the entry's
    `prepare` made for every checkpoint of the call.

    Under torch.distributed (torchrun), `axis` says how the ranks share the work: "data" (each rank holds a
    shard of the samples; losses, gradients and HVPs are summed over ranks), "points" (each rank evaluates some
    of the perturbation points), or "auto": the metric's own (`Metric.axis`). Every rank returns the same
    record; rank 0 alone writes the cache."""
    m = M.get(metric)
    common = settings.common
    x, y, info = data if data is not None else select_data(ckpt.data, split, common.samples, common.seed)
    parts = {"ckpt": ckpt.sha256, "metric": metric, "settings": settings.key(metric), "data": info,
             "version": __version__, "device_type": torch.device(device).type}
    world = group_info()[1]
    if cache is not None:
        hit = cache.get(parts)
        if world > 1 and all_min_int(int(hit is not None), device) == 0:
            hit = None  # every rank computes, or none does: the computation holds collectives
        if hit is not None:
            try:
                rec = MetricRecord.from_dict(hit)
                # the summary rows must be what the full result gives (an emptied or edited table is not trusted)
                if rec.metric != metric or to_plain(rec.rows) != to_plain(m.rows(rec.result, settings.of(metric))):
                    raise ValueError("rows do not match the result")
                # and the record must be of what the key names: its own checkpoint hash, weights, split, data
                # selection, settings and flatlens version (an entry copied under another key is not trusted)
                own = (rec.checkpoint_sha256, rec.weights, rec.split, to_plain(rec.data), to_plain(rec.settings),
                       rec.version)
                want = (ckpt.sha256, common.weights, split, to_plain(info), to_plain(settings.key(metric)),
                        __version__)
                if own != want:
                    raise ValueError("the record is not of the key it was found under")
                rec.cached = True
                return rec
            except (ValueError, TypeError, KeyError, AttributeError, IndexError):
                cache.reject()
    torch.manual_seed(common.seed)
    data_axis = world > 1 and (axis == "data" or (axis == "auto" and m.axis == "data"))
    name = ckpt.name
    s = settings.of(metric)
    try:  # a model that fails here (its loss, an HVP overflowing) is named: compare measures several
        obj = objective_for(ckpt, x, y, device=device, weights=common.weights, batch_size=common.batch_size,
                            data_parallel=data_axis)
        # one live line per measurement (the estimators' own chunk bars stay off under it)
        ctx = M.Context(seed=common.seed, ckpt=ckpt, progress=False, store=store, prepared=prepared)
        with progress_line(obj, f"{metric} {name} ({split})", progress):
            result = m.compute(obj, s, ctx)
    except FlatlensError as e:
        if name in str(e):
            raise
        raise FlatlensError(f"{metric} of {name} ({split}): {e}") from None
    rows = m.rows(result, s)
    bad = [r.key for r in rows if not math.isfinite(r.value)]
    if bad:  # an error, never a printed nan
        raise FlatlensError(f"{metric} of {name} ({split}) came out non-finite ({', '.join(bad[:3])}): the "
                            "perturbations are too large for this model, or its loss overflows")
    rec = MetricRecord(metric=metric, split=split, rows=rows, result=result,
                       settings=settings.key(metric), data=info, checkpoint=ckpt.path,
                       checkpoint_sha256=ckpt.sha256, weights=common.weights,
                       weights_label=weights_label(ckpt, common.weights), bn=obj.bn, center_loss=obj.loss(),
                       objective=obj.describe(), seed=common.seed, version=__version__)
    if cache is not None and group_info()[0] == 0:
        cache.put(parts, rec.to_dict())
    return rec
