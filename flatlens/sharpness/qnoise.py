"""The quantization-noise test: the paper's analytical argument made measurable.

With D_i ~ U(-s_i/2, s_i/2) independent, E[D_i^2] = s_i^2 / 12, and the second-order expansion gives
    E_D[F(w + D)] - F(w)  ~  (1/24) sum_i s_i^2 H_ii          (exact for a quadratic at any point).
measured:  the mean over n_samples draws of the antithetic pair
               (F(w + D) + F(w - D)) / 2 - F(w)
           (D and -D have the same law, so its mean is E[F(w + D)] - F(w); the first-order term g.D cancels
           exactly within each pair, so only curvature noise is left). estimator="plain" uses F(w + D) - F(w)
           at the same number of evaluations (2 n_samples draws). t-interval with n - 1 df.
predicted: (1/24) sum_i s_i^2 H_ii = (1/24) tr(S H S), S = diag(s), by Hutch++ on the operator S H S
           (hessian.ScaledHessian), stopped when its 95 % CI half-width is within `pred_rtol` (t-interval on
           the residual probes' df). On the digits CNN this needs far fewer HVPs than Hutchinson probes of
           the diagonal for the same CI, since Hutch++ removes the top of S H S's spectrum exactly.
ratio:     measured / predicted with Fieller's interval (the two are independent estimates).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._util import FlatlensError, derive_seed
from .. import stats
from ..hessian.scaled import ScaledHessian
from ..hessian.trace import trace
from ..perturb import Evaluator, max_points, run_chunks, tensor_digest
from .._util import timer
from ..objective import Objective
from .results import QuantNoiseResult

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint


def step_vector(obj: Objective, steps: dict) -> torch.Tensor:
    """Flat vector of per-entry step sizes s_i (0 where a parameter has no step), broadcast per channel."""
    unknown = set(steps) - set(obj.names)
    if unknown:
        raise FlatlensError(f"steps name parameter(s) not in the objective: {', '.join(sorted(unknown)[:3])}")
    if not steps:
        raise FlatlensError("steps is empty: no parameter gets noise")
    parts = []
    for n, shape in zip(obj.names, obj.shapes):
        if n not in steps:
            parts.append(torch.zeros(shape.numel(), device=obj.device, dtype=obj.dtype))
            continue
        s = torch.as_tensor(steps[n], dtype=obj.dtype).to(obj.device)
        if s.numel() == 1:
            s = s.reshape(()).expand(shape)
        elif s.numel() == shape[0]:
            s = s.reshape((shape[0],) + (1,) * (len(shape) - 1)).expand(shape)
        elif tuple(s.shape) != tuple(shape):
            raise FlatlensError(f"step for {n!r} has {s.numel()} entries; expected 1, {shape[0]} or {shape.numel()}")
        if torch.any(s < 0):
            raise FlatlensError(f"step for {n!r} is negative")
        parts.append(s.reshape(-1))
    return torch.cat(parts)


ESTIMATORS = ("antithetic", "plain")


def quantization_noise(obj: Objective, steps: dict, *, n_samples: int = 100, seed: int = 0,
                       pred_rtol: float = 0.05, pred_max_hvp: int = 500, estimator: str = "antithetic", strategy: str = "auto", precision: str = "fp32",
                       evaluator: Evaluator | None = None, store: str | None = None, progress: bool = False,
                       samples_per_chunk: int = 20, steps_rule: str = "given") -> QuantNoiseResult:
    """Measured E[F(w + D)] - F(w) under D_i ~ U(-s_i/2, s_i/2) against (1/24) sum_i s_i^2 H_ii.

    n_samples: noise draws (antithetic pairs cost two evaluations each; "plain" spends the same 2 n_samples
    evaluations on single draws). steps: parameter name -> step (scalar, per output channel, or full shape).
    """
    if estimator not in ESTIMATORS:
        raise FlatlensError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")
    if n_samples < 2:
        raise FlatlensError("n_samples must be >= 2 for a confidence interval")
    if not (0 < pred_rtol <= 1) or pred_max_hvp < 12:
        raise FlatlensError("pred_rtol must lie in (0, 1] and pred_max_hvp be >= 12")
    elapsed = timer()
    S = step_vector(obj, steps)
    ev = evaluator if evaluator is not None else Evaluator(obj, strategy=strategy, precision=precision)
    f0 = obj.loss()
    n_draws = n_samples if estimator == "antithetic" else 2 * n_samples
    k = max(1, min(samples_per_chunk, max_points(obj) // 2))
    n_chunks = -(-n_draws // k)

    def compute(i):
        idx = range(i * k, min(n_draws, (i + 1) * k))
        D = torch.empty(len(idx), obj.num_params, device=obj.device, dtype=obj.dtype)
        for row, j in enumerate(idx):
            g = torch.Generator(device=obj.device)
            g.manual_seed(derive_seed(seed, "qnoise", j))
            D[row] = (torch.rand(obj.num_params, generator=g, device=obj.device, dtype=obj.dtype) - 0.5) * S
        if estimator == "plain":
            return {"inc": ev(D)[0] - f0}
        lo, _ = ev(torch.cat([D, -D]))
        return {"inc": 0.5 * (lo[:len(idx)] + lo[len(idx):]) - f0}  # (F(w+D) + F(w-D)) / 2 - F(w)

    parts = run_chunks(n_chunks, compute, store=store, progress=progress,
                       evaluator=ev, desc="qnoise",
                       shapes=lambda i: {"inc": (min(n_draws, (i + 1) * k) - i * k,)},
                       args={"m": "qnoise", "n": n_draws, "estimator": estimator, "seed": seed,
                             "S": tensor_digest(S), "obj": obj.identity(), "k": k})
    inc = torch.cat([p["inc"] for p in parts]).numpy()
    meas = stats.t_interval(inc)
    tr = trace(ScaledHessian(obj, S), rtol=pred_rtol, max_hvp=pred_max_hvp, seed=seed, per_layer=False)
    pred = stats.estimate(tr.value / 24.0, tr.stderr / 24.0, max(tr.n_probes - 1, 0), tr.n_probes)
    ratio = stats.fieller(meas, pred)
    return QuantNoiseResult(measured=meas.value, measured_stderr=meas.stderr, measured_ci95=meas.ci95,
                            predicted=pred.value, predicted_stderr=pred.stderr, predicted_ci95=pred.ci95,
                            predicted_df=pred.df, ratio=ratio.value, ratio_ci95=ratio.ci95,
                            ratio_bounded=ratio.bounded, n_samples=n_samples, n_evaluations=2 * n_samples,
                            estimator=estimator, prediction_hvp=tr.n_hvp, prediction_converged=tr.converged,
                            seed=seed, n_noisy_params=int((S > 0).sum()), steps_rule=steps_rule,
                            steps_sha256=tensor_digest(S), samples=inc.tolist(), center_loss=f0,
                            evaluator=ev.describe(), seconds=elapsed(), objective=obj.describe())


def noise_steps(obj: Objective, *, rule: str, bits: int, ckpt: Checkpoint | None = None, given: dict | None = None,
                given_source: str = ""):
    """(steps, description) for the quantization-noise test, by one rule for every model compared:
    `given` steps (the learned steps of one checkpoint, applied to every model); rule "learned": the checkpoint's
    own learned steps; rule "lsq-init": the LSQ-initial per-channel step s = 2 mean|w| / sqrt(Q_P) at `bits` of
    the measured weights, on every conv / linear layer but the classifier."""
    from ..quant import default_layers, init_step
    if given is not None:
        return given, f"learned {bits if ckpt is None or ckpt.quant is None else ckpt.quant.bits}-bit steps of " \
                      f"checkpoint {given_source[:12] or '(given)'} applied to every model"
    if rule == "learned":
        if ckpt is None or ckpt.quant is None:
            raise FlatlensError("--qnoise-steps learned needs a quantized checkpoint's steps; this one is full "
                                "precision (use lsq-init, or compare it with a quantized one)")
        return dict(ckpt.quant.steps), f"its own learned {ckpt.quant.bits}-bit steps"
    layers = default_layers(obj.model)
    steps = {f"{n}.weight": init_step(obj.center[f"{n}.weight"], bits, True) for n in layers
             if f"{n}.weight" in obj.center}
    if not steps:
        raise FlatlensError("the quantization-noise test found no conv/linear layer (but the classifier) to perturb")
    return steps, f"LSQ-initial {bits}-bit per-channel steps of the measured weights (all conv/linear but the last)"
