"""The generalized Gauss-Newton (GGN) and the Fisher of an Objective, as matrix-free curvature operators.

With f_b(theta) the model's outputs on batch b, J_b = d f_b / d theta and L_b(f) = loss_fn(f, y_b) the batch's loss
(F = sum_b w_b L_b), every operator here is

    M v = sum_b w_b J_b' Lambda_b (J_b v)

with Lambda_b a positive semi-definite map on the outputs:

    GGN       Lambda_b = d^2 L_b / d f^2, the loss's Hessian in the outputs (Schraudolph 2002; Martens 2020, Sec. 8):
              the Hessian without the term sum_k (dL/df_k) d^2 f_k / d theta^2 that makes it indefinite. For a linear
              model the dropped term is zero and G = H.
    Fisher    with L_b = kappa_b sum_i l(f_i, t_i) (kappa_b = 1/n_b for cross-entropy's mean, 1/(n_b D) for the
              squared error's mean over D outputs per sample, 1 for a sum: curvlinops' convention), per-sample output
              gradients g_i = d l(f_i, t_i) / d f_i and
              Lambda_b u = kappa_b sum_i g_i (g_i . u_i):
              "empirical": t_i the observed labels y_i (the uncentred gradient covariance);
              "sampled" (type 2, Monte Carlo): t_i drawn from the model's predictive distribution, `mc_samples` per
              input, averaged: cross-entropy t ~ Categorical(softmax(f_i)), squared error t ~ N(f_i, I/2) (the
              likelihood whose negative log is l). E_t[Fisher] = GGN for both (Kunstner et al. 2019; Martens 2020).

Products use torch.func: J v as the transpose of the vector-Jacobian product (the "double vjp": vjp of the linear map
u -> J'u), then J'(Lambda J v) by the vjp. Mode "graph" keeps each batch's linearization (its forward graph)
for every product; "recompute" rebuilds it per product (the memory of one batch); "auto" follows the objective's
Hessian operator (the retained graph when its measured double-backward graph, larger than this one, fits the
budget). Every estimator (eigenvalues, trace, density, diagonal) takes these operators unchanged."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from .._util import FlatlensError, check_number, generator
from ..objective import widen
from .operator import MODES, RowProducts

LABELS = ("empirical", "sampled")


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products of two (n, ...) tensors, shaped (n, 1, ..., 1) to broadcast back."""
    s = (a * b).reshape(a.shape[0], -1).sum(1)
    return s.reshape((a.shape[0],) + (1,) * (a.dim() - 1))


def _per_sample_scale(loss_fn, out: torch.Tensor) -> float:
    """kappa_b in L_b = kappa_b sum_i l(f_i, t_i): the loss's reduction (curvlinops' convention for the squared
    error: l is the sum of squares over the sample's D outputs, the 1/D of nn.MSELoss's mean is the reduction's)."""
    n = out.shape[0]
    if loss_fn.reduction == "sum":
        return 1.0
    if loss_fn.reduction != "mean":
        raise FlatlensError(f"the Fisher needs a loss reduced by mean or sum; got reduction={loss_fn.reduction!r}")
    return 1.0 / n if isinstance(loss_fn, nn.CrossEntropyLoss) else 1.0 / out.numel()


def check_fisher_loss(loss_fn, labels: str) -> None:
    """The Fisher needs a loss that is a negative log-likelihood flatlens can sample from: nn.CrossEntropyLoss
    (no class weights; no label smoothing for sampled labels) or nn.MSELoss; one FlatlensError otherwise."""
    if labels not in LABELS:
        raise FlatlensError(f"labels must be one of {', '.join(LABELS)}; got {labels!r}")
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if loss_fn.weight is not None:
            raise FlatlensError("the Fisher of a class-weighted cross-entropy is not supported (its mean is "
                                "weighted, not per sample)")
        if labels == "sampled" and loss_fn.label_smoothing > 0:
            raise FlatlensError("sampled-label Fisher: a label-smoothed cross-entropy is not a categorical "
                                "log-likelihood to sample from; use labels='empirical' or the GGN")
    elif not isinstance(loss_fn, nn.MSELoss):
        raise FlatlensError(f"the Fisher needs nn.CrossEntropyLoss or nn.MSELoss (a likelihood to sample labels "
                            f"from); got {type(loss_fn).__name__} (the GGN takes any loss)")


class OutputCurvature(RowProducts):
    """M v = sum_b w_b J_b' Lambda_b (J_b v) over the objective's batches (those its Hessian operator uses, re-cut
    where that leaves F unchanged); a `CurvatureOperator`. Subclasses give `kind` and `_output_map`."""
    kind = ""

    def __init__(self, obj, *, mode: str = "auto"):
        if obj.custom_loss:
            raise FlatlensError(f"the {self.kind} needs loss_fn(model(x), y): a BatchLoss has no model outputs to "
                                "linearize")
        if mode not in MODES:
            raise FlatlensError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        hop = obj.hessian_op
        self.obj = obj
        self.num_params, self.names, self.offsets = obj.num_params, obj.names, obj.offsets
        self.device, self.dtype = obj.device, obj.dtype
        self.batches, self.weights = hop.batches, hop.weights
        self.mode = hop.mode if mode == "auto" else mode
        self.n_hvp = 0
        self._batched = None
        self._block = None
        self._cache: dict[int, tuple] = {}

    # ---------------------------------------------------------------- the linearization of one batch
    def _outputs(self, batch):
        """theta (one tensor per name) -> the model's outputs on `batch` (functional; half precision widened)."""
        obj, x = self.obj, batch[0]

        def f(*leaves):
            return widen(functional_call(obj.model, obj.full_params(dict(zip(self.names, leaves))), (x,)))
        return f

    def _output_map(self, i: int, out: torch.Tensor, batch):
        """u -> Lambda_b u on batch i's outputs `out` (detached)."""
        raise NotImplementedError

    def _linearize(self, i: int):
        """(J v, J'u, Lambda) of batch i: J v by the transpose of the vjp (itself linear in its cotangent)."""
        if i in self._cache:
            return self._cache[i]
        primals = tuple(self.obj.center[n] for n in self.names)
        with torch.enable_grad():
            out, vjp_fn = vjp(self._outputs(self.batches[i]), *primals)
            _, jvp_fn = vjp(vjp_fn, torch.zeros_like(out))
        lin = (lambda vt: jvp_fn(vt)[0], vjp_fn, self._output_map(i, out.detach(), self.batches[i]))
        if self.mode == "graph":
            self._cache[i] = lin
        return lin

    def _product(self, v: torch.Tensor) -> torch.Tensor:
        """M v for one flat vector (functional, so vmap can batch it)."""
        vd = self.obj.unflatten(v)
        vt = tuple(vd[n] for n in self.names)
        total = torch.zeros_like(v)
        with torch.enable_grad():
            for i, w in enumerate(self.weights):
                jv, vjp_fn, lam = self._linearize(i)
                parts = vjp_fn(lam(jv(vt)))   # J'(Lambda (J v)); zero for parameters the outputs never use
                total = total + w * torch.cat([p.reshape(-1) for p in parts]).to(v.dtype)
        return total.detach()

    def _apply(self, V: torch.Tensor, batched: bool) -> torch.Tensor:
        out = vmap(self._product)(V) if batched else torch.stack([self._product(v) for v in V])
        self.obj.group.sum(out)  # on a data-parallel objective: this rank's share, summed over ranks
        self.n_hvp += len(V)
        self.obj.tick("hvp", len(V))
        return out

    # ---------------------------------------------------------------- the CurvatureOperator protocol
    @property
    def hvp_block(self) -> int:
        """Rows per vmapped pass: the Hessian operator's (its double-backward graph bounds this one's)."""
        if self._block is None:
            self._block = self.obj.hessian_op.hvp_block
        return self._block

    def release_graph(self) -> None:
        """Free the kept linearizations (rebuilt on the next product)."""
        self._cache.clear()

    def settings(self) -> dict:
        return {"operator": self.kind, "mode": self.mode, "batched": self._batched}

    def describe(self) -> dict:
        return {**self.obj.describe(), "curvature": self.settings()}


class GGNOperator(OutputCurvature):
    """The generalized Gauss-Newton G = sum_b w_b J_b' (d^2 L_b / d f^2) J_b. Positive semi-definite when the loss
    is convex in the outputs (cross-entropy, squared error); any loss_fn(f, y) works (its output Hessian by
    reverse-over-reverse differentiation)."""
    kind = "ggn"

    def _output_map(self, i, out, batch):
        y, loss_fn = batch[1], self.obj.loss_fn

        with torch.enable_grad():  # reverse over reverse: the output Hessian is symmetric, so its vjp is H u
            _, hvp_fn = vjp(grad(lambda f: loss_fn(f, y)), out)
        return lambda u: hvp_fn(u)[0]   # (d^2 L_b / d f^2) u


class FisherOperator(OutputCurvature):
    """The Fisher: empirical (observed labels) or sampled (labels drawn from the model, `mc_samples` per input, from
    `seed`): Lambda_b u = kappa_b (1/M) sum_m g_m (g_m . u) per sample, g_m the output gradient at label draw m."""

    def __init__(self, obj, *, labels: str = "sampled", mc_samples: int = 1, seed: int = 0, mode: str = "auto"):
        check_fisher_loss(obj.loss_fn, labels)
        check_number("mc_samples", mc_samples, lo=1, integer=True)
        self.labels, self.mc_samples, self.seed = labels, int(mc_samples), int(seed)
        self.kind = f"fisher ({labels} labels)"
        super().__init__(obj, mode=mode)
        self.targets = [self._targets(i, b) for i, b in enumerate(self.batches)]  # (M, n, ...) per batch

    def _targets(self, i: int, batch) -> torch.Tensor:
        """The labels the Fisher is taken at: the observed ones (M = 1), or M draws per input from the model's
        predictive distribution at the centre, from generator (seed, batch i) on the CPU (the same draws on any
        device; on a data-parallel objective each rank draws for its own batches, so the draws, unlike every other
        product here, depend on the world size)."""
        y = batch[1]
        if self.labels == "empirical":
            if isinstance(self.obj.loss_fn, nn.CrossEntropyLoss) and not torch.is_floating_point(y) and bool(
                    (y == self.obj.loss_fn.ignore_index).any()):
                raise FlatlensError("the empirical Fisher: labels equal to ignore_index leave no per-sample loss")
            return y[None]
        with torch.no_grad():
            out = self._outputs(batch)(*(self.obj.center[n] for n in self.names)).double().cpu()
        g = generator(self.seed, "fisher-labels", i)
        M = self.mc_samples
        if isinstance(self.obj.loss_fn, nn.CrossEntropyLoss):
            if out.dim() != 2:
                raise FlatlensError(f"sampled-label Fisher of a cross-entropy needs outputs (n, classes); got "
                                    f"{tuple(out.shape)}")
            draws = torch.multinomial(torch.softmax(out, dim=1), M, replacement=True, generator=g).T  # (M, n)
            return draws.to(self.device)
        # squared error: l = ||f - t||^2 is the negative log-likelihood of t ~ N(f, I/2) (up to a constant)
        eps = torch.randn((M,) + tuple(out.shape), generator=g, dtype=torch.float64)
        return (out[None] + math.sqrt(0.5) * eps).to(self.device, self.dtype)

    def _output_map(self, i, out, batch):
        loss_fn = self.obj.loss_fn
        kappa = _per_sample_scale(loss_fn, out)
        T = self.targets[i]
        # the per-sample output gradients at each label draw: dL_b/df = kappa g_i, row by row
        G = torch.stack([grad(lambda f: loss_fn(f, t))(out) for t in T]) / kappa   # (M, n, ...)
        M = len(T)

        def lam(u):
            return kappa / M * sum(g * _rowdot(g, u) for g in G)   # kappa (1/M) sum_m g_m (g_m . u), per sample
        return lam

    def settings(self) -> dict:
        return {**super().settings(), "labels": self.labels, "mc_samples": self.mc_samples if self.labels == "sampled"
                else None, "seed": self.seed if self.labels == "sampled" else None}


def ggn(obj, *, mode: str = "auto") -> GGNOperator:
    """The generalized Gauss-Newton of `obj` as a curvature operator (`GGNOperator`)."""
    return GGNOperator(obj, mode=mode)


def fisher(obj, *, labels: str = "sampled", mc_samples: int = 1, seed: int = 0, mode: str = "auto") -> FisherOperator:
    """The Fisher of `obj` as a curvature operator: labels "sampled" (type 2, Monte Carlo: `mc_samples` label draws
    per input from the model, seeded) or "empirical" (the observed labels)."""
    return FisherOperator(obj, labels=labels, mc_samples=mc_samples, seed=seed, mode=mode)
