"""`flatlens reproduce`: the paper's question end to end, as a paired design with a confirmatory family stated in
the plan before any run.

Every seed trains one full-precision prefix up to the quantization start (40 % of training, as the paper's 2000
of 5000); its full-precision and QAT runs branch from that prefix (the same initialisation, data order and first
steps, bit for bit, recorded in each checkpoint's `pairing`) and are kept at the same step (`select`: the last).
Every model of seed s is measured with measurement seed s: within a pair the same samples, directions, probes and
noise draws (common random numbers), fresh ones for every seed (so intervals over seeds cover them too).

The confirmatory family (`Plan.family`, at most 6 claims): the paper's bit-width against full precision on each
registry entry that declares a claim (the Hessian trace, the top eigenvalue, local flatness: train split) and on
out-of-domain accuracy, and a positive control (too few bits against full precision on local flatness). Each is
tested by the paired t over seeds (each seed's value the mean over the test domains) and by TOST against the
plan's margin; `analysis` adjusts the family (Holm with the logical constraint that a claim cannot be both
equal and not equivalent). The other configurations, measures, splits and per-domain results are exploratory.
Every stage is resumable: finished prefixes and checkpoints are kept, an interrupted training resumes from its
partial state, measurements come from the cache.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch

from . import metrics as M
from ._util import FlatlensError, atomic_write_text
from .analysis import ACCURACY, ClaimSpec
from .cache import ResultCache
from .checkpoint import Checkpoint, load_checkpoint
from .measure import MetricRecord, versions
from .paths import open_regular
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
    domains: tuple[str, ...] = ("printed", "optdigits")
    seeds: tuple[int, ...] = tuple(range(16))   # every configuration of the family: its pairs (power: --plan)
    explore_seeds: int = 2      # the first seeds: also the exploratory configurations, the test split, qnoise
    configs: tuple[tuple[str, int | None], ...] = CONFIGS
    paper_bits: int = 7         # the paper's bit-width: claims test it against full precision
    control_bits: int = 2       # the positive control: too few bits, expected flatter than full precision
    control_metric: str = "flatness"
    steps: int = 400
    quant_start: int = 160
    eval_every: int = 100
    width: int = 16
    lr: float = 1e-3
    select: str = "last"        # every run kept at its last step: the rule that keeps a pair at the same step
    margin: float = 0.15        # equivalence margin of the flatness / curvature claims, relative to full precision
    accuracy_margin: float = 2.0  # equivalence margin of the accuracy claim, percentage points
    illustrative_seeds: tuple[int, ...] = (0,)   # seeds on which the registry's illustrative metrics run
    dataset: str = "digits-dg"
    image_size: int | None = 16
    data_root: str | None = None   # data sets on disk (rotated-fashion-mnist, DomainBed folders)
    settings: M.Settings = field(default_factory=default_settings)
    family: list[ClaimSpec] = field(default_factory=list)   # stated by `with_family` before any run

    def where(self, domain: str) -> str:
        """How a test domain reads: an angle in degrees (rotated sets), or its name."""
        return f"{domain}°" if str(domain).lstrip("-").isdigit() else str(domain)

    def label(self, config: str) -> str:
        bits = dict(self.configs)[config]
        return "full precision" if bits is None else f"{bits} bit"

    def bits(self, config: str) -> int:
        return dict(self.configs)[config] or 32

    def config_with_bits(self, bits: int | None) -> str | None:
        return next((c for c, b in self.configs if b == bits), None)

    def confirmatory_configs(self) -> set[str]:
        return {c.a for c in self.family} | {c.b for c in self.family}

    def seeds_of(self, config: str) -> tuple[int, ...]:
        """The family's configurations run on every seed, the others on the first `explore_seeds`."""
        return self.seeds if config in self.confirmatory_configs() else self.seeds[:self.explore_seeds]

    def measured(self, config: str, seed: int, split: str) -> list[str]:
        """The metrics of the plan's settings measured on one model and split: the family's on every seed (train
        split); the other headline metrics, and the test split, on the first `explore_seeds`; the illustrative ones
        on the train split of `illustrative_seeds`; the exploratory ones on the train split of every seed (a pair
        entry on every quantized model: its partner is the seed's full-precision model)."""
        family = {c.metric for c in self.family if c.split == split}
        early = seed in self.seeds[:self.explore_seeds]
        out = []
        for n, m in M.REGISTRY.items():
            if n not in self.settings.metrics:  # not in this plan (a stored plan predates it, or leaves it out)
                continue
            if (n in family and config in self.confirmatory_configs()) or (m.role == "headline" and early) or (
                    m.role == "illustrative" and split == "train" and seed in self.illustrative_seeds) or (
                    m.role == "exploratory" and split == "train"
                    and not (m.pair and dict(self.configs)[config] is None)):
                out.append(n)
        return out if split == "train" or early else []


def with_family(plan: Plan) -> Plan:
    """The plan with its confirmatory family stated: the paper's bit-width against full precision on each
    registered entry that declares a claim (its summary row, train split) and on out-of-domain accuracy, and the
    positive control: `control_bits` against full precision on `control_metric`."""
    fp, paper = plan.config_with_bits(None), plan.config_with_bits(plan.paper_bits)
    control = plan.config_with_bits(plan.control_bits)
    fam = []
    if fp and paper:
        for n, m in M.REGISTRY.items():
            if m.claim is None or n not in plan.settings.metrics:
                continue
            row = m.summary_row(plan.settings.of(n))
            fam.append(ClaimSpec(n, n, "train", row, fp, paper, "lower", plan.margin, True,
                                 f"{m.claim} ({m.label(row)}, train split)"))
        fam.append(ClaimSpec("ood-accuracy", ACCURACY, "", "ood", fp, paper, "higher", plan.accuracy_margin, False,
                             "{b} QAT improves out-of-domain accuracy over {a}"))
    if fp and control and plan.control_metric in M.REGISTRY and plan.control_metric in plan.settings.metrics:
        m = M.get(plan.control_metric)
        row = m.summary_row(plan.settings.of(plan.control_metric))
        fam.append(ClaimSpec("control", plan.control_metric, "train", row, fp, control, "lower", plan.margin, True,
                             f"positive control: {m.claim or '{b} differs from {a} by ' + m.name} "
                             f"({m.label(row)}, train split)"))
    if len(fam) > 6:
        raise FlatlensError(f"the confirmatory family has {len(fam)} claims; at most 6 (statistics.md)")
    plan.family = fam
    return plan


# the data sets the main job runs on, and each one's test domains and image size (full plan, quick plan)
DATASETS = {"digits-dg": {"domains": ("printed", "optdigits"), "quick": ("printed",), "image_size": 16},
            "rotated-digits": {"domains": ("75", "0"), "quick": ("75",), "image_size": None}}


def _dataset(name: str) -> dict:
    if name not in DATASETS:
        raise FlatlensError(f"reproduce runs on {', '.join(DATASETS)}; got {name!r}")
    return DATASETS[name]


def quick_plan(dataset: str = "digits-dg") -> Plan:
    d = _dataset(dataset)
    return with_family(Plan(dataset=dataset, domains=d["quick"], image_size=d["image_size"], seeds=(0, 1, 2),
                            explore_seeds=2, steps=150, quant_start=60, eval_every=50,
                            settings=plan_settings("quick", 128)))


def full_plan(dataset: str = "digits-dg") -> Plan:
    d = _dataset(dataset)
    return with_family(Plan(dataset=dataset, domains=d["domains"], image_size=d["image_size"]))


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

    @classmethod
    def from_dict(cls, d: dict):
        """A run read back through its types; a stored analysis of an older layout is dropped (the report and
        figures then compute it from the run's records), everything else must parse."""
        try:
            return super().from_dict(d)
        except (ValueError, TypeError, KeyError) as e:
            if not (isinstance(d, dict) and isinstance(d.get("analysis"), dict)) or ".analysis" not in str(e):
                raise
            return super().from_dict({**d, "analysis": None})


def model_specs(plan: Plan) -> list[dict]:
    """Every model of the plan: each test domain and seed, with the configurations that seed runs."""
    return [{"domain": d, "config": name, "bits": bits, "seed": s}
            for d in plan.domains for s in plan.seeds for name, bits in plan.configs if s in plan.seeds_of(name)]


def ckpt_path(out: str, spec: dict) -> str:
    return os.path.join(out, "checkpoints", f"test{spec['domain']}", f"{spec['config']}_s{spec['seed']}.pt")


def prefix_path(out: str, domain: str, seed: int) -> str:
    return os.path.join(out, "checkpoints", f"test{domain}", f"prefix_s{seed}.state")


def metrics_for(plan: Plan, seed: int, config: str | None = None, split: str = "train") -> list[str]:
    """What is measured on a model of `config` (default: one of the family's) and `seed`, on `split`."""
    config = config or next(iter(sorted(plan.confirmatory_configs())), plan.configs[0][0])
    return plan.measured(config, seed, split)


def measurement_settings(plan: Plan, seed: int) -> M.Settings:
    """The plan's settings with measurement seed `seed`: every configuration of one training seed is measured
    on the same samples with the same directions, probes and noise draws (common random numbers within a pair),
    and each seed draws afresh."""
    s = copy.deepcopy(plan.settings)
    s.common.seed = int(seed)
    return s


def train_config(plan: Plan, spec: dict, device: str):
    from .train import TrainConfig
    return TrainConfig(dataset=plan.dataset, data_root=plan.data_root, image_size=plan.image_size,
                       test_domains=[spec["domain"]],
                       bits=spec["bits"], seed=spec["seed"], steps=plan.steps, quant_start=plan.quant_start,
                       eval_every=plan.eval_every, lr=plan.lr, arch_kwargs={"width": plan.width}, device=device,
                       select=plan.select)


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
    """One test domain and seed: the shared full-precision prefix, then every configuration this seed runs,
    branched from it (or resumed), each measured as the plan says; runs in a worker process."""
    domain, seed, plan_dict, out, device, threads = args
    if threads:
        torch.set_num_threads(threads)
    from .data import load
    from .train import train, train_prefix
    plan = plan_from_dict(plan_dict)
    specs = [s for s in model_specs(plan) if s["domain"] == domain and s["seed"] == seed]
    t0 = time.perf_counter()
    data = None
    todo = [s for s in specs if not os.path.exists(ckpt_path(out, s))]
    if todo:
        data = load(plan.dataset, plan.data_root, seed=0, image_size=plan.image_size)
        prefix = prefix_path(out, domain, seed)
        train_prefix(train_config(plan, todo[0], device), prefix, data=data)
        for spec in todo:
            train(train_config(plan, spec, device), ckpt_path(out, spec), resume=True, quiet=True, data=data,
                  prefix=prefix)
    t_train = time.perf_counter() - t0
    cache = ResultCache(os.path.join(out, "cache"))
    settings = measurement_settings(plan, seed)
    for split in SPLITS:
        targets = [Target(load_checkpoint(ckpt_path(out, s)), plan.measured(s["config"], seed, split), settings)
                   for s in specs]
        measure_all([t for t in targets if t.metrics], [split], cache=cache, device=device, check_centres=False)
    return {"domain": domain, "seed": seed, "models": len(specs), "train_seconds": t_train,
            "measure_seconds": time.perf_counter() - t0 - t_train, "cache": cache.stats()}


FIGURE_FORMATS = ("png", "pdf")  # the figures a run draws (the CLI checks each of their paths before the run)


def _check_plan_file(out: str, plan_dict: dict, quick: bool) -> None:
    plan_file = os.path.join(out, "plan.json")
    if os.path.exists(plan_file):
        try:
            with open_regular(plan_file, "r") as fh:  # a FIFO here once blocked the run (the CLI refuses it first)
                old = json.load(fh)
        except (OSError, ValueError, UnicodeDecodeError):
            raise FlatlensError(f"{plan_file} is damaged; use another --out (or remove it if that folder is "
                                "yours to discard)") from None
        if old != plan_dict:
            raise FlatlensError(f"{out} holds a run with another plan ({'quick' if not quick else 'full'}, or an "
                                "older flatlens?); use another --out")
    atomic_write_text(plan_file, json.dumps(plan_dict, indent=1))


def run(out: str, *, quick: bool = False, device: str = "cpu", quiet: bool = False, jobs: int = 2,
        figures: bool = True, plan: Plan | None = None, dataset: str = "digits-dg") -> ReproduceRun:
    from tqdm.auto import tqdm
    plan = plan or (quick_plan(dataset) if quick else full_plan(dataset))
    plan.settings.check()
    os.makedirs(out, exist_ok=True)
    plan_dict = plan_to_dict(plan)
    _check_plan_file(out, plan_dict, quick)
    t0 = time.perf_counter()
    specs = model_specs(plan)
    threads = 1 if jobs > 1 else 0
    units = sorted({(s["domain"], s["seed"]) for s in specs}, key=lambda u: (plan.seeds.index(u[1]),
                                                                              plan.domains.index(u[0])))
    work = [(d, seed, plan_dict, out, device, threads) for d, seed in units]
    timings = []
    bar = tqdm(total=len(work), disable=quiet, desc=f"reproduce: {len(specs)} models, {len(work)} seed x domain jobs")
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
                       "train_per_job": [t["train_seconds"] for t in timings],
                       "measure_per_job": [t["measure_seconds"] for t in timings],
                       "models_per_job": [t["models"] for t in timings], "jobs": jobs,
                       "cpus": os.cpu_count()}
    results.to_json(os.path.join(out, "results.json"), indent=1)
    from .report import write_report
    write_report(results, os.path.join(out, "report.md"))
    if figures:
        from .plots import make_figures
        drawn = make_figures(results, os.path.join(out, "figures"), formats=FIGURE_FORMATS)
        results.figures = [os.path.relpath(p, out) for p in drawn]
    results.seconds["total"] = time.perf_counter() - t0
    results.to_json(os.path.join(out, "results.json"), indent=1)
    return results


def _training_metrics(ckpt: Checkpoint) -> TrainingMetrics:
    from .results import from_plain
    names = {f.name for f in dataclasses.fields(TrainingMetrics)}
    return from_plain(TrainingMetrics, {k: v for k, v in ckpt.metrics.items() if k in names})


def collect(out: str, plan: Plan, specs: list[dict], device: str) -> ReproduceRun:
    """Assemble the typed run from the checkpoints and the cache (every measurement is a cache hit here)."""
    from .quant import quantization_error
    from .train import ensemble_accuracy
    cache = ResultCache(os.path.join(out, "cache"))
    ckpts = [load_checkpoint(ckpt_path(out, spec)) for spec in specs]
    meas_all = {}
    for split in SPLITS:
        targets = [Target(c, plan.measured(spec["config"], spec["seed"], split),
                          measurement_settings(plan, spec["seed"])) for c, spec in zip(ckpts, specs)]
        keep = [i for i, t in enumerate(targets) if t.metrics]
        done = measure_all([targets[i] for i in keep], [split], cache=cache, device=device, check_centres=False)
        for j, i in enumerate(keep):
            meas_all.setdefault(i, {})[split] = {r.metric: r for r in done.of(j, split)}
    models = []
    for i, (spec, ckpt) in enumerate(zip(specs, ckpts)):
        meas = meas_all.get(i, {})
        qerr = quantization_error(ckpt.state_dict, ckpt.quant) if ckpt.quant else None
        models.append(ModelRun(domain=spec["domain"], config=spec["config"], bits=spec["bits"], seed=spec["seed"],
                               checkpoint=os.path.relpath(ckpt.path, out), sha256=ckpt.sha256,
                               training=_training_metrics(ckpt), history=ckpt.history, measurements=meas,
                               quant_error=qerr, quant_start=None if ckpt.quant is None else ckpt.quant.start_step))
    eoq = {}
    paper = plan.config_with_bits(plan.paper_bits)
    for d in plan.domains:
        member_specs = [s for s in specs if s["domain"] == d and s["config"] == paper][:5]  # EoQ: 5 members
        if len(member_specs) < 2:
            continue
        members = [load_checkpoint(ckpt_path(out, s)) for s in member_specs]
        e = ensemble_accuracy(members, split="both", device=device)
        eoq[d] = EnsembleRun(
            domain=d, bits=plan.paper_bits, members=[os.path.relpath(m.path, out) for m in members],
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
