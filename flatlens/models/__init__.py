"""Architectures: a small CNN for the digits, torchvision ResNets for DomainBed images."""
from __future__ import annotations

from torch import nn

from .._util import FlatlensError
from .small_cnn import SmallCNN, TinyMLP


def build(name: str, **kwargs) -> nn.Module:
    """Build an architecture by name with its kwargs (what a checkpoint's `arch` records)."""
    if name == "small_cnn":
        return SmallCNN(**kwargs)
    if name == "tiny_mlp":
        return TinyMLP(**kwargs)
    if name in ("resnet18", "resnet50"):
        from .resnet import resnet
        return resnet(name, **kwargs)
    raise FlatlensError(f"unknown architecture {name!r} (small_cnn, tiny_mlp, resnet18, resnet50)")


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Keep every BatchNorm in eval mode (running statistics, no updates) even under model.train(),
    as DomainBed's ResNet does; the affine parameters still train."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.eval()
        m.train = lambda mode=True, _m=m: _m  # noqa: E731  stays in eval
    return model


__all__ = ["SmallCNN", "TinyMLP", "build", "freeze_batchnorm"]
