"""ERM and QAT (QT-DoG) training on a leave-one-domain-out protocol, with a delayed quantization start.

Each step draws one minibatch per source domain (from its 80 % in-split), takes one Adam step on the mean
cross-entropy, and every `eval_every` steps records accuracy per domain: training-domain validation (the
20 % out-split) and the held-out test domain(s). The checkpoint keeps the step with the best mean
validation accuracy (among quantized steps for QAT, since the quantized model is what is deployed).

At `quant_start` the conv/linear weights (all but the classifier) are parametrized with LSQ; the latent
weights are the same Parameter objects the optimizer already holds (their Adam moments carry over) and the
new step sizes are added as a parameter group, unlike the paper's released code, which never trains them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._util import FlatlensError, atomic_torch_save, check_number, resolve_device
from ..checkpoint import save_checkpoint
from ..data import DomainData, load, split_indices
from ..data.domains import gather
from ..models import build, freeze_batchnorm
from ..quant import latent_state, packed_size, quantize_model, step_parameters


@dataclass
class TrainConfig:
    dataset: str = "rotated-digits"
    data_root: str | None = None
    image_size: int | None = None  # None: the data set's own default (recorded in the checkpoint either way)
    test_domains: list = field(default_factory=lambda: ["75"])
    arch: str = "small_cnn"
    arch_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False
    freeze_bn: bool = False
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    bits: int | None = None
    per_channel: bool = True
    quant_start: int = 400
    eval_every: int = 100
    holdout: float = 0.2
    split_seed: int = 0
    seed: int = 0
    device: str = "cpu"
    select: str = "best-val"  # "best-val": the evaluated step with the best in-domain validation accuracy (among
    #                           quantized steps for QAT); "last": the final weights (keeps pairs of runs intact)

    @classmethod
    def paper_domainbed(cls, **kw) -> "TrainConfig":
        """The paper's DomainBed defaults: ResNet-50, Adam 5e-5, no weight decay, batch 32 per domain, 5000
        steps, quantization from step 2000, evaluation every 300 steps, frozen BatchNorm."""
        base = dict(arch="resnet50", lr=5e-5, weight_decay=0.0, batch_size=32, steps=5000, quant_start=2000,
                    eval_every=300, freeze_bn=True, pretrained=True)
        base.update(kw)
        return cls(**base)

    @classmethod
    def type_error(cls, name: str, value) -> str | None:
        """What is wrong with `value`'s type for the setting `name` (its annotation: a bool a JSON boolean, never
        the string "true"; numbers finite, not booleans; test domains names or numbers), or None. Ranges are
        `validate`'s."""
        import math
        import typing
        hints = typing.get_type_hints(cls)
        if name not in hints:
            return f"unknown training setting {name}"
        kinds = [k for k in (typing.get_args(hints[name]) or (hints[name],)) if k is not type(None)]
        kind, optional = kinds[0], len(kinds) < len(typing.get_args(hints[name]) or (hints[name],))
        if value is None:
            return None if optional else f"{name} must be given (not null)"
        if kind is bool:
            ok, what = isinstance(value, bool), "true or false"
        elif kind in (int, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (kind is float or float(value).is_integer())  # a JSON 40.0 is the integer 40
            what = "an integer" if kind is int else "a finite number"
        elif kind is list:
            ok = isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
            what = "a list of domain names"
        else:
            ok, what = isinstance(value, kind), {str: "a string", dict: "an object"}.get(kind, kind.__name__)
        return None if ok else f"{name} must be {what}{' or null' if optional else ''}; got {value!r}"

    def validate(self, data: DomainData | None = None) -> None:
        """Every setting of its type and in range before any work (0 and NaN never mean "default"); with `data`,
        the domains too (the numbers are checked first: a seed past int64 would overflow the data set's
        generator)."""
        for f in dataclasses.fields(self):
            err = self.type_error(f.name, getattr(self, f.name))
            if err:
                raise FlatlensError(err)
        for name, lo, hi in (("steps", 1, 10 ** 8), ("batch_size", 1, 100_000), ("eval_every", 1, 10 ** 8),
                             ("seed", 0, 2 ** 63 - 1), ("split_seed", 0, 2 ** 63 - 1), ("quant_start", 0, 10 ** 8)):
            setattr(self, name, check_number(name, getattr(self, name), lo=lo, hi=hi, integer=True))
        check_number("lr", self.lr, lo=0, lo_open=True)
        check_number("weight_decay", self.weight_decay, lo=0)
        check_number("holdout", self.holdout, lo=0, hi=1, lo_open=True, hi_open=True)
        if data is None:
            return
        if not self.test_domains:
            raise FlatlensError("give at least one test domain")
        for d in self.test_domains:
            data.index(d)
        if len(self.test_domains) >= len(data.domains):
            raise FlatlensError("at least one domain must remain for training")
        if self.bits is not None and not 0 <= self.quant_start < self.steps:
            raise FlatlensError(f"quant_start must lie in [0, steps); got {self.quant_start} of {self.steps}")
        if self.bits is not None and (isinstance(self.bits, bool) or not isinstance(self.bits, int)
                                      or not 2 <= self.bits <= 8):
            raise FlatlensError(f"bits must be 2..8 (or 32 / none for full precision); got {self.bits!r}")
        if self.select not in SELECT_RULES:
            raise FlatlensError(f"select must be one of {', '.join(SELECT_RULES)}; got {self.select!r}")


SELECT_RULES = ("best-val", "last")
# what a shared prefix may differ in from the runs that branch off it: only what acts after the branch point
BRANCH_FIELDS = ("bits", "per_channel", "select")


def _rng_state(gen: torch.Generator) -> dict:
    return {"gen": gen.get_state(), "torch": torch.get_rng_state()}


class Trainer:
    def __init__(self, cfg: TrainConfig, data: DomainData | None = None, *, quiet: bool = False,
                 snapshot_every: int | None = None, snapshot_dtype: str = "float16"):
        self.cfg = cfg
        cfg.validate()  # the numbers, before they reach a generator
        if cfg.image_size is not None:
            cfg.image_size = check_number("image_size", cfg.image_size, lo=8, hi=1024, integer=True)
        self.data = data or load(cfg.dataset, cfg.data_root, seed=cfg.split_seed, image_size=cfg.image_size)
        if cfg.image_size is not None and self.data.image_size != cfg.image_size:
            raise FlatlensError(f"the data given are {self.data.image_size} px; the config asks for {cfg.image_size}")
        cfg.test_domains = [str(d) for d in cfg.test_domains]
        cfg.validate(self.data)
        self.quiet = quiet
        self.device = resolve_device(cfg.device)
        self.train_domains = [d for d in self.data.domains if d not in cfg.test_domains]
        self.splits = {}
        for d in self.data.domains:
            n = self.data.size(d)
            self.splits[d] = split_indices(n, self.data.index(d), cfg.split_seed, cfg.holdout)
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        kwargs = dict(cfg.arch_kwargs)
        kwargs.setdefault("num_classes", self.data.num_classes)
        if cfg.arch in ("small_cnn",):
            kwargs.setdefault("in_channels", self.data.in_channels)
        if cfg.arch.startswith("resnet"):
            kwargs.setdefault("pretrained", cfg.pretrained)
        self.arch = {"name": cfg.arch, "kwargs": {k: v for k, v in kwargs.items() if k != "pretrained"}}
        self.model = build(cfg.arch, **kwargs).to(self.device)
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.quantized_names: list[str] = []
        self.train_seconds = 0.0
        self.prefix: dict | None = None  # the shared prefix this run branched from (step, content hash)
        self.snapshots = None  # weight snapshots every `snapshot_every` steps (train/snapshots.py), not a setting
        if snapshot_every is not None:
            check_number("snapshot_every", snapshot_every, lo=1, hi=10 ** 8, integer=True)
            from .snapshots import Recorder
            self.snapshots = Recorder([n for n, _ in self.model.named_parameters()], snapshot_every, snapshot_dtype)

    # ------------------------------------------------------------------ data
    def _batch(self, domain: str):
        idx_in = self.splits[domain][0]
        pick = idx_in[torch.randint(len(idx_in), (self.cfg.batch_size,), generator=self.gen)]
        if domain in self.data.tensors:
            x, y = self.data.tensors[domain]
            return x[pick], y[pick]
        return gather(self.data.get(domain, True), pick)

    def eval_sets(self) -> dict:
        """name -> (domain, indices): in-domain validation ('val') and held-out test ('test')."""
        sets = {}
        for d in self.train_domains:
            sets[("val", d)] = self.splits[d][1]
        for d in self.cfg.test_domains:
            sets[("test", d)] = torch.arange(self.data.size(d))
        return sets

    @torch.no_grad()
    def accuracy(self, domain: str, indices) -> float:
        was = self.model.training
        self.model.eval()
        correct = 0
        ds = self.data.get(domain, False)
        for i in range(0, len(indices), 256):
            chunk = indices[i:i + 256]
            if domain in self.data.tensors:
                x, y = self.data.tensors[domain][0][chunk], self.data.tensors[domain][1][chunk]
            else:
                x, y = gather(ds, chunk)
            correct += int((self.model(x.to(self.device)).argmax(1) == y.to(self.device)).sum())
        self.model.train(was)
        return correct / max(1, len(indices))

    def evaluate(self) -> dict:
        rec = {"step": self.step, "quantized": bool(self.quantized_names), "val_acc": {}, "test_acc": {}}
        for (kind, d), idx in self.eval_sets().items():
            rec[f"{kind}_acc"][d] = self.accuracy(d, idx)
        rec["mean_val_acc"] = sum(rec["val_acc"].values()) / len(rec["val_acc"])
        rec["mean_test_acc"] = sum(rec["test_acc"].values()) / len(rec["test_acc"])
        return rec

    # ------------------------------------------------------------------ quantization switch
    def switch_to_quantized(self) -> None:
        cfg = self.cfg
        x, _ = self._probe_batch()
        self.model.eval()
        with torch.no_grad():
            before = self.model(x)
        self.quantized_names = quantize_model(self.model, int(cfg.bits), per_channel=cfg.per_channel)
        with torch.no_grad():
            after = self.model(x)
        self.model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        # latent weights are the same Parameters (Adam state kept); the steps join as a new group
        self.optimizer.add_param_group({"params": step_parameters(self.model)})
        self.history.append({"step": self.step, "event": "quantization on", "bits": int(cfg.bits),
                             "max_logit_change": float((after - before).abs().max()),
                             "mean_logit_scale": float(before.abs().mean())})

    def _probe_batch(self):
        d = self.train_domains[0]
        idx = self.splits[d][1][:64]
        if d in self.data.tensors:
            return self.data.tensors[d][0][idx].to(self.device), None
        return gather(self.data.get(d, False), idx)[0].to(self.device), None

    # ------------------------------------------------------------------ state
    def _snapshot(self) -> dict:
        sd, steps = latent_state(self.model)
        return {"state_dict": sd, "steps": steps}

    def partial_state(self) -> dict:
        return {"format": "flatlens-train-partial", "config": dataclasses.asdict(self.cfg), "step": self.step,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "quantized": bool(self.quantized_names), "rng": _rng_state(self.gen),
                "history": self.history, "best": self.best, "train_seconds": self.train_seconds,
                "prefix": self.prefix,
                "snapshots": None if self.snapshots is None else {"every": self.snapshots.every,
                                                                  **self.snapshots.state()}}

    def load_partial(self, state: dict, *, branch: bool = False) -> None:
        """Continue from a saved training state: an interrupted run of these settings, or (branch) the shared
        full-precision prefix of a pair, saved at the quantization start step, which may differ from these
        settings only in what acts after that step (BRANCH_FIELDS)."""
        if state.get("format") != "flatlens-train-partial":
            raise FlatlensError("the partial training file is not a flatlens training state")
        mine = dataclasses.asdict(self.cfg)
        theirs = dict(state["config"])
        if branch:
            if state["step"] != self.cfg.quant_start or state["quantized"]:
                raise FlatlensError(f"the prefix ends at step {state['step']}, not at this run's quantization start "
                                    f"{self.cfg.quant_start}")
            for k in BRANCH_FIELDS:
                mine.pop(k, None)
                theirs.pop(k, None)
        if theirs != mine:
            raise FlatlensError("the partial training state was made with other settings; remove it or "
                                "rerun with the same arguments")
        if state["quantized"]:
            self.quantized_names = quantize_model(self.model, int(self.cfg.bits), per_channel=self.cfg.per_channel)
            self.optimizer.add_param_group({"params": step_parameters(self.model)})
            if self.cfg.freeze_bn:
                freeze_batchnorm(self.model)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["rng"]["gen"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step, self.history, self.best = state["step"], state["history"], state["best"]
        self.train_seconds = state["train_seconds"]
        self.prefix = state.get("prefix") or (prefix_identity(state) if branch else None)
        if self.snapshots is not None and not branch and state.get("snapshots"):
            from .snapshots import Recorder
            if state["snapshots"]["every"] != self.snapshots.every:
                raise FlatlensError(f"the interrupted run took snapshots every {state['snapshots']['every']} steps; "
                                    f"resume it with the same --snapshot-every")
            self.snapshots = Recorder(self.snapshots.names, self.snapshots.every,
                                      str(self.snapshots.dtype).replace("torch.", ""), state=state["snapshots"])
        if branch and self.cfg.bits is not None:
            self.best = None  # a QAT run selects among its quantized steps only, as if it had run from step 0

    # ------------------------------------------------------------------ loop
    def run(self, *, partial_path: str | None = None, stop_at: int | None = None) -> bool:
        """Train until cfg.steps (or `stop_at`); returns True when training is complete."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.quiet, desc="train", leave=False)
        self.model.train()
        if self.snapshots is not None and self.snapshots.base is None:
            self.snapshots.take(self.model, self.step)  # where this run's training starts
        t0 = time.perf_counter()
        while self.step < end:
            if cfg.bits is not None and self.step == cfg.quant_start and not self.quantized_names:
                self.switch_to_quantized()
            batches = [self._batch(d) for d in self.train_domains]
            x = torch.cat([b[0] for b in batches]).to(self.device)
            y = torch.cat([b[1] for b in batches]).to(self.device)
            loss = F.cross_entropy(self.model(x), y)
            if not torch.isfinite(loss):  # never a checkpoint of non-finite weights
                raise FlatlensError(f"training diverged at step {self.step} (loss {float(loss)}); lower --lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.quantized_names:
                with torch.no_grad():  # a step size must stay positive (Adam can push a small one past 0)
                    for st in step_parameters(self.model):
                        st.clamp_(min=1e-6)
            self.step += 1
            bar.update(1)
            if self.snapshots is not None and self.snapshots.due(self.step, cfg.steps):
                self.snapshots.take(self.model, self.step)
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                self.train_seconds += time.perf_counter() - t0
                rec = self.evaluate()
                rec["loss"] = float(loss.detach())
                self.history.append(rec)
                bar.set_postfix(val=f"{rec['mean_val_acc']:.3f}", test=f"{rec['mean_test_acc']:.3f}")
                eligible = (self.step == cfg.steps) if cfg.select == "last" else (cfg.bits is None or rec["quantized"])
                if eligible and (self.best is None or rec["mean_val_acc"] > self.best["record"]["mean_val_acc"]):
                    self.best = {"record": rec, **self._snapshot()}
                if partial_path:
                    atomic_torch_save(self.partial_state(), partial_path)
                t0 = time.perf_counter()
        self.train_seconds += time.perf_counter() - t0
        bar.close()
        return self.step >= cfg.steps

    def checkpoint(self) -> dict:
        cfg = self.cfg
        if self.best is None:
            self.best = {"record": self.evaluate(), **self._snapshot()}
        rec = self.best["record"]
        quant = None
        if cfg.bits is not None:
            quant = {"bits": int(cfg.bits), "per_channel": cfg.per_channel, "start_step": cfg.quant_start,
                     "layers": [n[: -len(".weight")] for n in self.best["steps"]], "steps": self.best["steps"]}
        size = packed_size(self.best["state_dict"], quant)
        return {
            "arch": self.arch,
            "state_dict": self.best["state_dict"],
            "quant": quant,
            "data": {"dataset": self.data.name, "root": self.data.root, "domains": list(self.data.domains),
                     "train_domains": self.train_domains, "test_domains": list(cfg.test_domains),
                     "split_seed": cfg.split_seed, "holdout": cfg.holdout, "image_size": self.data.image_size,
                     **({"content_sha256": self.data.content_sha256} if self.data.content_sha256 else {})},
            "train": dataclasses.asdict(cfg),
            "pairing": {"seed": int(cfg.seed), "prefix_step": None if self.prefix is None else self.prefix["step"],
                        "prefix_sha256": None if self.prefix is None else self.prefix["sha256"]},
            "history": self.history,
            "metrics": {"selected_step": rec["step"], "val_acc": rec["val_acc"], "test_acc": rec["test_acc"],
                        "mean_val_acc": rec["mean_val_acc"], "mean_test_acc": rec["mean_test_acc"],
                        "train_seconds": self.train_seconds, "packed_bytes": size["bytes"],
                        "fp32_bytes": size["fp32_bytes"], "size_ratio": size["ratio"]},
        }


def prefix_identity(state: dict) -> dict:
    """What names a shared prefix: its step and a content hash of its weights, optimizer moments and random state
    (two runs that branch from equal prefixes took the same first steps, bit for bit)."""
    from ..resident import tensor_bytes
    h = hashlib.sha256(f"{state['step']}|{state['config']['seed']}".encode())

    def feed(x):
        if isinstance(x, torch.Tensor):
            h.update(tensor_bytes(x))
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())

    feed(state["model"])
    feed(state["optimizer"])
    feed(state["rng"])
    return {"step": int(state["step"]), "sha256": h.hexdigest()}


def train_prefix(cfg: TrainConfig, path: str, *, quiet: bool = True, data: DomainData | None = None) -> dict:
    """The full-precision prefix that the runs of one seed share: `cfg` trained without quantization up to its
    quantization start, saved (atomically) as a training state at `path` (reused when it is already there).
    Returns its identity (step, content hash)."""
    if not 0 < cfg.quant_start < cfg.steps:
        raise FlatlensError(f"a shared prefix ends at the quantization start, which must lie inside training: "
                            f"quant_start {cfg.quant_start} of {cfg.steps} steps")
    if os.path.exists(path):
        from ..checkpoint import safe_load
        state = safe_load(path, what="training prefix")
        if not isinstance(state, dict) or state.get("format") != "flatlens-train-partial" or not state.get("prefix"):
            raise FlatlensError(f"{path}: not a flatlens training prefix")
        return state["prefix"]
    fp = dataclasses.replace(cfg, bits=None)
    trainer = Trainer(fp, data, quiet=quiet)
    trainer.run(stop_at=cfg.quant_start)
    state = trainer.partial_state()
    state["prefix"] = prefix_identity(state)
    atomic_torch_save(state, path)
    return state["prefix"]


def train(cfg: TrainConfig, out: str | None = None, *, resume: bool = False, quiet: bool = False,
          data: DomainData | None = None, stop_at: int | None = None, prefix: str | None = None,
          snapshot_every: int | None = None, snapshot_dtype: str = "float16") -> dict | None:
    """Train and (if `out`) write the checkpoint atomically. With `resume`, continue from `out`.partial.
    `prefix`: start from the shared full-precision prefix saved there by `train_prefix` (unless resuming from a
    partial state of this run), so runs of one seed share their first `quant_start` steps bit for bit and record
    it (`pairing`). `snapshot_every`: keep the weights every N steps in `out`.snapshots (train/snapshots.py;
    `snapshot_dtype` float16 or float32 deltas). Returns the typed checkpoint (`checkpoint.Checkpoint`), or None
    when stopped early at `stop_at`."""
    if snapshot_every is not None and not out:
        raise FlatlensError("snapshots are written beside the checkpoint: give an output path")
    trainer = Trainer(cfg, data, quiet=quiet, snapshot_every=snapshot_every, snapshot_dtype=snapshot_dtype)
    partial = f"{out}.partial" if out else None
    if resume and partial and os.path.exists(partial):
        trainer.load_partial(torch.load(partial, map_location="cpu", weights_only=True))
    elif prefix is not None:
        from ..checkpoint import safe_load
        trainer.load_partial(safe_load(prefix, what="training prefix"), branch=True)
    done = trainer.run(partial_path=partial, stop_at=stop_at)
    if not done:
        return None
    ckpt = trainer.checkpoint()
    if out:
        save_checkpoint(out, ckpt)
        if trainer.snapshots is not None:
            from .._util import sha256_file
            from .snapshots import save_snapshots, snapshot_path
            save_snapshots(snapshot_path(out), trainer.snapshots.result(sha256_file(out)))
        if partial and os.path.exists(partial):
            os.unlink(partial)
    from .._util import sha256_file
    from ..checkpoint import Checkpoint
    return Checkpoint.of(ckpt, path=out, sha256=sha256_file(out) if out else "")
