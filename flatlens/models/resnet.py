"""torchvision ResNet-18 / ResNet-50 with a new classifier head (needs the torchvision extra)."""
from __future__ import annotations

import os

from torch import nn

from .._util import FlatlensError

WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}


def resnet(name: str, num_classes: int = 7, pretrained: bool = False, **_) -> nn.Module:
    try:
        import torchvision
    except Exception as e:
        raise FlatlensError(f"{name} needs torchvision: pip install 'flatlens[vision]' ({type(e).__name__})") from None
    ctor = getattr(torchvision.models, name)
    weights = None
    if pretrained:
        enum = getattr(torchvision.models, WEIGHTS[name]).IMAGENET1K_V1
        from torch.hub import get_dir
        cached = os.path.join(get_dir(), "checkpoints", os.path.basename(enum.url))
        if not os.path.exists(cached):
            raise FlatlensError(f"ImageNet weights for {name} are not available offline: put "
                                f"{os.path.basename(enum.url)} in {os.path.dirname(cached)} (or drop --pretrained)")
        weights = enum
    model = ctor(weights=weights)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
