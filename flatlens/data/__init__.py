"""Domain-generalization data: the embedded sets (rotated digits, digits-dg), Fashion-MNIST idx files and
DomainBed image folders, all named in one registry (registry.REGISTRY)."""
from __future__ import annotations

import hashlib

import torch

from .._util import FlatlensError
from .domains import SPLIT_RULES, DomainData, gather, split_indices
from .digits import ANGLES, rotated_digits
from .registry import DOMAINBED, REGISTRY, TRAIN_DEFAULTS, DatasetSpec

DEFAULT = "rotated-digits"  # embedded: needs no files
DATASETS = tuple(REGISTRY)


def _norm(name) -> str:
    return str(name).lower().replace("_", "").replace("-", "")


_KEYS = {_norm(k): k for k in REGISTRY}


def dataset_key(name) -> str | None:
    """The registry name of a dataset as users spell it ('PACS', 'office_home', 'Terra-Incognita'), or None."""
    return _KEYS.get(_norm(name))


def dataset_spec(name) -> DatasetSpec:
    """The registry entry of a dataset as users spell it; one FlatlensError naming the choices if unknown."""
    key = dataset_key(name)
    if key is None:
        raise FlatlensError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return REGISTRY[key]


def domain_names(key: str) -> list[str]:
    """The domains of a dataset by registry name, in its canonical order (DomainBed's test_envs index it)."""
    return list(REGISTRY[key].domains)


def load(name: str, root: str | None = None, *, seed: int = 0, image_size: int | None = None) -> DomainData:
    """Load a dataset by name (see DATASETS); sets that need files read them under `root` (--data-root)."""
    spec = dataset_spec(name)
    if spec.needs_root and not root:
        raise FlatlensError(f"--data-root is required for {name}: {spec.root_hint}")
    return spec.loader(root, seed, image_size)


def for_protocol(meta) -> DomainData:
    """The data set a checkpoint's protocol (`checkpoint.DataProtocol`) names, built once per process for each
    protocol (a cached rerun reads hundreds of records of a few protocols)."""
    key = (meta.dataset, meta.root, meta.split_seed, meta.image_size)
    if key not in _LOADED:
        _LOADED[key] = load(meta.dataset, meta.root, seed=meta.split_seed, image_size=meta.image_size)
    return _LOADED[key]


_LOADED: dict = {}


def protocol_split(meta, data: DomainData, domain: str):
    """(in_idx, out_idx) of a source domain under the checkpoint's split rule, seed and holdout."""
    return split_indices(data.size(domain), data.index(domain), meta.split_seed, meta.holdout, meta.split_rule)


def select_data(meta, split: str, samples: int, seed: int):
    """The evaluation samples of a checkpoint's protocol (`checkpoint.DataProtocol`): 'train' = the source domains'
    in-splits (the data it trained on), 'test' = the held-out domain(s). A seeded subset of `samples` (all if
    fewer), as (x, y, info)."""
    if split not in ("train", "test"):
        raise FlatlensError(f"split must be train or test; got {split!r}")
    if meta is None:
        raise FlatlensError("this checkpoint records no data protocol (an imported state dict): pass --data FILE, "
                            "or --dataset NAME --data-root DIR --test-domain D")
    data = for_protocol(meta)
    pool = []
    if split == "train":
        for d in meta.train_domains:
            idx_in, _ = protocol_split(meta, data, d)
            pool += [(d, int(i)) for i in idx_in]
    else:
        for d in meta.test_domains:
            pool += [(d, i) for i in range(data.size(d))]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=g)[: min(samples, len(pool))].sort().values
    chosen = [pool[i] for i in order]
    xs, ys = [], []
    for d in dict.fromkeys(c[0] for c in chosen):
        idx = torch.tensor([i for dd, i in chosen if dd == d])
        if d in data.tensors:
            xs.append(data.tensors[d][0][idx])
            ys.append(data.tensors[d][1][idx])
        else:
            x, y = gather(data.get(d, False), idx)
            xs.append(x)
            ys.append(y)
    digest = hashlib.sha256(repr(chosen).encode()).hexdigest()[:16]
    info = {"dataset": meta.dataset, "split": split, "domains": sorted({c[0] for c in chosen}),
            "n": len(chosen), "seed": seed, "indices_sha256": digest}
    return torch.cat(xs), torch.cat(ys), info


__all__ = ["DomainData", "split_indices", "SPLIT_RULES", "for_protocol", "protocol_split", "select_data",
           "rotated_digits", "load", "DATASETS", "DOMAINBED", "ANGLES", "DEFAULT", "dataset_key", "dataset_spec",
           "domain_names", "REGISTRY", "DatasetSpec", "TRAIN_DEFAULTS"]
