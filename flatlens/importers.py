"""Checkpoints flatlens did not write, turned into the same model + data protocol every command uses.

One registry (`FORMATS`, read by the CLI's --format and by `flatlens import`), each entry a detector and a
converter to a flatlens checkpoint dict, which is then validated like any other:

- domainbed: the `.pth` files of DomainBed and of the trainers built on it (QT-DoG, SWAD):
  {"args": vars(args), "model_hparams", "test_envs", "model_dict": algorithm.state_dict()}. `args` holds
  pathlib paths, so the file is read with torch.load(weights_only=True) and an allow-list of harmless types
  (paths, argparse namespaces); anything else in it is refused and nothing in it runs. The ResNet is
  `featurizer.network.*` (fc an Identity) and `classifier.*`, or the `network.0.network.*` / `network.1.*`
  Sequential (another state: `--state network_sma`, or SWAD's averaged copy). QT-DoG's quantized convs keep
  their latent `weight` and a per-channel step `quan_w_fn.s` ([C,1,1,1]); their forward is
  s * round(clamp(w / s, -2^(b-1), 2^(b-1) - 1)), which is flatlens's deployed weight, so an imported QT-DoG
  model is measured at its deployed weights (`--bits`, default 7: the file does not record it) or latent ones.
  The data protocol comes from `args`: dataset, test envs (DomainBed's sorted folder order), holdout fraction,
  and DomainBed's own 80/20 split rule with its trial seed; `--data-root` says where the images are.
- torchvision: a plain torchvision ResNet state dict; `--arch resnet18|resnet50 --num-classes N` (checked
  against the weights) and the data from `--data FILE` or `--dataset/--data-root/--test-domain`.
- module: any model: `--model package.module:factory` builds it (the user's own code, run only because the
  user named it) and a state dict file holds its weights, loaded safely.
"""
from __future__ import annotations

import argparse
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ._util import FlatlensError, sha256_file
from .models import RESNETS

# the harmless types a foreign checkpoint may hold besides tensors and containers
SAFE_TYPES = (pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
              argparse.Namespace)


@dataclass
class ImportOptions:
    """What the file does not say (or what the user overrides)."""
    bits: int = 7
    state: str | None = None            # which model of several: "network", "network_sma", ...
    arch: str | None = None             # torchvision: resnet18 | resnet50 (DomainBed: from model_hparams)
    num_classes: int | None = None
    model: str | None = None            # module: package.module:factory
    dataset: str | None = None
    data_root: str | None = None
    test_domains: list[str] = field(default_factory=list)
    image_size: int | None = None


@dataclass(frozen=True)
class ImportFormat:
    name: str
    summary: str
    detect: Callable[[Any, ImportOptions], bool]
    convert: Callable[[Any, ImportOptions], dict]


FORMATS: dict[str, ImportFormat] = {}


def register_format(f: ImportFormat) -> ImportFormat:
    FORMATS[f.name] = f
    return f


def _plain_dict(x, what: str = "args"):
    if isinstance(x, argparse.Namespace):
        x = vars(x)
    if not isinstance(x, dict):
        raise FlatlensError(f"{what} is a {type(x).__name__}, not a mapping")
    return {k: (os.fspath(v) if isinstance(v, pathlib.PurePath) else v) for k, v in dict(x).items()}


def _protocol(dataset: str | None, test_domains: list[str], opts: ImportOptions, *, split_rule: str,
              split_seed: int = 0, holdout: float = 0.2) -> dict | None:
    """The checkpoint's `data` entry, or None when nothing names a dataset (then --data is needed)."""
    from .data import DATASETS, dataset_key, domain_names
    if dataset is None:
        return None
    key = dataset_key(dataset)
    if key is None:
        raise FlatlensError(f"unknown dataset {dataset!r} ({', '.join(DATASETS)})")
    dataset, domains = key, domain_names(key)
    if not test_domains:
        raise FlatlensError("name the held-out domain(s): --test-domain D")
    return {"dataset": dataset, "root": opts.data_root, "domains": domains,
            "train_domains": [d for d in domains if d not in test_domains], "test_domains": list(test_domains),
            "split_seed": int(split_seed), "holdout": float(holdout), "split_rule": split_rule,
            "image_size": opts.image_size}


def _resnet_name(sd: dict) -> str:
    return "resnet50" if any(k.endswith("layer1.0.conv3.weight") for k in sd) else "resnet18"


def _skeleton(arch: str, kwargs: dict, sd: dict, quant, data, provenance: dict) -> dict:
    return {"arch": {"name": arch, "kwargs": kwargs}, "state_dict": sd, "quant": quant, "data": data, "train": {},
            "history": [], "metrics": None, "provenance": provenance}


# --------------------------------------------------------------------------- domainbed (QT-DoG, SWAD)
def _detect_domainbed(raw, opts) -> bool:
    return isinstance(raw, dict) and isinstance(raw.get("model_dict"), dict) and (
        "args" in raw or "model_hparams" in raw)


def _layouts(state: str | None):
    """(features prefix, classifier prefix) candidates, the plain model first."""
    if state in (None, "featurizer"):
        yield "featurizer.network.", "classifier."
    for s in ([state] if state and state != "featurizer" else ["network"]):
        yield f"{s}.0.network.", f"{s}.1."
        yield f"{s}.module.0.network.", f"{s}.module.1."
        yield f"{s}.network.0.network.", f"{s}.network.1."


def _convert_domainbed(raw, opts: ImportOptions) -> dict:
    md = raw["model_dict"]
    args = _plain_dict(raw.get("args") or {})
    hp = _plain_dict(raw.get("model_hparams") or {}, "model_hparams")
    bad = [k for k, v in md.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FlatlensError(f"model_dict holds non-tensor value(s) under {', '.join(map(repr, bad[:3]))}")
    if not isinstance(args.get("trial_seed", 0), int) or isinstance(args.get("trial_seed", 0), bool):
        raise FlatlensError(f"args.trial_seed is not an integer; got {args.get('trial_seed')!r}")
    hold = args.get("holdout_fraction", 0.2)
    if not (isinstance(hold, (int, float)) and not isinstance(hold, bool) and 0 < hold < 1):
        raise FlatlensError(f"args.holdout_fraction is not a fraction in (0, 1); got {hold!r}")
    envs = raw.get("test_envs", args.get("test_envs"))
    if envs is not None and not (isinstance(envs, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in envs)):
        raise FlatlensError(f"test_envs is not a list of domain indices; got {envs!r}")
    feat = cls = None
    for f, c in _layouts(opts.state):
        if f + "conv1.weight" in md and c + "weight" in md:
            feat, cls = f, c
            break
    if feat is None:
        states = sorted({k.split(".")[0] for k in md})
        raise FlatlensError(f"no ResNet found under state {opts.state or 'featurizer/network'!r}; the file holds "
                            f"{', '.join(states)} (choose one with --state)")
    if cls + "weight" in md and md[cls + "weight"].dim() != 2 or any(k.startswith(cls + "0.") for k in md):
        raise FlatlensError("the classifier is not one linear layer (a nonlinear classifier): not supported")
    sd, steps, dropped = {}, {}, []
    for k, v in md.items():
        if not k.startswith(feat):
            continue
        name = k[len(feat):]
        if ".quan_w_fn." in name:
            if name.endswith(".quan_w_fn.s"):
                steps[name[: -len(".quan_w_fn.s")] + ".weight"] = v.detach().reshape(-1).clone()
            else:
                dropped.append(name)
        elif ".quan_a_fn." in name:  # weights-only QT-DoG: the activation quantizer is unused
            dropped.append(name)
        else:
            sd[name] = v.detach().clone()
    if cls + "bias" not in md:  # torchvision's fc (what the model is rebuilt as) has a bias
        raise FlatlensError(f"the classifier {cls}weight has no {cls}bias in the file; flatlens rebuilds a "
                            "torchvision ResNet, whose classifier has one")
    sd["fc.weight"], sd["fc.bias"] = md[cls + "weight"].detach().clone(), md[cls + "bias"].detach().clone()
    arch = opts.arch or ("resnet18" if hp.get("resnet18") else _resnet_name(sd))
    classes = int(sd["fc.weight"].shape[0])
    if opts.num_classes is not None and opts.num_classes != classes:
        raise FlatlensError(f"the classifier has {classes} classes, --num-classes says {opts.num_classes}")
    quant = None
    if steps:
        quant = {"bits": int(opts.bits), "per_channel": any(s.numel() > 1 for s in steps.values()),
                 "start_step": hp.get("quant_start", args.get("quant_start")), "layers": [k[:-7] for k in steps],
                 "steps": steps}
    test_envs = raw.get("test_envs", args.get("test_envs")) or []
    from .data import dataset_key, domain_names
    dataset = opts.dataset or args.get("dataset")
    key = dataset_key(dataset) if dataset else None
    names = domain_names(key) if key is not None else None
    if opts.test_domains:
        tests = list(opts.test_domains)
    elif names is not None:
        bad = [i for i in test_envs if not (isinstance(i, int) and 0 <= i < len(names))]
        if bad:
            raise FlatlensError(f"test env(s) {bad} do not exist in {dataset} ({len(names)} domains)")
        tests = [names[i] for i in test_envs]
    else:
        tests = []
    if opts.data_root is None and args.get("data_dir"):
        opts.data_root = args["data_dir"]
    data = _protocol(dataset, tests, opts, split_rule="domainbed", split_seed=int(args.get("trial_seed", 0)),
                     holdout=float(args.get("holdout_fraction", 0.2))) if dataset else None
    prov = {"source_format": "domainbed", "mapping": {"features": feat, "classifier": cls, "to": f"torchvision "
            f"{arch} (fc = the classifier)", "dropped": dropped[:20]},
            "states_in_file": sorted({k.split(".")[0] for k in md}), "algorithm": args.get("algorithm"),
            "bits": None if quant is None else f"{opts.bits} (--bits; the file does not record it)",
            "args": {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, list, type(None)))}}
    return _skeleton(arch, {"num_classes": classes}, sd, quant, data, prov)


register_format(ImportFormat("domainbed", "DomainBed / QT-DoG / SWAD .pth ({args, model_hparams, model_dict})",
                             _detect_domainbed, _convert_domainbed))


# --------------------------------------------------------------------------- torchvision
def _state_dict_of(raw):
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if isinstance(raw, dict) and raw and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in raw.items()):
        return dict(raw)
    return None


def _detect_torchvision(raw, opts) -> bool:
    sd = _state_dict_of(raw)
    return sd is not None and "conv1.weight" in sd and "fc.weight" in sd and opts.model is None


def _convert_torchvision(raw, opts: ImportOptions) -> dict:
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in _state_dict_of(raw).items()}
    if opts.arch is None:
        raise FlatlensError(f"a torchvision state dict: give --arch {'|'.join(RESNETS)} (and --num-classes N)")
    if opts.arch not in RESNETS:
        raise FlatlensError(f"--arch {opts.arch}: a torchvision state dict is one of {', '.join(RESNETS)}")
    if sd["fc.weight"].dim() != 2:
        raise FlatlensError(f"fc.weight has shape {tuple(sd['fc.weight'].shape)}; a classifier's weight is (classes, "
                            "features)")
    classes = int(sd["fc.weight"].shape[0])
    if opts.num_classes is not None and opts.num_classes != classes:
        raise FlatlensError(f"fc.weight has {classes} classes; --num-classes says {opts.num_classes}")
    data = _protocol(opts.dataset, opts.test_domains, opts, split_rule="domainbed") if opts.dataset else None
    return _skeleton(opts.arch, {"num_classes": classes}, sd, None, data,
                     {"source_format": "torchvision", "mapping": {"to": f"torchvision {opts.arch}"}})


register_format(ImportFormat("torchvision", "a torchvision ResNet state dict (--arch, --num-classes)",
                             _detect_torchvision, _convert_torchvision))


# --------------------------------------------------------------------------- module
def _detect_module(raw, opts) -> bool:
    return opts.model is not None and _state_dict_of(raw) is not None


def _convert_module(raw, opts: ImportOptions) -> dict:  # load_any has checked the factory (allow_factory)
    data = _protocol(opts.dataset, opts.test_domains, opts, split_rule="domainbed") if opts.dataset else None
    return _skeleton("module", {"factory": opts.model}, _state_dict_of(raw), None, data,
                     {"source_format": "module", "mapping": {"to": f"{opts.model}() with the file's state dict"}})


register_format(ImportFormat("module", "any model: --model package.module:factory and a state dict file",
                             _detect_module, _convert_module))


# --------------------------------------------------------------------------- loading
def load_any(path, opts: ImportOptions | None = None, fmt: str = "auto"):
    """A flatlens checkpoint, or a foreign file converted through `FORMATS` (fmt "auto": by detection), read
    safely and validated like any flatlens checkpoint; one FlatlensError otherwise."""
    from .checkpoint import FORMAT, Checkpoint, checked, safe_load, validate
    opts = opts or ImportOptions()
    if opts.model:
        from .models import allow_factory
        allow_factory(opts.model)
    raw = safe_load(path, allow=SAFE_TYPES)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        if fmt not in ("auto", "flatlens"):
            raise FlatlensError(f"{path}: a flatlens checkpoint, not --format {fmt}")
        return checked(path, raw)
    if fmt == "auto":
        found = [f for f in FORMATS.values() if f.detect(raw, opts)]
        if not found:
            raise FlatlensError(f"{path}: not a flatlens checkpoint, nor one of the import formats "
                                f"({', '.join(FORMATS)}); a plain state dict needs --arch or --model")
        f = found[0]
    else:
        if fmt not in FORMATS:
            raise FlatlensError(f"unknown --format {fmt!r} ({', '.join(['auto', 'flatlens', *FORMATS])})")
        f = FORMATS[fmt]
        if not f.detect(raw, opts):
            raise FlatlensError(f"{path}: does not look like a {fmt} file ({f.summary})")
    try:
        ckpt = f.convert(raw, opts)
    except FlatlensError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as e:
        # a foreign file's fields of unexpected types or shapes: the file is malformed, not flatlens
        raise FlatlensError(f"{path}: cannot import as {f.name}: malformed file ({type(e).__name__}: "
                            f"{str(e)[:100]})") from None
    ckpt["provenance"].update({"source_path": os.fspath(path), "source_sha256": sha256_file(path)})
    try:
        validate(ckpt)
        return Checkpoint.of(ckpt, path=path, sha256=ckpt["provenance"]["source_sha256"])
    except FlatlensError as e:
        raise FlatlensError(f"{path}: cannot import as {f.name}: {e}") from None


def import_to_file(path, out, opts: ImportOptions, fmt: str = "auto"):
    """`flatlens import`: convert once into a flatlens checkpoint with its provenance recorded."""
    from .checkpoint import save_checkpoint
    ckpt = load_any(path, opts, fmt)
    if ckpt.provenance is None:
        raise FlatlensError(f"{path} is a flatlens checkpoint already")
    save_checkpoint(out, ckpt)
    return ckpt
