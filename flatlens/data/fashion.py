"""rotated-fashion-mnist: Fashion-MNIST (Zalando SE, MIT) in DomainBed's RotatedMNIST layout. The 70,000
images (train then t10k) are shuffled with a fixed seed and dealt into six disjoint shards as DomainBed deals
them (shard i = shuffled[i::6]); shard i is rotated by ANGLES[i] = 0, 15, ..., 75 degrees. 28 x 28 (or area-
downsampled to 16 x 16 after the rotation), one channel, pixels in [0, 1]."""
from __future__ import annotations

import os

import numpy as np
import torch

from .._util import FlatlensError, derive_seed
from .digits import ANGLES, downsample, rotate
from .domains import DomainData, in_memory
from .idx import read_idx

NAME = "rotated-fashion-mnist"
ROOT = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs the four files
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SUBFOLDERS = ("", os.path.join("FashionMNIST", "raw"))  # the folder itself, or torchvision's layout under it
SIZES = (28, 16)
SEED = 0  # the shuffle; the content is fixed (a training run's split seed only draws its 80/20 splits)


def find(root: str, stem: str) -> str:
    """The path of `stem` or `stem`.gz under `root` (or its FashionMNIST/raw)."""
    for sub in SUBFOLDERS:
        for name in (stem + ".gz", stem):
            path = os.path.join(root, sub, name)
            if os.path.isfile(path):
                return path
    names = ", ".join(f"{s}(.gz)" for pair in FILES.values() for s in pair)
    raise FlatlensError(f"no {stem}(.gz) under {root}: expected Fashion-MNIST's idx files {names} "
                        f"(e.g. {ROOT}, from apt-get install dataset-fashion-mnist)")


def locate(root: str) -> dict[str, str]:
    """{stem: path} of all four idx files under `root` as the loader resolves them (the folder itself or
    torchvision's FashionMNIST/raw under it, each file plain or .gz); FlatlensError naming the first missing one.
    Callers that check for the files first (benchmarks/gpu_suite.py) use this, so they accept what the loader
    accepts."""
    return {stem: find(root, stem) for pair in FILES.values() for stem in pair}


def read_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 28, 28), labels int64 (n,)) of one of FILES' splits, checked against each other."""
    img_path, lab_path = (find(root, s) for s in FILES[split])
    x = read_idx(img_path, ndim=3, dtype=np.uint8)
    y = read_idx(lab_path, ndim=1, dtype=np.uint8)
    if x.shape[1:] != (28, 28):
        raise FlatlensError(f"{img_path}: images are {x.shape[1]}x{x.shape[2]}; Fashion-MNIST's are 28x28")
    if len(x) != len(y):
        raise FlatlensError(f"{img_path} holds {len(x)} images but {lab_path} {len(y)} labels")
    if len(y) and y.max() > 9:
        raise FlatlensError(f"{lab_path}: label {int(y.max())} is not a class 0..9")
    return x, y.astype(np.int64)


def rotated_fashion_mnist(root: str, image_size: int | None = None, angles=ANGLES) -> DomainData:
    size = 28 if image_size is None else image_size
    if size not in SIZES:
        raise FlatlensError(f"{NAME} images are 28 px (native) or 16 px (area-downsampled); got image_size {size!r}")
    parts = [read_split(root, s) for s in FILES]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(derive_seed(SEED, NAME, "shuffle")))
    tensors = {}
    for i, angle in enumerate(angles):
        idx = perm[i::len(angles)]
        xs = rotate(x[idx].unsqueeze(1).float().div(255.0), angle)
        tensors[str(angle)] = (downsample(xs, size).contiguous(), y[idx].clone())
    return in_memory(NAME, tensors, num_classes=10, root=root)
