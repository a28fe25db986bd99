"""Tiny seeded networks and data shared by tests."""
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.bn(self.conv(x)))).flatten(1))


def tiny_cnn(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = TinyCNN()
    with torch.no_grad():  # non-trivial running statistics, so eval BN differs from batch statistics
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.to(dtype)


def tiny_mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    from flatlens.models import TinyMLP
    return TinyMLP(4, 6, 3).to(dtype)


def image_data(n=24, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def vector_data(n=30, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)
