"""Domain-generalization data: rotated digits (embedded default) and DomainBed image folders."""
from __future__ import annotations

from .._util import FlatlensError
from .domains import SPLIT_RULES, DomainData, split_indices
from .digits import ANGLES, rotated_digits

DOMAINBED = {
    "pacs": ("PACS", ["art_painting", "cartoon", "photo", "sketch"]),
    "vlcs": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"]),
    "officehome": ("office_home", ["Art", "Clipart", "Product", "Real World"]),
    "terraincognita": ("terra_incognita", ["location_100", "location_38", "location_43", "location_46"]),
    "domainnet": ("domain_net", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]),
}
DEFAULT = "rotated-digits"  # embedded: needs no files
DATASETS = (DEFAULT,) + tuple(DOMAINBED)


def dataset_key(name) -> str | None:
    """The registry name of a dataset as users spell it ('PACS', 'office_home', 'Terra-Incognita'), or None."""
    if name == DEFAULT:
        return DEFAULT
    key = str(name).lower().replace("_", "").replace("-", "")
    return key if key in DOMAINBED else None


def domain_names(key: str) -> list[str]:
    """The domains of a dataset by registry name, in its canonical order (DomainBed's test_envs index it)."""
    return [str(a) for a in ANGLES] if key == DEFAULT else list(DOMAINBED[key][1])


def load(name: str, root: str | None = None, *, seed: int = 0, image_size: int | None = None) -> DomainData:
    """Load a dataset by name: 'rotated-digits' (no root) or a DomainBed set under `root`."""
    key = dataset_key(name)
    if key == DEFAULT:
        return rotated_digits(seed=seed)
    if key is not None:
        if not root:
            raise FlatlensError(f"--data-root is required for {name}")
        from .domainbed import image_folders
        folder, domains = DOMAINBED[key]
        return image_folders(key, root, folder, domains, image_size=image_size or 224)
    raise FlatlensError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def for_protocol(meta: dict) -> DomainData:
    """The data set a checkpoint's protocol names (its `data` entry)."""
    return load(meta["dataset"], meta.get("root"), seed=meta["split_seed"], image_size=meta.get("image_size"))


def protocol_split(meta: dict, data: DomainData, domain: str):
    """(in_idx, out_idx) of a source domain under the checkpoint's split rule, seed and holdout."""
    return split_indices(data.size(domain), data.index(domain), meta["split_seed"], meta.get("holdout", 0.2),
                         meta.get("split_rule", "flatlens"))


__all__ = ["DomainData", "split_indices", "SPLIT_RULES", "for_protocol", "protocol_split", "rotated_digits", "load", "DATASETS", "DOMAINBED", "ANGLES",
           "DEFAULT", "dataset_key", "domain_names"]
