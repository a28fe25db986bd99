"""Domain-generalization data: the embedded sets (rotated digits, digits-dg), Fashion-MNIST idx files and
DomainBed image folders, all named in one registry (registry.REGISTRY)."""
from __future__ import annotations

from .._util import FlatlensError
from .domains import SPLIT_RULES, DomainData, split_indices
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


__all__ = ["DomainData", "split_indices", "SPLIT_RULES", "for_protocol", "protocol_split", "rotated_digits", "load",
           "DATASETS", "DOMAINBED", "ANGLES", "DEFAULT", "dataset_key", "dataset_spec", "domain_names", "REGISTRY",
           "DatasetSpec", "TRAIN_DEFAULTS"]
