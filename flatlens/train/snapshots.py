"""Weight snapshots along a training run (`flatlens train --snapshot-every N`), for trajectory views.

One file beside the checkpoint (`OUT.snapshots`), a torch.save'd dict of plain containers and tensors (loaded with
weights_only): the parameter names and shapes (the flat layout), the weights where this run's training started
(`base`, the flat float32 vector at `base_step`: 0, or the quantization start of a run branched from a shared
prefix), and one flat delta per snapshot, w_t - base, stored in float16 (half the bytes; a delta keeps about 3
significant digits) or float32 (exact), at steps base_step, base_step + N, ... and the last step. Quantized runs
store their latent weights. The file names the checkpoint its run wrote (its sha256), so a trajectory is never
drawn around another model."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .._util import FlatlensError, atomic_torch_save

FORMAT = "flatlens-snapshots"
VERSION = 1
DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class Snapshots:
    names: list[str]
    shapes: list[tuple]
    base: torch.Tensor              # (P,) float32: the weights at base_step
    base_step: int
    steps: list[int]
    deltas: torch.Tensor            # (k, P) float16 / float32: w_step - base
    every: int
    checkpoint_sha256: str | None = None
    path: str | None = None         # the file it was read from

    @property
    def dtype(self) -> str:
        return str(self.deltas.dtype).replace("torch.", "")

    def weights(self) -> torch.Tensor:
        """(k, P) float32: every snapshot's flat weights, base + delta."""
        return self.base[None, :] + self.deltas.float()

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "names": list(self.names),
                "shapes": [list(s) for s in self.shapes], "base": self.base, "base_step": int(self.base_step),
                "steps": [int(s) for s in self.steps], "deltas": self.deltas, "every": int(self.every),
                "checkpoint_sha256": self.checkpoint_sha256}


class Recorder:
    """Takes snapshots of a trainer's model: `start(model)` at the first step this run trains, `take(model, step)`."""

    def __init__(self, names: list[str], every: int, dtype: str = "float16", state: dict | None = None):
        if dtype not in DTYPES:
            raise FlatlensError(f"snapshot dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self.names, self.every, self.dtype = list(names), int(every), DTYPES[dtype]
        self.shapes, self.base, self.base_step, self.steps, self.deltas = None, None, None, [], []
        if state:  # resumed from a partial training state
            self.shapes, self.base, self.base_step = state["shapes"], state["base"], state["base_step"]
            self.steps, self.deltas = list(state["steps"]), list(state["deltas"])

    def _flat(self, model) -> torch.Tensor:
        from ..quant import latent_state
        sd = latent_state(model)[0]
        if self.shapes is None:
            self.shapes = [tuple(sd[n].shape) for n in self.names]
        return torch.cat([sd[n].detach().reshape(-1).float().cpu() for n in self.names])

    def take(self, model, step: int) -> None:
        flat = self._flat(model)
        if self.base is None:
            self.base, self.base_step = flat, int(step)
        if self.steps and self.steps[-1] == step:
            return
        self.steps.append(int(step))
        self.deltas.append((flat - self.base).to(self.dtype))

    def due(self, step: int, last: int) -> bool:
        return self.base is None or (step - self.base_step) % self.every == 0 or step == last

    def state(self) -> dict:
        return {"shapes": self.shapes, "base": self.base, "base_step": self.base_step, "steps": self.steps,
                "deltas": self.deltas}

    def result(self, checkpoint_sha256: str | None = None) -> Snapshots:
        if self.base is None:
            raise FlatlensError("no snapshot was taken")
        return Snapshots(self.names, [tuple(s) for s in self.shapes], self.base, self.base_step, list(self.steps),
                         torch.stack(self.deltas), self.every, checkpoint_sha256)


def snapshot_path(checkpoint_path: str) -> str:
    return f"{checkpoint_path}.snapshots"


def save_snapshots(path: str, snaps: Snapshots) -> None:
    atomic_torch_save(snaps.to_dict(), path)


def load_snapshots(path: str) -> Snapshots:
    """A snapshot file (or the snapshot file beside a checkpoint, given the checkpoint's path), checked."""
    from ..checkpoint import safe_load
    d = safe_load(path, what="snapshot file")
    if isinstance(d, dict) and d.get("format") == "flatlens-checkpoint":  # a checkpoint: its snapshots beside it
        if not os.path.exists(snapshot_path(path)):
            raise FlatlensError(f"{path} is a checkpoint with no snapshot file beside it (train it with "
                                "--snapshot-every N)")
        path = snapshot_path(path)
        d = safe_load(path, what="snapshot file")
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise FlatlensError(f"{path}: not a flatlens snapshot file (flatlens train --snapshot-every N writes them)")
    if d.get("version") != VERSION:
        raise FlatlensError(f"{path}: snapshot file version {d.get('version')!r}; this flatlens reads {VERSION}")
    try:
        names, shapes = [str(n) for n in d["names"]], [tuple(int(x) for x in s) for s in d["shapes"]]
        base, deltas, steps = d["base"], d["deltas"], [int(s) for s in d["steps"]]
        P = sum(int(torch.Size(s).numel()) for s in shapes)
        ok = (isinstance(base, torch.Tensor) and base.shape == (P,) and isinstance(deltas, torch.Tensor)
              and deltas.dim() == 2 and deltas.shape == (len(steps), P) and deltas.dtype in DTYPES.values()
              and len(names) == len(shapes) and steps == sorted(set(steps)) and len(steps) >= 1
              and bool(torch.isfinite(base).all()) and bool(torch.isfinite(deltas.float()).all()))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise FlatlensError(f"{path}: a damaged snapshot file (names, shapes, base and deltas do not fit)")
    return Snapshots(names, shapes, base.float(), int(d["base_step"]), steps, deltas, int(d["every"]),
                     d.get("checkpoint_sha256"), path)
