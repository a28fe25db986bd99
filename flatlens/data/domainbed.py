"""DomainBed image folders: root/<Dataset>/<domain>/<class>/<image>, domain index in sorted folder order,
224 px, ImageNet normalization, DomainBed's training augmentation. Needs the torchvision extra."""
from __future__ import annotations

import os

from .._util import FlatlensError
from .domains import DomainData

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _torchvision():
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets, transforms
    except Exception as e:  # ImportError, or a broken build
        raise FlatlensError("DomainBed image folders need torchvision: pip install 'flatlens[vision]' "
                            f"({type(e).__name__})") from None
    return datasets, transforms


def transforms_for(image_size: int):
    _, T = _torchvision()
    evaluate = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(MEAN, STD)])
    augment = T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.7, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.3),
        T.RandomGrayscale(),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    return augment, evaluate


class _WithTransform:
    def __init__(self, folder, transform):
        self.folder, self.transform = folder, transform

    def __len__(self):
        return len(self.folder.samples)

    def __getitem__(self, i):
        path, label = self.folder.samples[i]
        return self.transform(self.folder.loader(path)), label


def image_folders(key: str, root: str, folder: str, expected: list[str], image_size: int = 224) -> DomainData:
    datasets, _ = _torchvision()
    base = os.path.join(root, folder) if os.path.isdir(os.path.join(root, folder)) else root
    layout = f"{root}/{folder}/<domain>/<class>/<image> with domains {', '.join(expected)}"
    if not os.path.isdir(base):
        raise FlatlensError(f"no data at {root}: expected {layout}")
    domains = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    if len(domains) < 2:
        raise FlatlensError(f"found {len(domains)} domain folder(s) under {base}: expected {layout}")
    missing = [d for d in expected if d not in domains]
    if missing and key != "custom":
        raise FlatlensError(f"missing domain folder(s) {', '.join(missing)} under {base}: expected {layout}")
    folders = {}
    for d in domains:
        try:
            folders[d] = datasets.ImageFolder(os.path.join(base, d))
        except (FileNotFoundError, RuntimeError) as e:
            raise FlatlensError(f"bad domain folder {d!r} under {base}: {e}; expected {layout}") from None
    classes = folders[domains[0]].classes
    for d, f in folders.items():
        if f.classes != classes:
            raise FlatlensError(f"domain {d!r} has classes {f.classes[:5]}..., others {classes[:5]}...")
    augment, evaluate = transforms_for(image_size)

    def get(domain, train=False):
        return _WithTransform(folders[str(domain)], augment if train else evaluate)

    return DomainData(name=key, domains=domains, num_classes=len(classes), in_channels=3,
                      image_size=image_size, get=get, root=root)
