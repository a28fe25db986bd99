"""Objective: the one definition of "the loss over the data" that every measurement shares.

    F(theta) = sum_b n_b * loss_b(theta) / sum_b n_b        (sample-weighted mean over all batches)

The caller's model is deep-copied once; the copy lives on the objective's device with the data, so no
measurement ever touches the caller's weights or train/eval mode.

Three parts, one job each: the resident data (`resident.ResidentData`: load, shard, weigh, re-cut), this
objective (the loss, its gradient, accuracy, flat vectors, the fingerprint of what F depends on), and its
Hessian (`hessian.operator.HessianOperator`, `obj.hessian_op`: HVPs in their modes and memory budget).
"""
from __future__ import annotations

import copy
import hashlib
import math
from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ._util import FlatlensError, resolve_device
from .parallel import Collectives
from .resident import ResidentData, tensor_bytes  # noqa: F401  (tensor_bytes: re-exported)

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


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
    hvp_mode, graph_budget_bytes, hvp_batch_size, flush_denormal: how the Hessian operator computes its
        products (`hessian.operator.HessianOperator`: "graph" reuses one double-backward graph, "recompute"
        redoes it per batch, "auto" keeps the graph when its measured size fits the budget).
    data_parallel: with torch.distributed initialized (torchrun, or an explicit process group), every rank
        passes the same data and keeps a deterministic shard of it (contiguous samples; whole batches, round
        robin, for a custom loss or batch-statistics BN); F, its gradient, every HVP and every perturbed
        evaluation are sample-weighted sums all-reduced over ranks, so F is the same function of theta on every
        rank whatever the world size, and estimators seeded alike take the same steps everywhere.
    """

    def __init__(self, model: nn.Module, loss_fn, data, *, device=None, params=None, bn: str = "eval",
                 hvp_mode: str = "auto", graph_budget_bytes: int = 2 << 30, hvp_batch_size: int | None = 256,
                 flush_denormal: bool = True, data_parallel: bool = False):
        from .hessian.operator import MODES, HessianOperator
        if bn not in ("eval", "train"):
            raise FlatlensError(f"bn must be 'eval' or 'train', got {bn!r}")
        if hvp_mode not in MODES:
            raise FlatlensError(f"hvp_mode must be auto, graph or recompute, got {hvp_mode!r}")
        if not isinstance(model, nn.Module):
            raise FlatlensError("model must be a torch.nn.Module")
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else "cpu"
        self.device = resolve_device(device)
        self.bn = bn
        self.loss_fn = loss_fn
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

        self.group = Collectives(data_parallel, self.device)
        self.data = ResidentData(data, self.device, custom=self._custom,
                                 whole_batches=self._custom or bn != "eval", group=self.group)
        self.on_progress: Callable[[str, int], None] | None = None  # called as ("hvp" | "eval", count)
        self._fingerprint = None
        with torch.no_grad():
            value, counts, corrects = self._forward(self.center, need_counts=True)
        self.data.weigh(counts)
        self._rank_loss0 = float(sum(w * v for w, v in zip(self.data.weights, value)))
        self._loss0 = self.group.sum_float(self._rank_loss0)
        if any(c is None for c in corrects):
            self._acc0 = None
        else:
            self._acc0 = self.group.sum_float(float(sum(corrects))) / self.n_samples
        if not math.isfinite(self._loss0):
            raise FlatlensError(f"the loss at the centre is not finite ({self._loss0})")
        self.hessian_op = HessianOperator(self, mode=hvp_mode, graph_budget_bytes=graph_budget_bytes,
                                          batch_size=hvp_batch_size, flush_denormal=flush_denormal)
        if self.group.enabled:
            self.fingerprint()  # a collective: taken here, where every rank is, not lazily on one rank's path

    # ---------------------------------------------------------------- data
    @property
    def custom_loss(self) -> bool:
        """True when the loss is a `BatchLoss` (batches of any shape; no accuracy, no re-cutting)."""
        return self._custom

    @property
    def n_samples(self) -> int:
        """Samples of F (every rank's)."""
        return self.data.n_samples

    def module_loss(self, module, batch):
        """(mean loss, n samples, correct count or None) of `batch` through `module` as it stands (a copy of
        this objective's model that a caller perturbs: this objective's own model is never changed)."""
        if self._custom:
            loss, n = self.loss_fn.fn(module, batch)
            return loss, n, None
        out = module(batch[0])
        return self.loss_fn(widen(out), batch[1]), batch[0].shape[0], self.count_correct(out, batch[1])

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
        for b in self.data.batches:
            loss, n, correct = self.batch_loss(tensors, b)
            values.append(loss)
            counts.append(int(n) if need_counts else n)
            corrects.append(correct)
        return values, counts, corrects

    def value(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """F at `params` as a differentiable tensor (names not given stay at the centre). On a data-parallel
        objective this is this rank's share (its samples' weighted losses): the shares sum to F."""
        values, _, _ = self._forward(params)
        return sum(w * v for w, v in zip(self.data.weights, values))

    def loss(self) -> float:
        """F at the centre (computed once)."""
        return self._loss0

    def rank_loss(self) -> float:
        """This rank's share of F at the centre (F itself in one process)."""
        return self._rank_loss0

    def accuracy(self) -> float | None:
        """Accuracy at the centre (computed once), or None when the loss is not a classification loss."""
        return self._acc0

    def loss_at(self, params: Mapping[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return self.group.sum_float(float(self.value(params)))

    def loss_and_accuracy(self, params: Mapping[str, torch.Tensor] | None = None):
        """(F, accuracy or None) at `params` (default: the centre)."""
        with torch.no_grad():
            values, _, corrects = self._forward(params if params is not None else {})
            f = self.group.sum_float(float(sum(w * v for w, v in zip(self.data.weights, values))))
            acc = None if any(c is None for c in corrects) else self.group.sum_float(
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
        if self.group.enabled:  # the ranks' shares sum to F and to its gradient
            flat = self.group.sum(self.flatten(grads))
            return self.group.sum_float(float(f.detach())), self.unflatten(flat)
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

    def as_flat(self, v) -> tuple[torch.Tensor, bool]:
        """(flat vector(s) on the device, whether `v` was a dict name -> tensor), shapes checked."""
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

    # ---------------------------------------------------------------- the Hessian (hessian_op's products)
    def hvp(self, v):
        """H v (`hessian_op.hvp`): a dict name -> tensor gives a dict, a flat vector a flat vector."""
        return self.hessian_op.hvp(v)

    def hvp_many(self, V: torch.Tensor, *, batched: bool | str = "auto") -> torch.Tensor:
        """H applied to each row of V (`hessian_op.hvp_many`)."""
        return self.hessian_op.hvp_many(V, batched=batched)

    @property
    def n_hvp(self) -> int:
        """Hessian-vector products computed so far."""
        return self.hessian_op.n_hvp

    # ---------------------------------------------------------------- bookkeeping
    def tick(self, kind: str, n: int = 1) -> None:
        """Report work as it happens ("hvp": Hessian-vector products, "eval": perturbed evaluations) to
        `on_progress`, so a progress line can show an estimator's count while it runs."""
        if self.on_progress is not None:
            self.on_progress(kind, n)

    def fingerprint(self) -> str:
        """Content hash of what F is a function of: the centre, the model's buffers (BatchNorm statistics),
        the parameter names and the data. Resume stores are keyed by it, so chunks of another checkpoint,
        other weights (deployed vs latent) or another data selection are never taken for this one's."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for n in self.names:
                h.update(n.encode())
                h.update(tensor_bytes(self.center[n]))
            for n, b in self.model.named_buffers():
                h.update(n.encode())
                h.update(tensor_bytes(b))
            self.data.digest(h)
            h.update(f"{self.bn}|{type(self.loss_fn).__name__}".encode())
            # data-parallel: one fingerprint for the whole data set, the same on every rank
            self._fingerprint = hashlib.sha256("|".join(self.group.gather(h.hexdigest())).encode()).hexdigest()[
                :24] if self.group.enabled else h.hexdigest()[:24]
        return self._fingerprint

    def identity(self) -> dict:
        """What a stored result of this objective depends on (resume keys): its content fingerprint, and the
        device and dtype the numbers were computed in."""
        return {"fingerprint": self.fingerprint(), "device": self.device.type, "dtype": str(self.dtype)}

    def describe(self) -> dict:
        """What every result records about the objective it measured (and how its HVPs were computed)."""
        return {"num_params": self.num_params, "n_samples": self.n_samples, "n_batches": len(self.data.batches),
                "bn": self.bn, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                **self.hessian_op.settings(), "world_size": self.group.world_size,
                "samples_per_rank": self.data.samples_per_rank, "fingerprint": self.fingerprint()}
