"""The batched evaluator, the hot path: F (and accuracy) at many points w + delta_i, over resident data.

The evaluator keeps one copy of the objective's model (never a copy per point; the objective's own model and
the caller's are never changed) and talks to the Objective through its public interface only: its centre,
its resident data (`obj.data`; `batches_of` re-cuts it: the resident data owns that rule), `module_loss` and its
classification rule. Strategies:
  loop  per point, write w + delta into the evaluator's copy in place and run it under inference mode, over the
        resident data;
  vmap  torch.func.vmap of functional_call over a chunk of stacked points, chunk sized to a memory budget;
  compiled  the loop through torch.compile of the evaluator's copy (on CUDA mode "reduce-overhead": the forward
        replays as CUDA graphs; the parameters are graph inputs, so writing a point into them needs no
        recompilation). Its first call pays the compilation (recorded as `compile_seconds`).
`auto` calibrates per model shape and machine (remembered for the process and recorded on disk, below) on the
centre itself, so no point is wasted: it times the loop with the contiguous and the channels_last memory
format and with the resident batches re-cut to 128 and 64 samples, and on CUDA only vmap and compiled too (on
a CPU, vmap ran the digits CNN slower than the loop, and compiled ran faster but only paid back its compilation
after hundreds to thousands of points: benchmarks/results/perturb_throughput_cpu.json; ask for it with
strategy="compiled"). Every layout but the objective's own (the contiguous loop over its resident batches) is
picked only if it reproduces the centre loss to 1e-5 relative (re-cut batches need a mean-reduced loss with
BatchNorm in eval mode). Points whose delta is exactly zero take the centre loss.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time

import torch
from torch.func import vmap

from .._util import FlatlensError, synchronize
from ..objective import Objective
from ..parallel import all_sum
from .calibration import Layout, PickStore, loop_candidates

STRATEGIES = ("auto", "loop", "vmap", "compiled")
PRECISIONS = ("fp32", "tf32", "bf16")


class Evaluator:
    def __init__(self, obj: Objective, *, strategy: str = "auto", precision: str = "fp32",
                 memory_budget: int = 1 << 30, channels_last: bool | None = None, batch_size: int | None = None):
        if strategy not in STRATEGIES:
            raise FlatlensError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if precision not in PRECISIONS:
            raise FlatlensError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.obj = obj
        self.requested = strategy
        if obj.group.enabled:
            # every rank evaluates its data shard and the losses are summed over ranks: all ranks must take the
            # same path, so no timing-based pick (and vmap's chunking stays out of the collectives)
            strategy = "loop"
        self.strategy = None if strategy == "auto" else strategy
        self.precision = precision
        self.precision_error = 0.0 if precision == "fp32" else None
        self.memory_budget = int(memory_budget)
        self.calibration: dict = {}
        self.model = copy.deepcopy(obj.model)  # the one copy that points are written into
        self._params = dict(self.model.named_parameters())
        self._accuracy = obj.is_classification  # the Objective's rule decides whether accuracy exists
        self._images = (not obj.custom_loss) and all(isinstance(b[0], torch.Tensor) and b[0].dim() == 4
                                                 and b[0].is_floating_point() for b in obj.data.batches)
        self._cl_request = channels_last
        self.channels_last = False
        self.batch_size = None
        self._batches, self._weights = obj.data.batches_of(None)
        if strategy != "auto":
            self._configure(bool(channels_last) and self._images, batch_size)
        self._chunk = None
        self._compiled = None  # torch.compile of self.model, built on first use
        self.compile_seconds = None
        self.n_evals = 0

    @property
    def reports_accuracy(self) -> bool:
        """Whether evaluations return accuracies (the Objective's classification rule)."""
        return self._accuracy

    # ----------------------------------------------------------------- layout of model and data
    def _use(self, layout: Layout) -> None:
        self._configure(layout.channels_last and self._images, layout.batch_size)

    def _configure(self, channels_last: bool, batch_size: int | None) -> None:
        obj = self.obj
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last or self.channels_last:
            self.model.to(memory_format=fmt)
        batches, weights = obj.data.batches_of(batch_size)
        if channels_last:
            batches = [(b[0].contiguous(memory_format=fmt), b[1]) for b in batches]
        self._batches, self._weights = batches, weights
        self.channels_last, self.batch_size = channels_last, batch_size

    # ----------------------------------------------------------------- sizing
    def _activation_bytes(self) -> int:
        """Bytes of all module outputs for the largest batch (forward hooks), the per-point vmap cost."""
        total = [0]

        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                total[0] += out.numel() * out.element_size()

        hs = [m.register_forward_hook(hook) for m in self.model.modules() if not list(m.children())]
        try:
            with torch.inference_mode():
                big = max(range(len(self.obj.data.batches)), key=lambda i: self.obj.data.sample_counts[i])
                self.obj.module_loss(self.model, self.obj.data.batches[big])
        finally:
            for h in hs:
                h.remove()
        return total[0]

    @property
    def chunk(self) -> int:
        """vmap chunk size for the memory budget, measured on first use (a forward pass with hooks), so the
        loop strategy never pays for it."""
        if self._chunk is None:
            self._chunk = self._chunk_size()
        return self._chunk

    def _chunk_size(self) -> int:
        per_point = 3 * self.obj.num_params * self.obj.center[self.obj.names[0]].element_size()
        per_point += 2 * self._activation_bytes()
        budget = self.memory_budget
        if self.obj.device.type == "cuda":  # on a GPU, half of what is free now, if that is more
            budget = max(budget, torch.cuda.mem_get_info(self.obj.device)[0] // 2)
        return int(max(1, min(256, budget // max(1, per_point))))

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
    def _compiled_model(self):
        """torch.compile of the evaluator's copy; the first forward through it compiles (timed by the caller).
        Static shapes: one graph per batch shape (at most two: full batches and the last one)."""
        if self._compiled is None:
            mode = "reduce-overhead" if self.obj.device.type == "cuda" else None
            self._compiled = torch.compile(self.model, mode=mode, dynamic=False)
        return self._compiled

    def _forward_all(self, precision=None, compiled=None):
        """(F, correct count) of the evaluator's model as it stands, over the evaluator's batches, as float64
        tensors on the objective's device: summed there, so a point costs no host synchronization (the caller
        reads a whole chunk at once); through the compiled copy when `compiled` (default: when the strategy is
        "compiled")."""
        obj = self.obj
        if compiled is None:
            compiled = self.strategy == "compiled"
        model = self._compiled_model() if compiled else self.model
        compiling = compiled and self.compile_seconds is None  # the first call compiles: time it once
        t0 = time.perf_counter()
        with torch.inference_mode(), self._precision(precision):
            tot = torch.zeros((), dtype=torch.float64, device=obj.device)
            cor = torch.zeros((), dtype=torch.float64, device=obj.device)
            for w, b in zip(self._weights, self._batches):
                loss, _, correct = obj.module_loss(model, b)
                if self._accuracy:
                    cor += correct
                tot += w * torch.as_tensor(loss).reshape(()).double()  # F = sum_b w_b loss_b, in float64
        if compiling:
            synchronize(obj.device)
            self.compile_seconds = time.perf_counter() - t0
        return tot, cor

    def _loop(self, deltas: torch.Tensor, precision=None):
        obj = self.obj
        m = deltas.shape[0]
        losses = torch.empty(m, dtype=torch.float64, device=obj.device)
        correct = torch.zeros(m, dtype=torch.float64, device=obj.device)
        views = obj.unflatten(deltas)
        try:
            for i in range(m):
                with torch.no_grad():
                    for n in obj.names:
                        torch.add(obj.center[n], views[n][i], out=self._params[n].data)
                losses[i], correct[i] = self._forward_all(precision)
        finally:
            with torch.no_grad():
                for n in obj.names:
                    self._params[n].data.copy_(obj.center[n])
        both = torch.stack([losses, correct])
        if obj.group.enabled:  # each rank's share of F (and of the correct count): summed over ranks, on the
            # objective's device (NCCL reduces device tensors only)
            both = all_sum(both)
        both = both.cpu()  # the one host synchronization of the chunk
        return both[0], both[1]

    def _vmap(self, deltas: torch.Tensor, precision=None):
        obj = self.obj
        if obj.custom_loss:
            raise FlatlensError("the vmap strategy needs loss_fn(output, target); use strategy='loop'")

        def point(delta_flat):  # F and the correct count at w + delta, through the Objective's functional loss
            d = obj.unflatten(delta_flat)
            tensors = {n: obj.center[n] + d[n] for n in obj.names}
            tot = 0.0
            cor = torch.zeros((), dtype=torch.float64, device=obj.device)
            for w, b in zip(self._weights, self._batches):
                loss, _, correct = obj.batch_loss(tensors, b)
                tot = tot + w * loss.double()
                if self._accuracy:
                    cor = cor + correct.double()
            return tot, cor

        losses, correct = [], []
        with torch.no_grad(), self._precision(precision):
            for s in range(0, deltas.shape[0], self.chunk):
                lo, co = vmap(point)(deltas[s:s + self.chunk])
                losses.append(lo.double().cpu())
                correct.append(co.double().cpu())
        return torch.cat(losses), torch.cat(correct)

    # ----------------------------------------------------------------- calibration
    def _signature(self):
        o = self.obj
        return (type(o.model).__name__, o.num_params, str(o.device), str(o.dtype), self.precision, o.bn,
                tuple((tuple(b[0].shape) if isinstance(b, (tuple, list)) and b and isinstance(b[0], torch.Tensor)
                       else type(b).__name__) for b in o.data.batches))

    def _time_prefix(self, n_samples: int | None = None, compiled: bool = False) -> float:
        """Seconds per sample of the centre's forward over the first ~n_samples (None: all) of the current
        layout, eager or compiled (one warm-up, which compiles, then the faster of two timed runs)."""
        keep, total = [], 0
        for w, b in zip(self._weights, self._batches):
            if n_samples is not None and total and total + len(b[1]) > n_samples:
                break
            keep.append((w, b))
            total += len(b[1])
        full = self._batches, self._weights
        self._weights, self._batches = [w for w, _ in keep], [b for _, b in keep]
        try:
            self._forward_all(compiled=compiled)
            best = math.inf
            for _ in range(2):  # under CUDA graphs the first of these records, the second replays
                synchronize(self.obj.device)
                t0 = time.perf_counter()
                self._forward_all(compiled=compiled)
                synchronize(self.obj.device)
                best = min(best, time.perf_counter() - t0)
        finally:
            self._batches, self._weights = full
        return best / total

    def _reproduces_centre_loss(self, strategy: str) -> bool:
        """Whether `strategy` in the current layout gives F at the centre to 1e-5 relative (one evaluation)."""
        obj = self.obj
        if strategy == "vmap":
            f = float(self._vmap(torch.zeros(1, obj.num_params, device=obj.device, dtype=obj.dtype))[0][0])
        else:
            f = float(self._forward_all(compiled=strategy == "compiled")[0])
        return abs(f - obj.loss()) <= 1e-5 * max(1.0, abs(obj.loss()))

    def _calibrate(self) -> None:
        obj = self.obj
        sig = self._signature()
        pick = PickStore.get(sig)
        if pick is not None:
            layout = Layout.of_pick(pick)
            self._use(layout)
            # the key names shapes, not the loss: a recorded layout is used only if it reproduces this F too
            if layout.is_objectives_own or self._reproduces_centre_loss(layout.strategy):
                self.calibration = {**pick, "reused": True}
                self.strategy = layout.strategy
                return
            self._use(Layout())
        timings: dict[Layout, float] = {}
        if obj.custom_loss:
            timings[Layout()] = 0.0
        else:
            biggest = max(len(b[1]) for b in obj.data.batches)
            prefix = min(obj.n_samples, max(biggest, 128))
            for layout in loop_candidates(biggest, self._images, self._cl_request):
                self._use(layout)
                timings[layout] = self._time_prefix(prefix) * obj.n_samples
        if obj.device.type == "cuda" and not obj.custom_loss:
            self._use(Layout())
            zeros = torch.zeros(min(self.chunk, 8), obj.num_params, device=obj.device, dtype=obj.dtype)
            try:
                self._vmap(zeros)
                synchronize(obj.device)
                t0 = time.perf_counter()
                self._vmap(zeros)
                synchronize(obj.device)
                timings[Layout("vmap")] = (time.perf_counter() - t0) / len(zeros)
            except Exception as e:  # a model vmap cannot trace (data-dependent control flow, ...)
                self.calibration["vmap_error"] = f"{type(e).__name__}: {str(e)[:100]}"
        if obj.device.type == "cuda":
            best_loop = min((k for k in timings if k.strategy == "loop"), key=timings.get)
            compiled = Layout("compiled", best_loop.channels_last, best_loop.batch_size)
            self._use(compiled)
            try:  # over all the data, so every batch shape is compiled in the warm-up (compile_seconds)
                timings[compiled] = self._time_prefix(None, compiled=True) * obj.n_samples
            except Exception as e:  # no compiler for this model or device: the loop stays
                self.calibration["compile_error"] = f"{type(e).__name__}: {str(e)[:100]}"
        chosen = None
        for layout in sorted(timings, key=timings.get):
            if math.isinf(timings[layout]):
                break
            self._use(layout)
            # every layout but the objective's own (re-cut batches: mean loss, BN in eval mode; channels_last;
            # vmap; compiled code) must reproduce F
            if layout.is_objectives_own or self._reproduces_centre_loss(layout.strategy):
                chosen = layout
                break
            timings[layout] = math.inf
        if chosen is None:  # nothing else reproduced F (or only unchecked layouts were asked for)
            chosen = Layout()
            self._use(chosen)
        pick = {"picked": chosen.strategy, "channels_last": chosen.channels_last, "batch_size": chosen.batch_size,
                "seconds_per_point": {k.key: v for k, v in timings.items()}, "vmap_chunk": self._chunk,
                "compile_seconds": self.compile_seconds}
        PickStore.put(sig, pick)
        self.calibration = dict(pick)
        self.strategy = chosen.strategy

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
        zero = ((deltas.amax(dim=1) == 0) & (deltas.amin(dim=1) == 0)).cpu()  # two plain reductions: fastest
        if zero.any():
            losses[zero] = obj.loss()
            correct[zero] = (obj.accuracy() or 0.0) * obj.n_samples if self._accuracy else 0.0
        todo = (~zero).nonzero().flatten()
        if len(todo):
            sub = deltas if len(todo) == m else deltas[todo.to(deltas.device)]  # no copy unless needed
            if self.strategy is None:
                self._calibrate()
            fn = self._vmap if self.strategy == "vmap" else self._loop
            lo, co = fn(sub)
            if self.precision != "fp32" and self.precision_error is None:
                ref, _ = fn(sub[:4], precision="fp32")
                self.precision_error = float((lo[:4] - ref).abs().max())
            losses[todo] = lo
            correct[todo] = co
            self.n_evals += len(todo)
            obj.tick("eval", len(todo))
        acc = (correct / obj.n_samples) if self._accuracy else None
        return losses, acc

    def describe(self) -> dict:
        return {"strategy": self.strategy or self.requested, "requested": self.requested,
                "precision": self.precision, "precision_max_abs_error": self.precision_error,
                "vmap_chunk": self._chunk, "channels_last": self.channels_last, "batch_size": self.batch_size,
                "compile_seconds": self.compile_seconds, "calibration": self.calibration}
