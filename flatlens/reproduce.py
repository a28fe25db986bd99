"""`flatlens reproduce`: the paper's question, end to end, on rotated digits.

Trains full precision and 8/7/4/2-bit QAT models (delayed start at 40 % of training, as the paper's
2000 of 5000) for several seeds and test domains, plus an EoQ ensemble of the 7-bit seeds; measures every
metric on the train split (source domains) and the test split (held-out domain); writes results.json,
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

from ._util import FlatlensError, atomic_write_text
from .cache import ResultCache
from .checkpoint import load_checkpoint
from .measure import METRICS, Settings, measure, versions

CONFIGS = (("fp32", None), ("q8", 8), ("q7", 7), ("q4", 4), ("q2", 2))


@dataclass
class Plan:
    domains: tuple = ("75", "0")
    seeds: tuple = (0, 1, 2)
    configs: tuple = CONFIGS
    steps: int = 400
    quant_start: int = 160
    eval_every: int = 50
    width: int = 16
    lr: float = 1e-3
    surface_seeds: tuple = (0,)
    settings: Settings = field(default_factory=lambda: Settings(
        samples=256, n_directions=20, trace_rtol=0.1, eig_tol=1e-3, density_iter=20, density_runs=2,
        curve_directions=6, surface_points=9, sharpness_steps=8, sharpness_batches=4, qnoise_samples=40,
        qnoise_probes=20, radii=(0.0, 0.5, 1.0, 2.0, 3.0, 4.0)))


def quick_plan() -> Plan:
    return Plan(domains=("75",), seeds=(0,), steps=150, quant_start=60, eval_every=30, surface_seeds=(0,),
                settings=Settings(samples=128, n_directions=10, trace_rtol=0.2, eig_tol=1e-2, density_iter=12,
                                  density_runs=2, curve_directions=3, surface_points=5, sharpness_steps=4,
                                  sharpness_batches=2, qnoise_samples=20, qnoise_probes=10,
                                  radii=(0.0, 1.0, 2.0, 4.0)))


def model_specs(plan: Plan) -> list[dict]:
    return [{"domain": d, "config": name, "bits": bits, "seed": s}
            for d in plan.domains for s in plan.seeds for name, bits in plan.configs]


def ckpt_path(out: str, spec: dict) -> str:
    return os.path.join(out, "checkpoints", f"test{spec['domain']}", f"{spec['config']}_s{spec['seed']}.pt")


def metrics_for(plan: Plan, spec: dict) -> list[str]:
    return [m for m in METRICS if m != "surface" or spec["seed"] in plan.surface_seeds]


def _job(args) -> dict:
    """Train (or resume) one model and measure it on both splits; runs in a worker process."""
    spec, plan_dict, out, device, threads = args
    if threads:
        torch.set_num_threads(threads)
    from .train import TrainConfig, train
    plan = _plan_from_dict(plan_dict)
    path = ckpt_path(out, spec)
    t0 = time.perf_counter()
    if not os.path.exists(path):
        cfg = TrainConfig(test_domains=[spec["domain"]], bits=spec["bits"], seed=spec["seed"], steps=plan.steps,
                          quant_start=plan.quant_start, eval_every=plan.eval_every, lr=plan.lr,
                          arch_kwargs={"width": plan.width}, device=device)
        train(cfg, path, resume=True, quiet=True)
    t_train = time.perf_counter() - t0
    ckpt = load_checkpoint(path)
    cache = ResultCache(os.path.join(out, "cache"))
    for split in ("train", "test"):
        for metric in metrics_for(plan, spec):
            measure(ckpt, metric, split, plan.settings, cache=cache, device=device)
    return {"spec": spec, "train_seconds": t_train, "measure_seconds": time.perf_counter() - t0 - t_train}


def _plan_from_dict(d: dict) -> Plan:
    d = dict(d)
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("settings").items()})
    d = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
         for k, v in d.items()}
    return Plan(settings=s, **d)


def run(out: str, *, quick: bool = False, device: str = "cpu", quiet: bool = False, jobs: int = 2,
        figures: bool = True) -> dict:
    from tqdm.auto import tqdm
    plan = quick_plan() if quick else Plan()
    os.makedirs(out, exist_ok=True)
    plan_dict = json.loads(json.dumps(dataclasses.asdict(plan)))
    plan_file = os.path.join(out, "plan.json")
    if os.path.exists(plan_file):
        try:
            old = json.load(open(plan_file))
        except ValueError:
            old = None
        if old is not None and old != plan_dict:
            raise FlatlensError(f"{out} holds a run with another plan ({'quick' if not quick else 'full'}?); "
                                "use another --out")
    atomic_write_text(plan_file, json.dumps(plan_dict, indent=1))
    t0 = time.perf_counter()
    specs = model_specs(plan)
    threads = 1 if jobs > 1 else 0
    work = [(s, plan_dict, out, device, threads) for s in specs]
    timings = []
    bar = tqdm(total=len(specs), disable=quiet, desc="reproduce: train + measure models")
    if jobs > 1 and device == "cpu":
        import multiprocessing as mp
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            for res in pool.map(_job, work):
                timings.append(res)
                bar.update(1)
    else:
        for w in work:
            timings.append(_job(w))
            bar.update(1)
    bar.close()
    results = collect(out, plan, specs, device)
    results["seconds"] = {"total_until_collect": time.perf_counter() - t0,
                          "train_per_model": [t["train_seconds"] for t in timings],
                          "measure_per_model": [t["measure_seconds"] for t in timings]}
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1, default=str) + "\n")
    from .report import write_report
    write_report(results, os.path.join(out, "report.md"))
    if figures:
        from .plots import make_figures
        results["figures"] = make_figures(results, os.path.join(out, "figures"))
    results["seconds"]["total"] = time.perf_counter() - t0
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1, default=str) + "\n")
    return results


def collect(out: str, plan: Plan, specs: list[dict], device: str) -> dict:
    """Assemble results.json from the checkpoints and the cache (every measurement is a cache hit here)."""
    from .quant import quantization_error
    from .train import ensemble_accuracy
    cache = ResultCache(os.path.join(out, "cache"))
    models = []
    for spec in specs:
        ckpt = load_checkpoint(ckpt_path(out, spec))
        meas = {split: {m: measure(ckpt, m, split, plan.settings, cache=cache, device=device)
                        for m in metrics_for(plan, spec)} for split in ("train", "test")}
        qerr = quantization_error(ckpt["state_dict"], ckpt["quant"]) if ckpt["quant"] else None
        models.append({**spec, "checkpoint": os.path.relpath(ckpt["path"], out), "sha256": ckpt["sha256"],
                       "metrics": ckpt["metrics"], "history": ckpt["history"], "measurements": meas,
                       "quant_error": qerr, "quant_start": (ckpt["quant"] or {}).get("start_step")})
    eoq = {}
    for d in plan.domains:
        members = [load_checkpoint(ckpt_path(out, s)) for s in specs if s["domain"] == d and s["config"] == "q7"]
        if members:
            eoq[d] = ensemble_accuracy(members, split="both", device=device)
            eoq[d]["members"] = [m["path"] for m in members]
    return {"plan": json.loads(json.dumps(dataclasses.asdict(plan))), "models": models, "eoq": eoq,
            "versions": versions(), "cache": cache.stats(), "device": device,
            "weights_measured": "deployed (dequantized) weights for quantized models", "bn": "eval"}
