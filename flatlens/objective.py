"""Objective: the one definition of "the loss over the data" that every measurement shares.

    F(theta) = sum_b n_b * loss_b(theta) / sum_b n_b        (sample-weighted mean over all batches)

The caller's model is deep-copied once; the copy lives on the objective's device with the data, so no
measurement ever touches the caller's weights or train/eval mode.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import time
from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ._util import FlatlensError, resolve_device, synchronize
from .parallel import all_gather, all_min_int, all_sum, all_sum_float, group_info, shard

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def flush_denormals(enabled: bool = True):
    """Flush subnormal floats to zero while computing HVPs on a CPU: a double-backward pass can make many,
    and x86 CPUs handle them slowly (on the digits CNN none arise and it buys nothing:
    benchmarks/results/flush_denormal_cpu.json). Their values are
    below 1.2e-38 (fp32), so results do not change beyond that. torch has no getter for this global flag;
    it is switched off again on exit, its default."""
    if not enabled or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class BatchLoss:
    """Marks a custom loss: `fn(model, batch) -> (loss, n_samples)`. `model` is a callable that runs
    the network at the weights being evaluated; `batch` is whatever the data yields (a dict, a tuple...)."""

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise FlatlensError("BatchLoss needs a callable fn(model, batch) -> (loss, n_samples)")
        self.fn = fn


class _Bound:
    """The model at given weights, as a plain callable (handed to BatchLoss functions)."""

    def __init__(self, module, tensors):
        self._module, self._tensors = module, tensors

    def __call__(self, *args, **kwargs):
        return functional_call(self._module, self._tensors, args, kwargs)


def widen(out: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs (autocast) go to fp32 before the loss; fp32 / fp64 stay as they are."""
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch) if isinstance(batch, tuple) else [
            _to_device(v, device) for v in batch]
    return batch


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype (bfloat16 included, which numpy lacks)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensors(batch):
    """Every tensor of a batch (a tensor, a tuple / list / dict of them, nested)."""
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for k in sorted(batch, key=str):
            yield from _tensors(batch[k])
    elif isinstance(batch, (list, tuple)):
        for b in batch:
            yield from _tensors(b)


def _select_params(model: nn.Module, params) -> list[str]:
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
    elif callable(params):
        names = [n for n, p in named.items() if params(n, p)]
    else:
        names = list(params)
        missing = [n for n in names if n not in named]
        if missing:
            raise FlatlensError(f"unknown parameter name(s): {', '.join(missing[:5])}")
    if not names:
        raise FlatlensError("no parameters span the space (none selected or none require grad)")
    return names


class Objective:
    """F(theta) over fixed, device-resident data. See the module docstring and README.

    Parameters
    ----------
    model: the network (never modified).
    loss_fn: `loss_fn(model(x), y) -> scalar` with mean reduction, or a `BatchLoss`.
    data: an `(x, y)` pair of tensors, or an iterable of batches (a DataLoader is read once).
    device: where the copy and the data live (default: the model's device).
    params: names (or a predicate `(name, param) -> bool`) of the parameters spanning the space.
    bn: "eval" (running statistics, default) or "train" (batch statistics, running stats untouched).
    hvp_mode: "graph" keeps one double-backward graph over all the data and reuses it for every HVP;
        "recompute" redoes forward and backward per HVP (memory of one batch); "auto" keeps the graph
        when its measured size fits `graph_budget_bytes`, which also caps the rows of a batched HVP
        (`hvp_block`) in every mode.
    hvp_batch_size: HVPs run over the data re-cut into batches of this many samples when that leaves F
        unchanged (a mean-reduced loss, BN in eval mode; checked at the centre): smaller batches keep the
        retained graph cache-friendly on a CPU (the README's benchmarks). None keeps the caller's batches.
    data_parallel: with torch.distributed initialized (torchrun, or an explicit process group), every rank
        passes the same data and keeps a deterministic shard of it (contiguous samples; whole batches, round
        robin, for a custom loss or batch-statistics BN); F, its gradient, every HVP and every perturbed
        evaluation are sample-weighted sums all-reduced over ranks, so F is the same function of theta on every
        rank whatever the world size, and estimators seeded alike take the same steps everywhere.
    """

    def __init__(self, model: nn.Module, loss_fn, data, *, device=None, params=None, bn: str = "eval",
                 hvp_mode: str = "auto", graph_budget_bytes: int = 2 << 30, hvp_batch_size: int | None = 256,
                 flush_denormal: bool = True, data_parallel: bool = False):
        if bn not in ("eval", "train"):
            raise FlatlensError(f"bn must be 'eval' or 'train', got {bn!r}")
        if hvp_mode not in ("auto", "graph", "recompute"):
            raise FlatlensError(f"hvp_mode must be auto, graph or recompute, got {hvp_mode!r}")
        if not isinstance(model, nn.Module):
            raise FlatlensError("model must be a torch.nn.Module")
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else "cpu"
        self.device = resolve_device(device)
        self.bn = bn
        self.loss_fn = loss_fn
        self.flush_denormal = flush_denormal
        self._custom = isinstance(loss_fn, BatchLoss)
        if not self._custom and not callable(loss_fn):
            raise FlatlensError("loss_fn must be callable (output, target) -> scalar, or a BatchLoss")

        self.model = copy.deepcopy(model).to(self.device)
        self.model.eval()
        if bn == "train":
            # batch statistics always, and no running statistics to update (vmap-safe)
            torch.func.replace_all_batch_norm_modules_(self.model)
            for m in self.model.modules():
                if isinstance(m, BN_TYPES):
                    m.train()
        self.names = _select_params(self.model, params)
        for p in self.model.parameters():
            p.requires_grad_(False)
        named = dict(self.model.named_parameters())
        self.center = {n: named[n].detach().clone() for n in self.names}
        self.shapes = [self.center[n].shape for n in self.names]
        self.numels = [self.center[n].numel() for n in self.names]
        self.offsets = [0]
        for k in self.numels:
            self.offsets.append(self.offsets[-1] + k)
        self.num_params = self.offsets[-1]
        self.dtype = self.center[self.names[0]].dtype

        self.rank, self.world_size = group_info() if data_parallel else (0, 1)
        self.data_parallel = self.world_size > 1
        self.batches = self._shard(self._load(data))
        self.n_hvp = 0
        self._hvp_batched = None  # measured on first need (batched_hvps_pay)
        self._hvp_block = None  # rows per vmapped backward, agreed over ranks on first need (hvp_block)
        self._graph_bytes_per_sample = None  # measured on first need (graph_bytes_per_sample)
        self.on_progress: Callable[[str, int], None] | None = None  # called as ("hvp" | "eval", count)
        self._graph = None
        self._loss0 = None
        self.sample_counts = None
        with torch.no_grad():
            value, counts, corrects = self._forward(self.center, need_counts=True)
        self.sample_counts = counts  # this rank's batches
        self.samples_per_rank = [int(c) for c in self._gather(int(sum(counts)))]
        self.n_samples = int(sum(self.samples_per_rank))  # all ranks
        if self.n_samples <= 0 or min(self.samples_per_rank) <= 0:
            raise FlatlensError("data holds no samples" if self.n_samples <= 0 else
                                f"a rank holds no samples ({self.samples_per_rank}): fewer ranks, or more data")
        self._weights = [c / self.n_samples for c in counts]
        self._local_loss0 = float(sum(w * v for w, v in zip(self._weights, value)))
        self._loss0 = self._sum_float(self._local_loss0)
        if any(c is None for c in corrects):
            self._acc0 = None
        else:
            self._acc0 = self._sum_float(float(sum(corrects))) / self.n_samples
        if not math.isfinite(self._loss0):
            raise FlatlensError(f"the loss at the centre is not finite ({self._loss0})")
        self._hvp_batches, self._hvp_weights = self._recut(hvp_batch_size)
        self.hvp_batch_size = hvp_batch_size if self._hvp_batches is not self.batches else None
        self.graph_budget_bytes = int(graph_budget_bytes)
        self.hvp_mode = self._pick_hvp_mode(hvp_mode)
        if self.data_parallel:
            self.fingerprint()  # a collective: taken here, where every rank is, not lazily on one rank's path

    # ---------------------------------------------------------------- data
    def _load(self, data) -> list:
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            batches = [data]
        elif isinstance(data, (torch.Tensor, str, bytes)) or data is None:
            raise FlatlensError("data must be an (x, y) pair of tensors or an iterable of batches")
        else:
            try:
                batches = list(data)
            except TypeError:
                raise FlatlensError("data must be an (x, y) pair of tensors or an iterable of batches") from None
        if not batches:
            raise FlatlensError("data is empty: no batches")
        out = []
        for b in batches:
            if not self._custom:
                if not (isinstance(b, (tuple, list)) and len(b) >= 2):
                    raise FlatlensError("each batch must be (x, y); pass a BatchLoss for other batch shapes")
                b = (b[0], b[1])
                if len(b[0]) == 0:
                    continue
            out.append(_to_device(b, self.device))
        if not out:
            raise FlatlensError("data holds no samples")
        return out

    @property
    def custom_loss(self) -> bool:
        """True when the loss is a `BatchLoss` (batches of any shape; no accuracy, no re-cutting)."""
        return self._custom

    @property
    def batch_weights(self) -> list[float]:
        """The weight of each resident batch in F (its share of the samples)."""
        return list(self._weights)

    def batches_of(self, size: int | None):
        """(batches, weights): the resident data re-cut into batches of `size` samples, or the caller's own
        batches (size None, or a custom loss, whose batches flatlens cannot re-cut). F is the same function of
        theta over either when the loss is a mean and BatchNorm is in eval mode; callers check at the centre."""
        if not size or self._custom:
            return self.batches, list(self._weights)
        x = torch.cat([b[0] for b in self.batches])
        y = torch.cat([b[1] for b in self.batches])
        batches = [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]
        return batches, [len(b[1]) / self.n_samples for b in batches]

    def module_loss(self, module, batch):
        """(mean loss, n samples, correct count or None) of `batch` through `module` as it stands (a copy of
        this objective's model that a caller perturbs: this objective's own model is never changed)."""
        if self._custom:
            loss, n = self.loss_fn.fn(module, batch)
            return loss, n, None
        out = module(batch[0])
        return self.loss_fn(widen(out), batch[1]), batch[0].shape[0], self.count_correct(out, batch[1])

    # collectives over the data axis: the identity unless this objective is data-parallel
    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_sum(t) if self.data_parallel else t

    def _sum_float(self, x: float) -> float:
        return all_sum_float(x, self.device) if self.data_parallel else float(x)

    def _min_int(self, x: int) -> int:
        return all_min_int(x, self.device) if self.data_parallel else int(x)

    def _gather(self, x) -> list:
        return all_gather(x) if self.data_parallel else [x]

    def _shard(self, batches: list) -> list:
        """This rank's share of the data (all of it in one process)."""
        if not self.data_parallel:
            return batches
        if self._custom or self.bn != "eval":  # whole batches (F of a batch needs the batch whole)
            mine = batches[self.rank::self.world_size]
        else:  # contiguous samples, re-cut at the caller's largest batch size
            size = max(len(b[1]) for b in batches)
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
            idx = shard(len(y), self.rank, self.world_size)
            x, y = x[idx.start:idx.stop], y[idx.start:idx.stop]
            mine = [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]
        if not mine:
            raise FlatlensError(f"rank {self.rank} of {self.world_size} holds no data: fewer ranks, or more data")
        return mine

    def _recut(self, size):
        """(batches, weights) re-cut to `size` samples when that reproduces F at the centre, else the
        caller's own."""
        keep = self.batches, self._weights
        want = bool(size) and not self._custom and self.bn == "eval" and max(self.sample_counts) > size
        if not self._min_int(int(want)):  # every rank takes the same path (collectives below)
            return keep
        batches, weights = self.batches_of(size)
        with torch.no_grad():
            f = float(sum(w * self._batch_loss(self.center, b)[0] for w, b in zip(weights, batches)))
        tol = 1e-10 if self.dtype == torch.float64 else 1e-5
        ok = abs(f - self._local_loss0) <= tol * max(1.0, abs(self._local_loss0))
        return (batches, weights) if self._min_int(int(ok)) else keep  # every rank alike

    # ---------------------------------------------------------------- evaluation
    def full_params(self, params: Mapping[str, torch.Tensor]) -> dict:
        """`params` over the centre: names not given stay at the centre."""
        unknown = set(params) - set(self.names)
        if unknown:
            raise FlatlensError(f"parameter(s) not in this objective's space: {', '.join(sorted(unknown)[:5])}")
        full = dict(self.center)
        full.update(params)
        return full

    def batch_loss(self, tensors: dict, batch):
        """(mean loss of the batch, its sample count, its number of correct predictions or None) at the full
        parameter dict `tensors` (functional: the model itself is not changed; vmap-able)."""
        return self._batch_loss(tensors, batch)

    def _batch_loss(self, tensors: dict, batch):
        if self._custom:
            loss, n = self.loss_fn.fn(_Bound(self.model, tensors), batch)
            correct = None
        else:
            x, y = batch
            out = functional_call(self.model, tensors, (x,))
            loss = self.loss_fn(widen(out), y)
            n = x.shape[0]
            correct = self.count_correct(out, y)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise FlatlensError(f"the loss must be a scalar; got {shape}")
        return loss.reshape(()), n, correct

    @staticmethod
    def count_correct(out: torch.Tensor, y: torch.Tensor):
        """The classification rule every accuracy in flatlens uses: outputs (n, classes) and integer class
        labels (n,) give the number of argmax hits; anything else (regression, multi-output targets,
        custom losses) has no accuracy (None)."""
        if out.dim() == 2 and y.dim() == 1 and not torch.is_floating_point(y) and not y.is_complex() \
                and y.shape[0] == out.shape[0]:
            return (out.argmax(dim=1) == y).sum()
        return None

    @property
    def is_classification(self) -> bool:
        """True when the loss is a classification loss by `count_correct`'s rule (accuracy is defined)."""
        return self._acc0 is not None

    def _forward(self, params, need_counts=False):
        tensors = self.full_params(params) if params is not self.center else self.center
        values, counts, corrects = [], [], []
        for b in self.batches:
            loss, n, correct = self._batch_loss(tensors, b)
            values.append(loss)
            counts.append(int(n) if need_counts else n)
            corrects.append(correct)
        return values, counts, corrects

    def value(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """F at `params` as a differentiable tensor (names not given stay at the centre). On a data-parallel
        objective this is this rank's share (its samples' weighted losses): the shares sum to F."""
        values, _, _ = self._forward(params)
        return sum(w * v for w, v in zip(self._weights, values))

    def loss(self) -> float:
        """F at the centre (computed once)."""
        return self._loss0

    def accuracy(self) -> float | None:
        """Accuracy at the centre (computed once), or None when the loss is not a classification loss."""
        return self._acc0

    def loss_at(self, params: Mapping[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return self._sum_float(float(self.value(params)))

    def loss_and_accuracy(self, params: Mapping[str, torch.Tensor] | None = None):
        """(F, accuracy or None) at `params` (default: the centre)."""
        with torch.no_grad():
            values, _, corrects = self._forward(params if params is not None else {})
            f = self._sum_float(float(sum(w * v for w, v in zip(self._weights, values))))
            acc = None if any(c is None for c in corrects) else self._sum_float(
                float(sum(corrects))) / self.n_samples
        return f, acc

    def grad_at(self, params: Mapping[str, torch.Tensor] | None = None) -> tuple[float, dict]:
        """(F, dF/dtheta) at `params` (default: the centre); unused parameters get zero gradient."""
        base = self.full_params(params or {})
        leaves = {n: base[n].detach().clone().requires_grad_(True) for n in self.names}
        with torch.enable_grad():
            f = self.value(leaves)
            grads = torch.autograd.grad(f, list(leaves.values()), allow_unused=True)
        self.tick("grad")
        grads = {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(self.names, grads)}
        if self.data_parallel:  # the ranks' shares sum to F and to its gradient
            flat = self._sum(self.flatten(grads))
            return self._sum_float(float(f.detach())), self.unflatten(flat)
        return float(f.detach()), grads

    # ---------------------------------------------------------------- flat vectors
    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        try:
            return torch.cat([tensors[n].reshape(-1).to(self.dtype) for n in self.names])
        except KeyError as e:
            raise FlatlensError(f"vector lacks parameter {e.args[0]!r}") from None

    def unflatten(self, vec: torch.Tensor) -> dict:
        if vec.shape[-1] != self.num_params:
            raise FlatlensError(f"vector has {vec.shape[-1]} entries, the objective has {self.num_params}")
        lead = vec.shape[:-1]
        return {n: vec[..., a:b].reshape(*lead, *s)
                for n, a, b, s in zip(self.names, self.offsets[:-1], self.offsets[1:], self.shapes)}

    def _as_flat(self, v) -> tuple[torch.Tensor, bool]:
        if isinstance(v, Mapping):
            missing = [n for n in self.names if n not in v]
            if missing:
                raise FlatlensError(f"vector lacks parameter(s): {', '.join(missing[:5])}")
            for n, s in zip(self.names, self.shapes):
                if tuple(v[n].shape) != tuple(s):
                    raise FlatlensError(f"vector entry {n!r} has shape {tuple(v[n].shape)}, expected {tuple(s)}")
            return self.flatten({n: v[n].to(self.device) for n in self.names}), True
        v = torch.as_tensor(v, device=self.device, dtype=self.dtype)
        if v.shape[-1] != self.num_params:
            raise FlatlensError(f"vector has {v.shape[-1]} entries, the objective has {self.num_params}")
        return v, False

    # ---------------------------------------------------------------- Hessian-vector products
    def _build_graph(self):
        leaves = [self.center[n].detach().clone().requires_grad_(True) for n in self.names]
        with torch.enable_grad():
            tensors = self.full_params(dict(zip(self.names, leaves)))
            f = sum(w * self._batch_loss(tensors, b)[0] for w, b in zip(self._hvp_weights, self._hvp_batches))
            grads = torch.autograd.grad(f, leaves, create_graph=True, allow_unused=True)
        return leaves, grads

    def _pick_hvp_mode(self, mode: str) -> str:
        """The retained graph when its measured size fits `graph_budget_bytes` ("auto"), else recompute per batch.
        The graph is measured here in every mode (it sizes `hvp_block` too): measured later, next to a retained
        graph, its one-batch graph would add to the peak."""
        estimate = self.graph_bytes_estimate
        if mode != "auto":
            return mode
        return "graph" if estimate <= self.graph_budget_bytes else "recompute"

    @property
    def graph_bytes_per_sample(self) -> float:
        """Bytes the double-backward graph saves per sample, measured once on the first HVP batch (at
        construction)."""
        if self._graph_bytes_per_sample is None:
            saved = [0]

            def pack(t):
                # count, and keep a detached alias: returning `t` itself would make a saved output hold its
                # own grad_fn, a reference cycle through C++ that the garbage collector cannot free (it kept
                # this first batch's double-backward graph alive for the objective's lifetime). The graph
                # built here is measured, never differentiated, so the alias is never unpacked for a backward.
                saved[0] += t.numel() * t.element_size()
                return t.detach()

            first = self._hvp_batches[0]
            leaves = [self.center[n].detach().clone().requires_grad_(True) for n in self.names]
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, _, _ = self._batch_loss(self.full_params(dict(zip(self.names, leaves))), first)
                torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            self._graph_bytes_per_sample = saved[0] / max(1, self._hvp_weights[0] * self.n_samples)  # w = share
        return self._graph_bytes_per_sample

    @property
    def graph_bytes_estimate(self) -> int:
        """Bytes of the retained double-backward graph over this rank's samples (extrapolated per sample)."""
        return int(self.graph_bytes_per_sample * sum(self.sample_counts))

    def _second_backward(self, grads, leaves, vd, *, retain_graph: bool, batched: bool = False):
        """Hv per parameter (None where zero) from a gradient graph: backward through the gradient entries that
        depend on theta, with `vd` as their cotangents. Gradients that do not depend on theta (or parameters
        the loss never uses) carry no curvature."""
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not used:
            return [None] * len(leaves)
        with torch.enable_grad():
            return torch.autograd.grad([grads[i] for i in used], leaves,
                                       grad_outputs=[vd[self.names[i]] for i in used], retain_graph=retain_graph,
                                       allow_unused=True, is_grads_batched=batched)

    def _hvp_into(self, V: torch.Tensor, batched: bool) -> torch.Tensor:
        """H v for one flat vector (batched=False) or for the rows of V through one vmapped backward."""
        out = torch.zeros_like(V)
        outd, vd = self.unflatten(out), self.unflatten(V)
        with flush_denormals(self.flush_denormal and self.device.type == "cpu"):
            if self.hvp_mode == "graph":
                if self._graph is None:
                    self._graph = self._build_graph()
                leaves, grads = self._graph
                for n, h in zip(self.names, self._second_backward(grads, leaves, vd, retain_graph=True,
                                                                  batched=batched)):
                    if h is not None:
                        outd[n].copy_(h)
            else:  # recompute per batch: memory of one batch, one forward + double backward per batch per HVP
                for w, b in zip(self._hvp_weights, self._hvp_batches):
                    leaves = [self.center[n].detach().clone().requires_grad_(True) for n in self.names]
                    with torch.enable_grad():
                        loss, _, _ = self._batch_loss(self.full_params(dict(zip(self.names, leaves))), b)
                        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                    for n, h in zip(self.names, self._second_backward(grads, leaves, vd, retain_graph=False,
                                                                      batched=batched)):
                        if h is not None:
                            outd[n].add_(h, alpha=w)
        self._sum(out)  # on a data-parallel objective: this rank's share of H v, summed over ranks
        self.n_hvp += len(V) if batched else 1
        self.tick("hvp", len(V) if batched else 1)
        return out

    def hvp(self, v):
        """H v. `v` is a dict name -> tensor (returns a dict) or a flat vector (returns a flat vector)."""
        flat, was_dict = self._as_flat(v)
        if flat.dim() != 1:
            raise FlatlensError("hvp takes one vector; use hvp_many for a stack")
        out = self._hvp_into(flat, batched=False)
        return {n: t.clone() for n, t in self.unflatten(out).items()} if was_dict else out

    def hvp_many(self, V: torch.Tensor, *, batched: bool | str = "auto") -> torch.Tensor:
        """H applied to each row of V (m, num_params).

        batched=False: a loop over the reused graph; True: blocks of rows through one vmapped backward
        (autograd's is_grads_batched), `hvp_block` rows at a time; "auto" (default): the loop on CPU, where it
        was measured faster (benchmarks/hessian_vs_pyhessian.py), and on an accelerator whichever of the two a
        timing of two HVPs picks, once per objective (recorded in `describe()` as `hvp_batched`)."""
        V, _ = self._as_flat(V)
        if V.dim() == 1:
            V = V[None]
        if not len(V):
            return V.clone()
        if batched == "auto":
            batched = len(V) > 1 and self.batched_hvps_pay()
        if batched:
            return torch.cat([self._hvp_into(V[i:i + self.hvp_block], batched=True)
                              for i in range(0, len(V), self.hvp_block)])
        return torch.stack([self._hvp_into(v, batched=False) for v in V])

    @property
    def hvp_block(self) -> int:
        """Rows per vmapped backward: 8, fewer where the rows times the graph one backward runs through (all of
        this rank's samples with the retained graph, the largest batch when recomputing) would pass
        `graph_budget_bytes`; the smallest over ranks (shards differ in size, and every rank must run the same
        blocks)."""
        if self._hvp_block is None:
            if self.hvp_mode == "graph":
                per = self.graph_bytes_estimate
            else:
                per = self.graph_bytes_per_sample * max(self._hvp_weights) * self.n_samples
            self._hvp_block = self._min_int(int(max(1, min(8, self.graph_budget_bytes // max(1, int(per))))))
        return self._hvp_block

    def batched_hvps_pay(self) -> bool:
        """Whether blocks of HVPs through one vmapped backward beat a loop here (measured once per objective on
        an accelerator, from two throwaway HVPs each way; never on a CPU, where the loop won)."""
        if self._hvp_batched is None:
            if self.device.type == "cpu":
                self._hvp_batched = False
            else:
                n0, ticks, self.on_progress = self.n_hvp, self.on_progress, None  # not the estimator's HVPs
                V = torch.randn(2, self.num_params, device=self.device, dtype=self.dtype)
                self.hvp_many(V, batched=False)
                self.hvp_many(V, batched=True)  # warm both
                synchronize(self.device)
                t0 = time.perf_counter()
                self.hvp_many(V, batched=False)
                synchronize(self.device)
                t1 = time.perf_counter()
                self.hvp_many(V, batched=True)
                synchronize(self.device)
                pays = (time.perf_counter() - t1) < (t1 - t0)
                self._hvp_batched = bool(self._min_int(int(pays)))  # every rank takes the same blocks
                self.n_hvp, self.on_progress = n0, ticks
        return self._hvp_batched

    def tick(self, kind: str, n: int = 1) -> None:
        """Report work as it happens ("hvp": Hessian-vector products, "eval": perturbed evaluations) to
        `on_progress`, so a progress line can show an estimator's count while it runs."""
        if self.on_progress is not None:
            self.on_progress(kind, n)

    def release_graph(self) -> None:
        """Free the cached double-backward graph (rebuilt on the next HVP)."""
        self._graph = None

    def fingerprint(self) -> str:
        """Content hash of what F is a function of: the centre, the model's buffers (BatchNorm statistics),
        the parameter names and the data. Resume stores are keyed by it, so chunks of another checkpoint,
        other weights (deployed vs latent) or another data selection are never taken for this one's."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256()
            for n in self.names:
                h.update(n.encode())
                h.update(tensor_bytes(self.center[n]))
            for n, b in self.model.named_buffers():
                h.update(n.encode())
                h.update(tensor_bytes(b))
            for batch in self.batches:
                for t in _tensors(batch):
                    h.update(str(tuple(t.shape)).encode())
                    h.update(tensor_bytes(t))
            h.update(f"{self.bn}|{type(self.loss_fn).__name__}".encode())
            # data-parallel: one fingerprint for the whole data set, the same on every rank
            self._fingerprint = hashlib.sha256("|".join(self._gather(h.hexdigest())).encode()).hexdigest()[:24] \
                if self.data_parallel else h.hexdigest()[:24]
        return self._fingerprint

    def identity(self) -> dict:
        """What a stored result of this objective depends on (resume keys): its content fingerprint, and the
        device and dtype the numbers were computed in."""
        return {"fingerprint": self.fingerprint(), "device": self.device.type, "dtype": str(self.dtype)}

    def describe(self) -> dict:
        """What every result records about the objective it measured."""
        return {"num_params": self.num_params, "n_samples": self.n_samples, "n_batches": len(self.batches),
                "bn": self.bn, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "hvp_mode": self.hvp_mode, "hvp_batch_size": self.hvp_batch_size,
                "hvp_batched": self._hvp_batched, "world_size": self.world_size,
                "samples_per_rank": self.samples_per_rank, "fingerprint": self.fingerprint()}


def timer():
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
