"""Rotated digits, the embedded default: scikit-learn's 8x8 handwritten digits (no download), upsampled to
16x16, shuffled with a seed into disjoint shards, one per domain, each rotated by its angle (as DomainBed's
RotatedMNIST: 0, 15, 30, 45, 60, 75 degrees)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .domains import DomainData, in_memory

ANGLES = (0, 15, 30, 45, 60, 75)


def rotate(x: torch.Tensor, degrees) -> torch.Tensor:
    """Rotate a batch of images (N, C, H, W) counter-clockwise about the centre; zeros fill the corners.
    `degrees`: one angle for the whole batch, or one per image (a sequence or tensor of N angles)."""
    a = torch.as_tensor(degrees, dtype=torch.float64).mul(math.pi / 180).expand(len(x))  # as math.radians
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
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
    return in_memory("rotated-digits", tensors, num_classes=10)


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample a batch (N, C, H, W) to size x size: torch's "area" mode (adaptive average pooling, each
    output pixel the mean of the input window it covers), so pixels stay within the input's range."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")
