"""Sharpness entries of the registry: worst-case and adaptive sharpness, the quantization-noise test, and PAC-Bayes
flatness."""
from __future__ import annotations

from dataclasses import dataclass

from .._util import FlatlensError
from .flatness import EvalSettings
from ..sharpness.results import PacBayes
from .registry import Metric, Row, RowSpec, register_metric, setting, t_row


@dataclass
class SharpnessSettings:
    rho: float = setting(0.5, "L2 radius of the worst-case ball (the adaptive ball uses rho/10; up to 1e4)", "--rho",
                         gt=0, max=1e4)
    steps: int = setting(10, "projected-gradient ascent steps", "--sharpness-steps", min=1)
    batches: int = setting(5, "data batches, each optimized separately (the CI is over batches)",
                           "--sharpness-batches", min=2)


def _sharpness_compute(obj, s: SharpnessSettings, ctx):
    from .. import sharpness
    return sharpness.batch_sharpness(obj, s.rho, batches=s.batches, steps=s.steps, seed=ctx.seed)


def _sharpness_rows(r, s) -> list[Row]:
    pairing = f"batches:{r.batches}:{r.worst_case[0].objective.get('num_params')}"
    return [t_row("worst-case", [w.increase for w in r.worst_case], pairing=pairing),
            t_row("adaptive", [a.increase for a in r.adaptive], pairing=pairing)]


register_metric(Metric(
    name="sharpness", summary="worst-case and adaptive (ASAM) sharpness by projected gradient ascent",
    command="sharpness", role="illustrative", settings=SharpnessSettings, compute=_sharpness_compute,
    rows=_sharpness_rows,
    specs=(RowSpec("worst-case", "worst-case sharpness (L2 ball rho)", "nats"),
           RowSpec("adaptive", "adaptive sharpness (ball rho/10, scaled by |w|)", "nats")),
    brief=lambda r: f"{r.batches} batches",
    cost="about 1 s",
    plans={"full": lambda: SharpnessSettings(steps=8, batches=4), "quick": lambda: SharpnessSettings(steps=4, batches=2)}))


@dataclass
class QnoiseSettings(EvalSettings):
    n_samples: int = setting(100, "noise draws (antithetic pairs: two evaluations each)", "--qnoise-samples",
                             min=2)
    pred_rtol: float = setting(0.05, "the prediction (1/24) tr(S H S) by Hutch++, stopped at this relative 95 % CI "
                               "half-width", "--qnoise-rtol", gt=0, max=1)
    pred_max_hvp: int = setting(500, "at most this many HVPs for the prediction", None, min=12)
    bits: int = setting(7, "bit-width of the LSQ-initial steps (steps=lsq-init)", "--qnoise-bits", min=2, max=8)
    steps: str = setting("lsq-init", "lsq-init: the LSQ-initial per-channel steps s = 2 mean|w| / sqrt(Q_P) of "
                         "every model's own weights (one rule for all); learned: the learned steps of the "
                         "(first) quantized checkpoint, applied to every model compared", "--qnoise-steps",
                         choices=("lsq-init", "learned"))
    estimator: str = setting("antithetic", "antithetic pairs or plain Monte Carlo", "--qnoise-estimator",
                             choices=("antithetic", "plain"))
    steps_source: str = setting("", "sha256 of the checkpoint whose learned steps are applied (set by compare)")


def _qnoise_prepare(ckpts: list, settings: list):
    """--qnoise-steps learned: the learned steps of the first quantized checkpoint, applied to every model (its
    hash enters every model's settings, so the cache tells these measurements apart)."""
    if settings[0].of("qnoise").steps != "learned":
        return None
    q = next((c for c in ckpts if c.quant is not None), None)
    if q is None:
        raise FlatlensError("--qnoise-steps learned needs at least one quantized checkpoint in the comparison")
    for s in settings:
        s.of("qnoise").steps_source = q.sha256
    return dict(q.quant.steps)


def _qnoise_compute(obj, s: QnoiseSettings, ctx):
    from .. import sharpness
    steps, how = sharpness.noise_steps(obj, rule=s.steps, bits=s.bits, ckpt=ctx.ckpt, given=ctx.prepared,
                                       given_source=s.steps_source)
    return sharpness.quantization_noise(obj, steps, n_samples=s.n_samples, pred_rtol=s.pred_rtol,
                                        pred_max_hvp=s.pred_max_hvp, seed=ctx.seed,
                                        estimator=s.estimator, strategy=s.strategy, precision=s.precision,
                                        store=ctx.store, progress=ctx.progress, steps_rule=how)


def _qnoise_rows(r, s) -> list[Row]:
    P = r.objective.get("num_params")
    return [t_row("measured", r.samples, pairing=f"qnoise:{r.estimator}:{len(r.samples)}:{r.seed}:{P}"),
            Row("predicted", r.predicted, r.predicted_stderr, r.predicted_df, r.predicted_ci95,
                "ci95" if r.predicted_ci95 else None, r.prediction_hvp),
            Row("ratio", r.ratio, interval=r.ratio_ci95, interval_kind="ci95" if r.ratio_bounded else None,
                source="measurement (Fieller)")]


register_metric(Metric(
    name="qnoise", summary="the quantization-noise test: E[F(w+D)] - F(w) vs (1/24) sum s^2 H_ii",
    command="sharpness", role="headline", settings=QnoiseSettings, compute=_qnoise_compute, rows=_qnoise_rows,
    specs=(RowSpec("measured", "quantization noise: measured increase", "nats"),
           RowSpec("predicted", "quantization noise: predicted (1/24) Σ s² H_ii", "nats"),
           RowSpec("ratio", "quantization noise: measured / predicted", "", None)),
    brief=lambda r: (f"{r.n_samples} {r.estimator} draws, prediction {r.prediction_hvp} HVPs; steps: "
                     f"{r.steps_rule}"),
    cost="about 4 s", prepare=_qnoise_prepare,
    plans={"full": lambda: QnoiseSettings(n_samples=60, pred_rtol=0.1, bits=7),
           "quick": lambda: QnoiseSettings(n_samples=20, pred_rtol=0.2, bits=7)},
    figures=("fig6_quantization_noise",)))


@dataclass
class PacBayesSettings(EvalSettings):
    quantity: str = setting("error", "what rises: the 0-1 error (Jiang et al.) or the loss", "--pac-quantity",
                            choices=("error", "loss"))
    target: float = setting(0.1, "the stated rise of the expected error (or loss) that defines sigma",
                            "--pac-target", gt=0)
    max_draws: int = setting(64, "antithetic noise pairs per probe at most (tested after 8, 16, 32, ...)",
                             "--pac-draws", min=8)
    max_probes: int = setting(16, "noise scales tried at most (Bonferroni over all their looks)", "--pac-probes",
                              min=2)
    rtol: float = setting(0.05, "stop when the bracket's end gaps are within 1 + rtol", "--pac-rtol", gt=0)
    eps: float = setting(1e-3, "magnitude-aware noise: the floor eps in s^2 w^2 + eps^2", None, min=0)

    def check(self) -> None:
        if self.quantity == "error" and self.target >= 1:
            raise FlatlensError(f"--pac-target {self.target:g}: an error rise must be below 1")


def _pac_compute(obj, s: PacBayesSettings, ctx):
    from .. import sharpness
    from ..perturb import Evaluator
    ev = Evaluator(obj, strategy=s.strategy, precision=s.precision)   # one calibration for both searches
    kw = dict(quantity=s.quantity, target=s.target, max_draws=s.max_draws, max_probes=s.max_probes, rtol=s.rtol,
              eps=s.eps, seed=ctx.seed, evaluator=ev)
    return PacBayes(plain=sharpness.pac_bayes_sigma(obj, kind="plain", **kw),
                    magnitude=sharpness.pac_bayes_sigma(obj, kind="magnitude", **kw))


def _pac_rows(r, s) -> list[Row]:
    """sigma and sigma' with their brackets (>= 95 % CIs over the noise draws, no standard error: not tested by
    compare), and Jiang et al.'s measures 1/sigma^2, 1/sigma'^2 (lower is flatter)."""
    out = []
    for suffix, p in (("", r.plain), ("-mag", r.magnitude)):
        out.append(Row(f"sigma{suffix}", p.sigma, interval=tuple(p.ci95), interval_kind="ci95", n=p.n_draws))
        out.append(Row(f"flatness{suffix}", p.flatness, interval=tuple(p.flatness_ci95), interval_kind="ci95",
                       n=p.n_draws))
    return out


register_metric(Metric(
    name="pac-bayes", summary="PAC-Bayes flatness: the largest Gaussian noise scale (plain sigma, magnitude-aware "
                              "sigma') at which the expected error rises by a stated amount (Jiang et al. 2019)",
    command="sharpness", role="extra", settings=PacBayesSettings, compute=_pac_compute, rows=_pac_rows,
    specs=(RowSpec("sigma-mag", "PAC-Bayes σ' (magnitude-aware)", "", None),
           RowSpec("sigma", "PAC-Bayes σ (plain)", "", None),
           RowSpec("flatness-mag", "PAC-Bayes 1/σ'² (magnitude-aware flatness)", ""),
           RowSpec("flatness", "PAC-Bayes 1/σ² (flatness)", "")),
    brief=lambda r: (f"{r.plain.n_evaluations + r.magnitude.n_evaluations} evaluations, {len(r.plain.probes)} + "
                     f"{len(r.magnitude.probes)} probes; rise {r.plain.target:g} of the {r.plain.quantity}"),
    cost="about 30 s (6 s on 256 samples, idle)", axis="data"))
