"""The Hessian of an Objective as a matrix-free operator, and the protocol every curvature operator implements.

    H = d^2 F / d theta^2 at the objective's centre,   H v by double backward (Pearlmutter 1994)

Three modes: "graph" keeps one double-backward graph over all the data and reuses it for every product (cheap
per product, memory held); "recompute" redoes forward and double backward per batch per product (the memory of
one batch); "auto" keeps the graph when its measured size fits `graph_budget_bytes`, which also caps the rows of
a batched product (`hvp_block`) in every mode. The estimators (eigenvalues, trace, density, diagonal) take any
`CurvatureOperator`: this one, `ScaledHessian` (S H S), or a caller's own."""
from __future__ import annotations

import contextlib
import time
from typing import Protocol, runtime_checkable

import torch

from .._util import FlatlensError, synchronize


@runtime_checkable
class CurvatureOperator(Protocol):
    """A symmetric operator on the objective's flat parameter space. `n_hvp` counts products so far;
    `hvp_many` applies it to the rows of a matrix (`batched`: through one vmapped backward, `hvp_block` rows at a
    time, where `batched_hvps_pay`); `describe` says what it is, for every result."""
    num_params: int
    names: list
    offsets: list
    device: torch.device
    dtype: torch.dtype

    @property
    def n_hvp(self) -> int: ...

    @property
    def hvp_block(self) -> int: ...

    def hvp(self, v: torch.Tensor) -> torch.Tensor: ...

    def hvp_many(self, V: torch.Tensor, *, batched: bool | str = "auto") -> torch.Tensor: ...

    def batched_hvps_pay(self) -> bool: ...

    def describe(self) -> dict: ...


def operator_of(x) -> CurvatureOperator:
    """The curvature operator an estimator works on: an Objective's Hessian, or `x` itself when it is an
    operator already."""
    op = getattr(x, "hessian_op", None)
    if op is not None:
        return op
    if isinstance(x, CurvatureOperator):
        return x
    raise FlatlensError(f"expected an Objective or a curvature operator; got {type(x).__name__}")


def element_size(dtype: torch.dtype) -> int:
    """Bytes per entry of a vector of this dtype."""
    return torch.empty((), dtype=dtype).element_size()


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


def batched_products_pay(op, obj) -> bool:
    """Whether `op`'s products through one vmapped pass (`hvp_many(..., batched=True)`) beat a loop of single
    products: never on a CPU (the loop won there: benchmarks/hessian_vs_pyhessian.py); on an accelerator timed
    once from two throwaway products each way (not counted in `op.n_hvp`, not reported as progress), and agreed
    over the ranks of a data-parallel objective (every rank must take the same blocks)."""
    if op.device.type == "cpu":
        return False
    n0, ticks, obj.on_progress = op.n_hvp, obj.on_progress, None  # not the estimator's products
    try:
        V = torch.randn(2, op.num_params, device=op.device, dtype=op.dtype)
        op.hvp_many(V, batched=False)
        op.hvp_many(V, batched=True)  # warm both
        synchronize(op.device)
        t0 = time.perf_counter()
        op.hvp_many(V, batched=False)
        synchronize(op.device)
        t1 = time.perf_counter()
        op.hvp_many(V, batched=True)
        synchronize(op.device)
        pays = (time.perf_counter() - t1) < (t1 - t0)
    finally:
        op.n_hvp, obj.on_progress = n0, ticks
    return bool(obj.group.min_int(int(pays)))


MODES = ("auto", "graph", "recompute")


class RowProducts:
    """`hvp` and `hvp_many` of a matrix-free operator from its `_apply(V, batched)`: M applied to the rows of V
    (m, num_params), in a loop of single products or (batched=True) through one vmapped pass. Subclasses give
    `_apply`, `hvp_block` and the fields `obj`, `n_hvp`, `_batched`."""

    def _apply(self, V: torch.Tensor, batched: bool) -> torch.Tensor:
        raise NotImplementedError

    def hvp(self, v):
        """M v. `v` is a dict name -> tensor (returns a dict) or a flat vector (returns a flat vector)."""
        flat, was_dict = self.obj.as_flat(v)
        if flat.dim() != 1:
            raise FlatlensError("hvp takes one vector; use hvp_many for a stack")
        out = self._apply(flat[None], batched=False)[0]
        return {n: t.clone() for n, t in self.obj.unflatten(out).items()} if was_dict else out

    def hvp_many(self, V: torch.Tensor, *, batched: bool | str = "auto") -> torch.Tensor:
        """M applied to each row of V (m, num_params).

        batched=False: a loop of single products; True: blocks of `hvp_block` rows through one vmapped pass;
        "auto" (default): the loop on CPU, where it was measured faster (benchmarks/hessian_vs_pyhessian.py), and
        on an accelerator whichever of the two a timing of two products picks, once per operator
        (`batched_hvps_pay`, recorded in `settings()`)."""
        V, _ = self.obj.as_flat(V)
        if V.dim() == 1:
            V = V[None]
        if not len(V):
            return V.clone()
        if batched == "auto":
            batched = len(V) > 1 and self.batched_hvps_pay()
        if batched:
            return torch.cat([self._apply(V[i:i + self.hvp_block], batched=True)
                              for i in range(0, len(V), self.hvp_block)])
        return self._apply(V, batched=False)

    def batched_hvps_pay(self) -> bool:
        """Whether blocks of products through one vmapped pass beat a loop here (`batched_products_pay`)."""
        if self._batched is None:
            self._batched = batched_products_pay(self, self.obj)
        return self._batched


class HessianOperator(RowProducts):
    """H of `obj` at its centre. It reads the objective through its public interface: the centre and the names
    of the parameters spanning the space, `full_params`, the functional `batch_loss`, its resident data
    (`obj.data`: batches, weights, re-cutting) and its collectives (`obj.group`, summing each rank's share of
    H v on a data-parallel objective).

    batch_size: products run over the data re-cut into batches of this many samples when that leaves F unchanged
        (a mean-reduced loss, BN in eval mode; checked at the centre): smaller batches keep the retained graph
        cache-friendly on a CPU (the README's benchmarks). None keeps the caller's batches."""

    def __init__(self, obj, *, mode: str = "auto", graph_budget_bytes: int = 2 << 30, batch_size: int | None = 256,
                 flush_denormal: bool = True):
        if mode not in MODES:
            raise FlatlensError(f"hvp_mode must be auto, graph or recompute, got {mode!r}")
        self.obj = obj
        self.num_params, self.names, self.offsets = obj.num_params, obj.names, obj.offsets
        self.device, self.dtype = obj.device, obj.dtype
        self.flush_denormal = flush_denormal
        self.n_hvp = 0
        self._batched = None  # measured on first need (batched_hvps_pay)
        self._block = None  # rows per vmapped backward, agreed over ranks on first need (hvp_block)
        self._bytes_per_sample = None  # measured at construction (graph_bytes_per_sample)
        self._graph = None
        self.batches, self.weights = self._recut(batch_size)
        self.batch_size = batch_size if self.batches is not obj.data.batches else None
        self.graph_budget_bytes = int(graph_budget_bytes)
        self.mode = self._pick_mode(mode)

    def _recut(self, size):
        """(batches, weights) re-cut to `size` samples when that reproduces F at the centre, else the
        caller's own."""
        obj, data, group = self.obj, self.obj.data, self.obj.group
        keep = data.batches, data.weights
        want = bool(size) and not data.custom and obj.bn == "eval" and max(data.sample_counts) > size
        if not group.min_int(int(want)):  # every rank takes the same path (collectives below)
            return keep
        batches, weights = data.batches_of(size)
        with torch.no_grad():
            f = float(sum(w * obj.batch_loss(obj.center, b)[0] for w, b in zip(weights, batches)))
        tol = 1e-10 if self.dtype == torch.float64 else 1e-5
        share = obj.rank_loss()
        ok = abs(f - share) <= tol * max(1.0, abs(share))
        return (batches, weights) if group.min_int(int(ok)) else keep  # every rank alike

    # ---------------------------------------------------------------- the double-backward graph
    def _leaves(self):
        return [self.obj.center[n].detach().clone().requires_grad_(True) for n in self.names]

    def _build_graph(self):
        leaves = self._leaves()
        with torch.enable_grad():
            tensors = self.obj.full_params(dict(zip(self.names, leaves)))
            f = sum(w * self.obj.batch_loss(tensors, b)[0] for w, b in zip(self.weights, self.batches))
            grads = torch.autograd.grad(f, leaves, create_graph=True, allow_unused=True)
        return leaves, grads

    def _pick_mode(self, mode: str) -> str:
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
        if self._bytes_per_sample is None:
            saved = [0]

            def pack(t):
                # count, and keep a detached alias: returning `t` itself would make a saved output hold its
                # own grad_fn, a reference cycle through C++ that the garbage collector cannot free (it kept
                # this first batch's double-backward graph alive for the objective's lifetime). The graph
                # built here is measured, never differentiated, so the alias is never unpacked for a backward.
                saved[0] += t.numel() * t.element_size()
                return t.detach()

            leaves = self._leaves()
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, _, _ = self.obj.batch_loss(self.obj.full_params(dict(zip(self.names, leaves))),
                                                 self.batches[0])
                torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            self._bytes_per_sample = saved[0] / max(1, self.weights[0] * self.obj.n_samples)  # w = share
        return self._bytes_per_sample

    @property
    def graph_bytes_estimate(self) -> int:
        """Bytes of the retained double-backward graph over this rank's samples (extrapolated per sample)."""
        return int(self.graph_bytes_per_sample * sum(self.obj.data.sample_counts))

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
        obj = self.obj
        out = torch.zeros_like(V)
        outd, vd = obj.unflatten(out), obj.unflatten(V)
        with flush_denormals(self.flush_denormal and self.device.type == "cpu"):
            if self.mode == "graph":
                if self._graph is None:
                    self._graph = self._build_graph()
                leaves, grads = self._graph
                for n, h in zip(self.names, self._second_backward(grads, leaves, vd, retain_graph=True,
                                                                  batched=batched)):
                    if h is not None:
                        outd[n].copy_(h)
            else:  # recompute per batch: memory of one batch, one forward + double backward per batch per HVP
                for w, b in zip(self.weights, self.batches):
                    leaves = self._leaves()
                    with torch.enable_grad():
                        loss, _, _ = obj.batch_loss(obj.full_params(dict(zip(self.names, leaves))), b)
                        grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                    for n, h in zip(self.names, self._second_backward(grads, leaves, vd, retain_graph=False,
                                                                      batched=batched)):
                        if h is not None:
                            outd[n].add_(h, alpha=w)
        obj.group.sum(out)  # on a data-parallel objective: this rank's share of H v, summed over ranks
        if not bool(torch.isfinite(out).all()):  # one pass over the vector: cheap beside the double backward
            raise FlatlensError("a Hessian-vector product came out non-finite: the model's curvature overflows at "
                                "its centre (weights or inputs too large for its dtype)")
        count = len(V) if batched else 1
        self.n_hvp += count
        obj.tick("hvp", count)
        return out

    def _apply(self, V: torch.Tensor, batched: bool) -> torch.Tensor:
        """H applied to the rows of V: one vmapped backward (autograd's is_grads_batched), or a loop over them."""
        if batched:
            return self._hvp_into(V, batched=True)
        return torch.stack([self._hvp_into(v, batched=False) for v in V])

    @property
    def hvp_block(self) -> int:
        """Rows per vmapped backward: 8, fewer where the rows times the graph one backward runs through (all of
        this rank's samples with the retained graph, the largest batch when recomputing) would pass
        `graph_budget_bytes`; the smallest over ranks (shards differ in size, and every rank must run the same
        blocks)."""
        if self._block is None:
            if self.mode == "graph":
                per = self.graph_bytes_estimate
            else:
                per = self.graph_bytes_per_sample * max(self.weights) * self.obj.n_samples
            self._block = self.obj.group.min_int(int(max(1, min(8, self.graph_budget_bytes // max(1, int(per))))))
        return self._block

    def release_graph(self) -> None:
        """Free the cached double-backward graph (rebuilt on the next HVP)."""
        self._graph = None

    def settings(self) -> dict:
        """How the products are computed (part of every result's objective record)."""
        return {"hvp_mode": self.mode, "hvp_batch_size": self.batch_size, "hvp_batched": self._batched}

    def describe(self) -> dict:
        return self.obj.describe()
