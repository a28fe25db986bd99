"""The batched evaluator, the hot path: F (and accuracy) at many points w + delta_i, over resident data.

Two strategies, both without a model copy per point and without touching the caller's model:
  loop  per point, write w + delta into the objective's private copy in place and run it under
        inference mode (the fastest on CPU for small nets, see benchmarks/perturb_throughput.py);
  vmap  torch.func.vmap of functional_call over a chunk of stacked points, chunk sized to a memory budget.
`auto` times both on a few points at first use and keeps the faster (recorded as `strategy`).
Points whose delta is exactly zero take the centre value computed once by the objective.
"""
from __future__ import annotations

import contextlib
import time

import torch
from torch.func import functional_call, vmap

from .._util import FlatlensError
from ..objective import Objective

STRATEGIES = ("auto", "loop", "vmap")
_PICKS: dict = {}  # calibration results per (model, size, device, dtype, precision, batch shapes)


def _wide(out: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs go to fp32 before the loss; fp32 / fp64 stay as they are."""
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
PRECISIONS = ("fp32", "tf32", "bf16")


class Evaluator:
    def __init__(self, obj: Objective, *, strategy: str = "auto", precision: str = "fp32",
                 memory_budget: int = 1 << 30, channels_last: bool | None = None):
        if strategy not in STRATEGIES:
            raise FlatlensError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if precision not in PRECISIONS:
            raise FlatlensError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.obj = obj
        self.requested = strategy
        self.strategy = None if strategy == "auto" else strategy
        self.precision = precision
        self.precision_error = 0.0 if precision == "fp32" else None
        self.memory_budget = int(memory_budget)
        self.calibration: dict = {}
        self._params = dict(obj.model.named_parameters())
        self._accuracy = not obj._custom
        self._batches = obj.batches
        if channels_last is None:  # measured: helps conv nets on CUDA, not these small CPU nets
            channels_last = obj.device.type == "cuda"
        self.channels_last = bool(channels_last) and any(
            isinstance(b[0], torch.Tensor) and b[0].dim() == 4 for b in obj.batches) and not obj._custom
        if self.channels_last:
            obj.model.to(memory_format=torch.channels_last)
            self._batches = [(b[0].contiguous(memory_format=torch.channels_last), b[1]) for b in obj.batches]
        self.chunk = self._chunk_size()
        self.n_evals = 0

    # ----------------------------------------------------------------- sizing
    def _activation_bytes(self) -> int:
        """Bytes of all module outputs for the largest batch (forward hooks), the per-point vmap cost."""
        total = [0]

        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                total[0] += out.numel() * out.element_size()

        hs = [m.register_forward_hook(hook) for m in self.obj.model.modules() if not list(m.children())]
        try:
            with torch.inference_mode():
                big = max(range(len(self.obj.batches)), key=lambda i: self.obj.sample_counts[i])
                self.obj._batch_loss(self.obj.center, self.obj.batches[big])
        finally:
            for h in hs:
                h.remove()
        return total[0]

    def _chunk_size(self) -> int:
        per_point = 3 * self.obj.num_params * self.obj.center[self.obj.names[0]].element_size()
        per_point += 2 * self._activation_bytes()
        return int(max(1, min(256, self.memory_budget // max(1, per_point))))

    # ----------------------------------------------------------------- precision
    @contextlib.contextmanager
    def _precision(self, precision=None):
        p = precision or self.precision
        if p == "bf16":
            with torch.autocast(self.obj.device.type, dtype=torch.bfloat16):
                yield
        elif p == "tf32":
            old = torch.get_float32_matmul_precision()
            old_cudnn = torch.backends.cudnn.allow_tf32
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
            try:
                yield
            finally:
                torch.set_float32_matmul_precision(old)
                torch.backends.cudnn.allow_tf32 = old_cudnn
        else:
            yield

    # ----------------------------------------------------------------- strategies
    def _loop(self, deltas: torch.Tensor, precision=None):
        obj = self.obj
        m = deltas.shape[0]
        losses = torch.empty(m, dtype=torch.float64)
        correct = torch.zeros(m, dtype=torch.float64)
        views = obj.unflatten(deltas)
        try:
            for i in range(m):
                with torch.no_grad():
                    for n in obj.names:
                        torch.add(obj.center[n], views[n][i], out=self._params[n].data)
                with torch.inference_mode(), self._precision(precision):
                    tot, cor = 0.0, 0.0
                    for w, b in zip(obj._weights, self._batches):
                        if obj._custom:
                            loss, _ = obj.loss_fn.fn(obj.model, b)
                        else:
                            out = obj.model(b[0])
                            loss = obj.loss_fn(_wide(out), b[1])
                            cor += float((out.argmax(1) == b[1]).sum()) if self._accuracy and out.dim() == 2 else 0.0
                        tot += w * float(loss)
                losses[i] = tot
                correct[i] = cor
        finally:
            with torch.no_grad():
                for n in obj.names:
                    self._params[n].data.copy_(obj.center[n])
        return losses, correct

    def _vmap(self, deltas: torch.Tensor, precision=None):
        obj = self.obj
        model = obj.model

        def point(delta_flat):
            d = obj.unflatten(delta_flat)
            tensors = {n: obj.center[n] + d[n] for n in obj.names}
            tot = 0.0
            cor = torch.zeros((), dtype=torch.float64, device=obj.device)
            for w, b in zip(obj._weights, self._batches):
                out = functional_call(model, tensors, (b[0],))
                tot = tot + w * obj.loss_fn(_wide(out), b[1]).double()
                if self._accuracy and out.dim() == 2:
                    cor = cor + (out.argmax(1) == b[1]).sum().double()
            return tot, cor

        if obj._custom:
            raise FlatlensError("the vmap strategy needs loss_fn(output, target); use strategy='loop'")
        losses, correct = [], []
        with torch.no_grad(), self._precision(precision):
            for s in range(0, deltas.shape[0], self.chunk):
                lo, co = vmap(point)(deltas[s:s + self.chunk])
                losses.append(lo.double().cpu())
                correct.append(co.double().cpu())
        return torch.cat(losses), torch.cat(correct)

    def _signature(self):
        o = self.obj
        return (type(o.model).__name__, o.num_params, str(o.device), str(o.dtype), self.precision,
                tuple((tuple(b[0].shape) if isinstance(b[0], torch.Tensor) else None) for b in o.batches))

    def _timed(self, fn, deltas):
        if self.obj.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(deltas)
        if self.obj.device.type == "cuda":
            torch.cuda.synchronize()
        return out, (time.perf_counter() - t0) / len(deltas)

    def _calibrate(self, deltas: torch.Tensor):
        """Pick loop or vmap by timing both on the first points (kept: the winner's values are returned, the
        loser's points are redone by the winner). The pick is remembered per model shape and device."""
        if self.obj._custom:
            self.calibration = {"picked": "loop", "reason": "custom BatchLoss"}
            return "loop", None
        sig = self._signature()
        if sig in _PICKS:
            self.calibration = {**_PICKS[sig], "reused": True}
            return _PICKS[sig]["picked"], None
        k = min(max(2, min(self.chunk, 4)), len(deltas))
        timings, outs = {}, {}
        for name, fn in (("loop", self._loop), ("vmap", self._vmap)):
            try:
                fn(deltas[:1])  # warm-up
                outs[name], timings[name] = self._timed(fn, deltas[:k])
            except Exception as e:  # a model vmap cannot trace (data-dependent control flow, ...)
                timings[name] = float("inf")
                self.calibration[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:100]}"
        picked = min(timings, key=timings.get)
        self.calibration.update({"seconds_per_point": timings, "picked": picked, "probe_points": k,
                                 "vmap_chunk": self.chunk})
        _PICKS[sig] = dict(self.calibration)
        return picked, (k, outs.get(picked))

    # ----------------------------------------------------------------- public
    def __call__(self, deltas: torch.Tensor):
        """F and accuracy at w + deltas[i]; deltas (m, P) on the objective's device.
        Returns (losses float64 (m,), accuracies (m,) or None)."""
        obj = self.obj
        if deltas.dim() != 2 or deltas.shape[1] != obj.num_params:
            raise FlatlensError(f"perturbations must have shape (m, {obj.num_params}); got {tuple(deltas.shape)}")
        m = deltas.shape[0]
        losses = torch.empty(m, dtype=torch.float64)
        correct = torch.empty(m, dtype=torch.float64)
        zero = (deltas == 0).all(dim=1).cpu()
        _, acc0 = obj.loss_and_accuracy() if self._accuracy else (None, None)
        losses[zero] = obj.loss()
        correct[zero] = (acc0 or 0.0) * obj.n_samples
        todo = (~zero).nonzero().flatten()
        if len(todo):
            sub = deltas[todo.to(deltas.device)]
            done = None
            if self.strategy is None:
                self.strategy, done = self._calibrate(sub)
            fn = self._loop if self.strategy == "loop" else self._vmap
            if done is not None and done[1] is not None:
                k, (lo0, co0) = done
                if k < len(sub):
                    lo1, co1 = fn(sub[k:])
                    lo, co = torch.cat([lo0, lo1]), torch.cat([co0, co1])
                else:
                    lo, co = lo0, co0
            else:
                lo, co = fn(sub)
            if self.precision != "fp32" and self.precision_error is None:
                ref, _ = fn(sub[:4], precision="fp32")
                self.precision_error = float((lo[:4] - ref).abs().max())
            losses[todo] = lo
            correct[todo] = co
            self.n_evals += len(todo)
        acc = (correct / obj.n_samples) if self._accuracy else None
        return losses, acc

    def describe(self) -> dict:
        return {"strategy": self.strategy or self.requested, "requested": self.requested,
                "precision": self.precision, "precision_max_abs_error": self.precision_error,
                "vmap_chunk": self.chunk, "channels_last": self.channels_last, "calibration": self.calibration}
