"""`flatlens reproduce`: the paper's question, end to end, on rotated digits.

Trains full precision and 8/7/4/2-bit QAT models (delayed start at 40 % of training, as the paper's
2000 of 5000) for 5 seeds and two test domains, plus an EoQ ensemble of the paper's bit-width; measures the
registry's *headline* metrics on every seed and its *illustrative* ones on one seed, on the train split (source
domains) and the test split (held-out domain); runs the seed-level tests (`analysis`) and writes results.json,
report.md and the figures. Every stage is resumable: finished checkpoints are kept, an interrupted training
resumes from its partial state, measurements come from the cache.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch

from . import metrics as M
from ._util import FlatlensError, atomic_write_text
from .cache import ResultCache
from .checkpoint import load_checkpoint
from .measure import MetricRecord, versions
from .pipeline import Target, measure_all
from .quant.convert import QuantErrorResult
from .results import Result, register

CONFIGS = (("fp32", None), ("q8", 8), ("q7", 7), ("q4", 4), ("q2", 2))
SPLITS = ("train", "test")


def plan_settings(plan: str, samples: int) -> M.Settings:
    """The measurement settings of the plan `plan` ("full": sized so the main job's models are measured in
    minutes on 2 CPU cores; "quick": the smoke test): each registered entry's own, on `samples` samples per split
    (entries in the role "extra" are not measured)."""
    return M.Settings(common=M.Common(samples=samples),
                      metrics={n: m.plan_settings(plan) for n, m in M.REGISTRY.items() if m.role != "extra"})


def default_settings() -> M.Settings:
    return plan_settings("full", 256)


@dataclass
class Plan:
    domains: tuple[str, ...] = ("75", "0")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    configs: tuple[tuple[str, int | None], ...] = CONFIGS
    paper_bits: int = 7                    # the paper's bit-width: claims test it against full precision
    steps: int = 400
    quant_start: int = 160
    eval_every: int = 50
    width: int = 16
    lr: float = 1e-3
    illustrative_seeds: tuple[int, ...] = (0,)   # seeds on which the registry's illustrative metrics run
    settings: M.Settings = field(default_factory=default_settings)

    def label(self, config: str) -> str:
        bits = dict(self.configs)[config]
        return "full precision" if bits is None else f"{bits} bit"

    def bits(self, config: str) -> int:
        return dict(self.configs)[config] or 32

    def config_with_bits(self, bits: int | None) -> str | None:
        return next((c for c, b in self.configs if b == bits), None)


def quick_plan() -> Plan:
    return Plan(domains=("75",), seeds=(0, 1), steps=150, quant_start=60, eval_every=30,
                settings=plan_settings("quick", 128))


@dataclass
class TrainingMetrics:
    """What training recorded about the selected checkpoint (accuracies are fractions)."""
    selected_step: int
    val_acc: dict[str, float]
    test_acc: dict[str, float]
    mean_val_acc: float
    mean_test_acc: float
    train_seconds: float
    packed_bytes: int
    fp32_bytes: int
    size_ratio: float


@register
@dataclass
class ModelRun(Result):
    domain: str
    config: str
    bits: int | None
    seed: int
    checkpoint: str
    sha256: str
    training: TrainingMetrics
    history: list[dict]
    measurements: dict[str, dict[str, MetricRecord]]       # split -> metric -> record
    quant_error: QuantErrorResult | None = None
    quant_start: int | None = None

    def record(self, split: str, metric: str) -> MetricRecord | None:
        return self.measurements.get(split, {}).get(metric)


@register
@dataclass
class EnsembleRun(Result):
    """EoQ: argmax of the averaged softmax outputs of the paper's-bit-width models of one test domain."""
    domain: str
    bits: int
    members: list[str]
    member_seeds: list[int]
    test_acc: dict[str, float]                # ensemble, per test domain
    val_acc: dict[str, float]
    member_test_acc: list[dict[str, float]]
    packed_bytes: int
    fp32_bytes_one_model: int

    @property
    def mean_test_acc(self) -> float:
        return sum(self.test_acc.values()) / len(self.test_acc)

    def member_mean_test_acc(self) -> list[float]:
        return [sum(m.values()) / len(m) for m in self.member_test_acc]


@register
@dataclass
class ReproduceRun(Result):
    plan: Plan
    models: list[ModelRun]
    eoq: dict[str, EnsembleRun]
    analysis: Result | None
    versions: dict
    cache: dict       # {"measure": measurements computed / read from the cache while training and measuring,
    #                    "collect": the assembly step's reads (all hits by design)}
    device: str
    weights_measured: str
    bn: str
    seconds: dict
    figures: list[str] = field(default_factory=list)

    def runs(self, domain: str, config: str) -> list[ModelRun]:
        return [m for m in self.models if m.domain == domain and m.config == config]


def model_specs(plan: Plan) -> list[dict]:
    return [{"domain": d, "config": name, "bits": bits, "seed": s}
            for d in plan.domains for s in plan.seeds for name, bits in plan.configs]


def ckpt_path(out: str, spec: dict) -> str:
    return os.path.join(out, "checkpoints", f"test{spec['domain']}", f"{spec['config']}_s{spec['seed']}.pt")


def metrics_for(plan: Plan, seed: int) -> list[str]:
    """The registry's headline metrics on every seed, its illustrative ones on `plan.illustrative_seeds`."""
    return [n for n, m in M.REGISTRY.items()
            if m.role == "headline" or (m.role == "illustrative" and seed in plan.illustrative_seeds)]


def plan_to_dict(plan: Plan) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(plan), default=str))


def plan_from_dict(d: dict) -> Plan:
    from .results import from_plain
    return from_plain(Plan, d)


def _worker_init(parent: int) -> None:
    """Workers die with their parent: the kernel's parent-death signal where there is one (Linux), and a
    watchdog thread everywhere (the parent's pid changes when it dies and the worker is re-parented)."""
    import signal
    import sys
    import threading
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="flatlens-parent-watchdog").start()


def _job(args) -> dict:
    """Train (or resume) one model and measure it on both splits; runs in a worker process."""
    spec, plan_dict, out, device, threads = args
    if threads:
        torch.set_num_threads(threads)
    from .train import TrainConfig, train
    plan = plan_from_dict(plan_dict)
    path = ckpt_path(out, spec)
    t0 = time.perf_counter()
    if not os.path.exists(path):
        cfg = TrainConfig(test_domains=[spec["domain"]], bits=spec["bits"], seed=spec["seed"], steps=plan.steps,
                          quant_start=plan.quant_start, eval_every=plan.eval_every, lr=plan.lr,
                          arch_kwargs={"width": plan.width}, device=device)
        train(cfg, path, resume=True, quiet=True)
    t_train = time.perf_counter() - t0
    cache = ResultCache(os.path.join(out, "cache"))
    measure_all([Target(load_checkpoint(path), metrics_for(plan, spec["seed"]), plan.settings)], list(SPLITS),
                cache=cache, device=device)
    return {"spec": spec, "train_seconds": t_train, "measure_seconds": time.perf_counter() - t0 - t_train,
            "cache": cache.stats()}


def _check_plan_file(out: str, plan_dict: dict, quick: bool) -> None:
    plan_file = os.path.join(out, "plan.json")
    if os.path.exists(plan_file):
        try:
            with open(plan_file) as fh:
                old = json.load(fh)
        except (OSError, ValueError, UnicodeDecodeError):
            raise FlatlensError(f"{plan_file} is damaged; use another --out (or remove it if that folder is "
                                "yours to discard)") from None
        if old != plan_dict:
            raise FlatlensError(f"{out} holds a run with another plan ({'quick' if not quick else 'full'}, or an "
                                "older flatlens?); use another --out")
    atomic_write_text(plan_file, json.dumps(plan_dict, indent=1))


def run(out: str, *, quick: bool = False, device: str = "cpu", quiet: bool = False, jobs: int = 2,
        figures: bool = True, plan: Plan | None = None) -> ReproduceRun:
    from tqdm.auto import tqdm
    plan = plan or (quick_plan() if quick else Plan())
    plan.settings.check()
    os.makedirs(out, exist_ok=True)
    plan_dict = plan_to_dict(plan)
    _check_plan_file(out, plan_dict, quick)
    t0 = time.perf_counter()
    specs = model_specs(plan)
    threads = 1 if jobs > 1 else 0
    work = [(s, plan_dict, out, device, threads) for s in specs]
    timings = []
    bar = tqdm(total=len(specs), disable=quiet, desc="reproduce: train + measure models")
    if jobs > 1 and device == "cpu":
        import multiprocessing as mp
        from concurrent.futures.process import BrokenProcessPool
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                     initializer=_worker_init, initargs=(os.getpid(),)) as pool:
                for res in pool.map(_job, work):
                    timings.append(res)
                    bar.update(1)
        except BrokenProcessPool:
            raise RuntimeError("a reproduce worker died (killed, or out of memory); finished models are kept: "
                               "rerun the same command to resume") from None
    else:
        for w in work:
            timings.append(_job(w))
            bar.update(1)
    bar.close()
    t_collect = time.perf_counter()
    results = collect(out, plan, specs, device)
    from .analysis import analyze
    results.analysis = analyze(results)
    results.cache["measure"] = {k: sum(t["cache"][k] for t in timings) for k in ("hits", "misses",
                                                                                "corrupt_recomputed")}
    results.seconds = {"train_and_measure": t_collect - t0, "collect_and_analyze": time.perf_counter() - t_collect,
                       "train_per_model": [t["train_seconds"] for t in timings],
                       "measure_per_model": [t["measure_seconds"] for t in timings], "jobs": jobs}
    results.to_json(os.path.join(out, "results.json"), indent=1)
    from .report import write_report
    write_report(results, os.path.join(out, "report.md"))
    if figures:
        from .plots import make_figures
        results.figures = [os.path.relpath(p, out) for p in make_figures(results, os.path.join(out, "figures"))]
    results.seconds["total"] = time.perf_counter() - t0
    results.to_json(os.path.join(out, "results.json"), indent=1)
    return results


def _training_metrics(ckpt: dict) -> TrainingMetrics:
    from .results import from_plain
    names = {f.name for f in dataclasses.fields(TrainingMetrics)}
    return from_plain(TrainingMetrics, {k: v for k, v in ckpt["metrics"].items() if k in names})


def collect(out: str, plan: Plan, specs: list[dict], device: str) -> ReproduceRun:
    """Assemble the typed run from the checkpoints and the cache (every measurement is a cache hit here)."""
    from .quant import quantization_error
    from .train import ensemble_accuracy
    cache = ResultCache(os.path.join(out, "cache"))
    ckpts = [load_checkpoint(ckpt_path(out, spec)) for spec in specs]
    done = measure_all([Target(c, metrics_for(plan, spec["seed"]), plan.settings) for c, spec in zip(ckpts, specs)],
                       list(SPLITS), cache=cache, device=device)
    models = []
    for i, (spec, ckpt) in enumerate(zip(specs, ckpts)):
        meas = {split: {r.metric: r for r in done.of(i, split)} for split in SPLITS}
        qerr = quantization_error(ckpt["state_dict"], ckpt["quant"]) if ckpt["quant"] else None
        models.append(ModelRun(domain=spec["domain"], config=spec["config"], bits=spec["bits"], seed=spec["seed"],
                               checkpoint=os.path.relpath(ckpt["path"], out), sha256=ckpt["sha256"],
                               training=_training_metrics(ckpt), history=ckpt["history"], measurements=meas,
                               quant_error=qerr, quant_start=(ckpt["quant"] or {}).get("start_step")))
    eoq = {}
    paper = plan.config_with_bits(plan.paper_bits)
    for d in plan.domains:
        member_specs = [s for s in specs if s["domain"] == d and s["config"] == paper]
        if len(member_specs) < 2:
            continue
        members = [load_checkpoint(ckpt_path(out, s)) for s in member_specs]
        e = ensemble_accuracy(members, split="both", device=device)
        eoq[d] = EnsembleRun(
            domain=d, bits=plan.paper_bits, members=[os.path.relpath(m["path"], out) for m in members],
            member_seeds=[s["seed"] for s in member_specs],
            test_acc={k.split(":", 1)[1]: v for k, v in e["ensemble"].items() if k.startswith("test:")},
            val_acc={k.split(":", 1)[1]: v for k, v in e["ensemble"].items() if k.startswith("val:")},
            member_test_acc=[{k.split(":", 1)[1]: v for k, v in mm.items() if k.startswith("test:")}
                             for mm in e["members"]],
            packed_bytes=e["packed_bytes"], fp32_bytes_one_model=e["fp32_bytes_one_model"])
    return ReproduceRun(plan=plan, models=models, eoq=eoq, analysis=None, versions=versions(),
                        cache={"collect": cache.stats()}, device=device,
                        weights_measured="deployed (dequantized) weights for quantized models", bn="eval",
                        seconds={})


def load_run(path: str) -> ReproduceRun:
    """results.json of a reproduce run, read back through its types (one clear error if it is not one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
        if not os.path.exists(path):
            raise FlatlensError(f"{path}: no such file (run `flatlens reproduce --out "
                                f"{os.path.dirname(path)}` first)")
    return ReproduceRun.from_json(path)
