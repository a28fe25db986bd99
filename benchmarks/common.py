"""Shared set-up of the benchmarks: the digits CNN and 1024 inputs of 16x16, machine facts."""
import json
import os
import platform
import time

import torch
from torch import nn


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def digits_inputs(n=1024):
    """The first n rotated digits over all domains (at most the 1,797 the data set has: check len(y))."""
    from flatlens.data import rotated_digits
    d = rotated_digits()
    x = torch.cat([d.tensors[k][0] for k in d.domains])[:n]
    y = torch.cat([d.tensors[k][1] for k in d.domains])[:n]
    return x, y


def trained_cnn(width=32, steps=150, seed=0):
    """The digits CNN after a short training, so the Hessian is that of a real (not random) model."""
    from flatlens.checkpoint import build_model
    from flatlens.train import TrainConfig, train
    ck = train(TrainConfig(steps=steps, eval_every=steps, arch_kwargs={"width": width}, seed=seed), quiet=True)
    return build_model(ck)


def write_json(path, obj) -> None:
    """A benchmark's results as JSON at `path` (nothing when path is None), written atomically."""
    if path:
        from flatlens._util import atomic_write_text
        atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def timed(fn, *a, **k):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*a, **k)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def loss_fn():
    return nn.CrossEntropyLoss()
