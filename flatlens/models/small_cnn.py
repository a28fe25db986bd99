"""A small CNN for 16x16 rotated digits (~57k parameters) and a tiny MLP for tests."""
from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """conv-BN-ReLU x3 (two max-pools), global average pool, linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class TinyMLP(nn.Module):
    def __init__(self, in_features: int = 4, hidden: int = 6, num_classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))
