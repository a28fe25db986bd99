"""Rotated digits, the embedded default: scikit-learn's 8x8 handwritten digits (no download), upsampled to
16x16, shuffled with a seed into disjoint shards, one per domain, each rotated by its angle (as DomainBed's
RotatedMNIST: 0, 15, 30, 45, 60, 75 degrees)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .domains import DomainData

ANGLES = (0, 15, 30, 45, 60, 75)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch of images (N, C, H, W) counter-clockwise about the centre; zeros fill the corners."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotated_digits(seed: int = 0, size: int = 16, angles=ANGLES) -> DomainData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.long)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    shards = torch.tensor_split(perm, len(angles))
    tensors = {}
    for angle, idx in zip(angles, shards):
        xs = rotate(x[idx], angle)
        xs = (xs - 0.5) / 0.5  # to [-1, 1]
        tensors[str(angle)] = (xs.contiguous(), y[idx].clone())

    def get(domain, train=False):
        return TensorDataset(*tensors[str(domain)])

    return DomainData(name="rotated-digits", domains=[str(a) for a in angles], num_classes=10, in_channels=1,
                      image_size=size, get=get, tensors=tensors)
