"""Checkpoints: on disk a dict of plain containers and tensors, written atomically, loaded with
torch.load(weights_only=True) and validated; in memory a typed `Checkpoint`, built only from what the validator
accepted. Nothing here ever unpickles arbitrary objects.

Keys: format, version, arch {name, kwargs}, state_dict (latent weights, original names), quant (None or
{bits, per_channel, start_step, layers, steps}), data {dataset, root, domains, train_domains, test_domains,
split_seed, holdout, split_rule, image_size, content_sha256}, train (config), history (list of eval records),
metrics, and optionally pairing {seed, prefix_step, prefix_sha256} and provenance (imported files).
"""
from __future__ import annotations

import dataclasses
import math
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._util import FlatlensError, atomic_torch_save, check_number, sha256_file

if TYPE_CHECKING:
    from .data import DomainData
    from .objective import Objective

FORMAT = "flatlens-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "arch", "state_dict", "quant", "data", "train", "history", "metrics")


# --------------------------------------------------------------------------- the typed checkpoint
@dataclass
class Arch:
    name: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class Quant:
    """LSQ quantization of the weights named in `steps` (weight name -> learned step: one per output channel, or
    one per tensor)."""
    bits: int
    steps: dict
    per_channel: bool = True
    start_step: int | None = None
    layers: list = field(default_factory=list)


@dataclass
class DataProtocol:
    """What a model trained on: the data set, its domains split into training and held-out ones, and the seeded
    80/20 split of each training domain (`split_rule`: flatlens's or DomainBed's own)."""
    dataset: str
    train_domains: list
    test_domains: list
    split_seed: int = 0
    holdout: float = 0.2
    root: str | None = None
    domains: list | None = None
    split_rule: str = "flatlens"
    image_size: int | None = None
    content_sha256: str | None = None


@dataclass
class Pairing:
    """The runs this one is paired with: its training seed and the shared full-precision prefix it branched from."""
    seed: int
    prefix_step: int | None = None
    prefix_sha256: str | None = None


SELECT_RULES = ("best-val", "last")


@dataclass
class TrainConfig:
    """The settings of a training run (`flatlens train`, the reproduce plan), checked before any work: a
    checkpoint records them as `train`, and its loader checks each recorded value against its field's type."""
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


@dataclass
class Checkpoint:
    """A validated checkpoint, typed: what every command reads (`path` and `sha256` name the file it came from)."""
    arch: Arch
    state_dict: dict
    quant: Quant | None
    data: DataProtocol | None
    train: dict
    history: list
    metrics: dict | None
    pairing: Pairing | None = None
    provenance: dict | None = None
    path: str | None = None
    sha256: str = ""

    @classmethod
    def of(cls, d: dict, *, path=None, sha256: str = "") -> "Checkpoint":
        """The typed view of a validated checkpoint dict."""
        def typed(tp, x):
            if x is None:
                return None
            names = {f.name for f in dataclasses.fields(tp)}
            unknown = set(x) - names
            if unknown:
                raise FlatlensError(f"{tp.__name__.lower()} has unknown field(s) {', '.join(sorted(unknown))}")
            return tp(**x)
        return cls(arch=typed(Arch, d["arch"]), state_dict=d["state_dict"], quant=typed(Quant, d["quant"]),
                   data=typed(DataProtocol, d["data"]), train=d["train"], history=d["history"],
                   metrics=d["metrics"], pairing=typed(Pairing, d.get("pairing")), provenance=d.get("provenance"),
                   path=None if path is None else os.fspath(path), sha256=sha256)

    def to_dict(self) -> dict:
        """What `save_checkpoint` writes: plain containers and tensors (no path, no hash)."""
        out = {"arch": dataclasses.asdict(self.arch), "state_dict": self.state_dict,
               "quant": None if self.quant is None else dataclasses.asdict(self.quant),
               "data": None if self.data is None else dataclasses.asdict(self.data), "train": self.train,
               "history": self.history, "metrics": self.metrics}
        if self.pairing is not None:
            out["pairing"] = dataclasses.asdict(self.pairing)
        if self.provenance is not None:
            out["provenance"] = self.provenance
        return out

    @property
    def name(self) -> str:
        return os.path.basename(self.path) if self.path else "checkpoint"


def save_checkpoint(path, ckpt) -> None:
    """Write a checkpoint (a `Checkpoint` or its dict) atomically."""
    if isinstance(ckpt, Checkpoint):
        ckpt = ckpt.to_dict()
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise FlatlensError(f"checkpoint lacks {', '.join(missing)}")
    atomic_torch_save(ckpt, path)


def safe_load(path, allow: tuple = (), what: str = "checkpoint"):
    """torch.load(weights_only=True) with every failure turned into one clear line. `allow`: further harmless
    types the file may hold (the import layer's paths and namespaces); anything else is refused unrun. `what` names
    the kind of file in the messages."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FlatlensError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FlatlensError(f"{path}: is a directory, not a {what}")
    if os.path.getsize(path) == 0:
        raise FlatlensError(f"{path}: empty file, not a {what}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise FlatlensError(f"{path}: not a {what} (neither a torch zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(allow)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            raise FlatlensError(f"{path}: refused, it holds Python objects that a safe load does not run "
                                f"(not a flatlens {what})") from None
        raise FlatlensError(f"{path}: not a {what} ({first[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError,
            UnicodeDecodeError, AttributeError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "zip" in msg.lower() or "archive" in msg.lower() or isinstance(e, EOFError):
            raise FlatlensError(f"{path}: truncated or corrupt {what} (incomplete archive)") from None
        raise FlatlensError(f"{path}: not a {what} ({msg[:120]})") from None


def load_checkpoint(path) -> Checkpoint:
    """Load and validate a flatlens checkpoint; anything else gets a one-line FlatlensError (files flatlens did
    not write: `importers.load_any`)."""
    return checked(path, safe_load(path))


def checked(path, ckpt) -> Checkpoint:
    """A safely loaded object as a validated, typed flatlens checkpoint (its path and content hash added)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FlatlensError(f"{path}: not a flatlens checkpoint (another format)")
    if ckpt.get("version") != VERSION:
        raise FlatlensError(f"{path}: checkpoint version {ckpt.get('version')!r}, this flatlens reads {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise FlatlensError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        validate(ckpt)
        return Checkpoint.of(ckpt, path=path, sha256=sha256_file(path))
    except FlatlensError as e:
        raise FlatlensError(f"{path}: invalid checkpoint: {e}") from None


METRIC_TYPES = {"selected_step": int, "val_acc": dict, "test_acc": dict, "mean_val_acc": float,
                "mean_test_acc": float, "train_seconds": float, "packed_bytes": int, "fp32_bytes": int,
                "size_ratio": float}


def _need(cond, msg):
    if not cond:
        raise FlatlensError(msg)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate(ckpt: dict) -> None:
    """The whole schema, before anything is built from it: types and ranges, an architecture flatlens knows
    with arguments in range whose parameter shapes match the state dict, domains that exist for the dataset,
    quantizer steps that are finite, positive and fit their layers, finite weights, the training metrics."""
    from .models import check_arch
    sd = ckpt["state_dict"]
    _need(isinstance(sd, dict) and sd and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in sd.items()), "state_dict is not a non-empty name -> tensor map")
    bad = [k for k, v in sd.items() if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    _need(not bad, f"non-finite weights in {', '.join(bad[:3])}")
    arch = ckpt["arch"]
    _need(isinstance(arch, dict) and isinstance(arch.get("name"), str), "arch is not {name, kwargs}")
    kwargs = arch.get("kwargs", {})
    check_arch(arch["name"], kwargs)
    model = _check_shapes(arch["name"], kwargs, sd)
    bad_var = [k for k, v in sd.items() if k.endswith("running_var") and not bool((v > 0).all())]
    _need(not bad_var, f"BatchNorm variances not all positive in {', '.join(bad_var[:3])}")
    imported = isinstance(ckpt.get("provenance"), dict)
    data = ckpt["data"]
    if data is not None or not imported:
        _validate_data(data)
    _validate_quant(ckpt["quant"], sd, model)
    if ckpt.get("pairing") is not None:
        _validate_pairing(ckpt["pairing"])
    _need(isinstance(ckpt["history"], list) and all(isinstance(h, dict) for h in ckpt["history"]),
          "history is not a list of records")
    _validate_train(ckpt["train"])
    if ckpt["metrics"] is not None or not imported:  # imported files record no training metrics
        _validate_metrics(ckpt["metrics"], data)


def _validate_pairing(p) -> None:
    """Which runs this one is paired with: its seed and the shared full-precision prefix it branched from."""
    _need(isinstance(p, dict) and set(p) == {"seed", "prefix_step", "prefix_sha256"},
          "pairing is not {seed, prefix_step, prefix_sha256}")
    _need(_is_int(p["seed"]) and p["seed"] >= 0, f"pairing.seed {p['seed']!r} is not an integer >= 0")
    _need(p["prefix_step"] is None or (_is_int(p["prefix_step"]) and p["prefix_step"] >= 0),
          f"pairing.prefix_step {p['prefix_step']!r} is not an integer >= 0")
    h = p["prefix_sha256"]
    _need(h is None or (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)),
          "pairing.prefix_sha256 is not a sha256 hex digest")
    _need((h is None) == (p["prefix_step"] is None), "pairing names a prefix step without its hash, or the reverse")


def _validate_data(data) -> None:
    from .data import DATASETS, SPLIT_RULES, domain_names
    _need(isinstance(data, dict), "data is not a mapping")
    ds = data.get("dataset")
    _need(ds in DATASETS, f"unknown dataset {ds!r} ({', '.join(DATASETS)})")
    known = domain_names(ds)
    doms = data.get("domains", known)
    _need(isinstance(doms, list) and all(isinstance(d, str) for d in doms), "data.domains is not a list of names")
    for key in ("train_domains", "test_domains"):
        doms = data.get(key)
        _need(isinstance(doms, list) and doms and all(isinstance(d, str) for d in doms),
              f"data.{key} is not a non-empty list of domain names")
        unknown = [d for d in doms if d not in known]
        _need(not unknown, f"data.{key} names unknown domain(s) {', '.join(map(repr, unknown[:3]))} of {ds} "
                           f"({', '.join(known)})")
    _need(not set(data["train_domains"]) & set(data["test_domains"]), "a domain is both a train and a test domain")
    _need(_is_int(data.get("split_seed")) and 0 <= data["split_seed"] < 2 ** 63, "data.split_seed is not an integer")
    h = data.get("holdout", 0.2)
    _need(isinstance(h, float) and 0 < h < 1, f"data.holdout must lie in (0, 1); got {h!r}")
    _need(data.get("root") is None or isinstance(data["root"], str), "data.root is not a path")
    _need(data.get("split_rule", "flatlens") in SPLIT_RULES, f"data.split_rule must be one of {SPLIT_RULES}")
    size = data.get("image_size")
    _need(size is None or (_is_int(size) and 8 <= size <= 1024), f"data.image_size {size!r} is not in [8, 1024]")


def _validate_quant(q, sd, model) -> None:
    """Steps only on the weights flatlens quantizes (every conv / linear layer but the classifier), each of its
    exact shape: (out channels,) per channel, () or (1,) per tensor; dense, floating, finite and positive."""
    from .quant import default_layers
    from .quant.lsq import qrange
    if q is not None:
        _need(isinstance(q, dict) and isinstance(q.get("steps"), dict) and q["steps"], "quant has no steps")
        _need(_is_int(q.get("bits")), f"quant.bits is not an integer; got {q.get('bits')!r}")
        qrange(q["bits"])
        _need(q.get("start_step") is None or (_is_int(q["start_step"]) and q["start_step"] >= 0),
              "quant.start_step is not a step number")
        _need(isinstance(q.get("per_channel", True), bool), f"quant.per_channel is not a boolean; got "
                                                            f"{q.get('per_channel')!r}")
        quantizable = {f"{n}.weight" for n in default_layers(model)}
        for name, step in q["steps"].items():
            _need(isinstance(name, str) and name in quantizable,
                  f"quantizer step for {name!r}, which is not the weight of a quantized layer")
            _need(isinstance(step, torch.Tensor) and step.layout == torch.strided and step.dtype == torch.float32,
                  f"step of {name} is not a dense float32 tensor")
            want = [(sd[name].shape[0],)] if q.get("per_channel", True) else [(), (1,)]
            _need(tuple(step.shape) in want, f"step of {name} has shape {tuple(step.shape)}; expected "
                                             f"{' or '.join(map(str, want))} (one per output channel)")
            _need(bool(torch.isfinite(step).all()) and bool((step > 0).all()),
                  f"step of {name} is not finite and positive")


def _validate_metrics(m, data) -> None:
    """The training metrics: each of its type, every count and time finite and in range, every accuracy a fraction
    of a domain the data protocol names."""
    _need(isinstance(m, dict), "metrics is not a mapping")
    for k, tp in METRIC_TYPES.items():
        v = m.get(k)
        ok = (_is_int(v) if tp is int else isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v) if tp is float else isinstance(v, tp))
        _need(ok, f"metrics.{k} is missing or not a finite {tp.__name__}")
    for k in ("mean_val_acc", "mean_test_acc"):
        _need(0.0 <= m[k] <= 1.0, f"metrics.{k} = {m[k]} is not an accuracy")
    _need(m["selected_step"] >= 0, f"metrics.selected_step {m['selected_step']} is negative")
    for k in ("packed_bytes", "fp32_bytes"):
        _need(m[k] > 0, f"metrics.{k} {m[k]} is not positive")
    _need(m["train_seconds"] >= 0 and m["size_ratio"] > 0, "metrics.train_seconds or size_ratio out of range")
    for k, where in (("val_acc", "train_domains"), ("test_acc", "test_domains")):
        doms = (data or {}).get(where)
        for d, a in m[k].items():
            _need(isinstance(a, (int, float)) and not isinstance(a, bool) and 0.0 <= a <= 1.0,
                  f"metrics.{k}[{d!r}] = {a!r} is not an accuracy")
            _need(doms is None or d in doms, f"metrics.{k} names {d!r}, not one of data.{where}")


def _validate_train(cfg) -> None:
    """The training config, where it names TrainConfig's fields: each of the field's type (a boolean a boolean,
    not the string "true"), by the rule `train --config` applies (`TrainConfig.type_error`)."""
    _need(isinstance(cfg, dict), "train is not a mapping")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for k, v in cfg.items():
        if k not in names or v is None:
            continue
        err = TrainConfig.type_error(k, v)
        _need(err is None, f"train.{err}")


def _check_shapes(name, kwargs, sd) -> None:
    """The architecture's parameter and buffer shapes (built on the meta device: no memory) against the
    state dict: one line naming the keys or shapes that differ."""
    from .models import build
    with torch.device("meta"):
        model = build(name, **kwargs)
    ref = model.state_dict()
    want = {k: tuple(v.shape) for k, v in ref.items()}
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {want[k]}" for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3})" if len(missing) > 3 else ""))
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}" + (f" (+{len(extra) - 3})" if len(extra) > 3 else ""))
        if shapes:
            parts.append(f"shape {'; '.join(shapes[:2])}")
        raise FlatlensError(f"weights do not fit {name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}): "
                            + "; ".join(parts))
    # the architecture's dtypes exactly: a weight of another dtype is not silently cast (an int copy lost the model)
    dtypes = [f"{k} {sd[k].dtype} vs {ref[k].dtype}" for k in ref if sd[k].dtype != ref[k].dtype]
    _need(not dtypes, f"weights of another dtype than {name}'s: {'; '.join(dtypes[:2])} (cast them explicitly)")
    return model


def build_model(ckpt: Checkpoint, weights: str = "deployed") -> nn.Module:
    """The plain architecture with the checkpoint's deployed (default) or latent weights, in eval mode."""
    from .models import build
    from .quant import deployed_state_dict

    if weights not in ("deployed", "latent"):
        raise FlatlensError("weights must be 'deployed' or 'latent'")
    model = build(ckpt.arch.name, **ckpt.arch.kwargs)
    sd = ckpt.state_dict if weights == "latent" else deployed_state_dict(ckpt.state_dict, ckpt.quant)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise FlatlensError(f"{ckpt.path or 'checkpoint'}: weights do not fit {ckpt.arch.name} "
                            f"({str(e).splitlines()[0][:100]})") from None
    return model.eval()


def objective_for(ckpt: Checkpoint, x, y, *, device="cpu", weights: str = "deployed", batch_size: int = 256,
                  params=None, data_parallel: bool = False) -> Objective:
    """The Objective of a checkpoint on the samples (x, y): its deployed (default) or latent weights, the
    cross-entropy over batches of `batch_size`, BatchNorm in eval mode."""
    from .objective import Objective
    model = build_model(ckpt, weights)
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    return Objective(model, nn.CrossEntropyLoss(), batches, device=device, bn="eval", params=params,
                     data_parallel=data_parallel)


def weights_label(ckpt: Checkpoint, weights: str = "deployed") -> str:
    """What every output says about which weights were measured."""
    if ckpt.quant is None:
        return "full-precision weights"
    if weights == "latent":
        return f"latent (unquantized) weights of a {ckpt.quant.bits}-bit model"
    return f"deployed {ckpt.quant.bits}-bit weights s*round(clip(w/s))"
