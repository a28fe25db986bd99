"""LSQ weight quantizer (Esser et al. 2020), signed, per-channel or per-tensor.

    w_q = s * round(clip(w / s, -Q_N, Q_P)),   Q_N = 2^(b-1),  Q_P = 2^(b-1) - 1
Straight-through rounding; gradients: dw_q/dw = 1 inside the clip range, else 0;
dw_q/ds = round(w/s) - w/s inside, -Q_N / Q_P outside, scaled by g = 1 / sqrt(Q_P * numel(w)).
Initialization: s = 2 mean|w| / sqrt(Q_P) (per output channel when per-channel).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._util import FlatlensError


def qrange(bits: int) -> tuple[int, int]:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise FlatlensError(f"bits must be an integer from 2 to 8; got {bits!r}")
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


def scale_grad(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity in the forward pass, gradient multiplied by g in the backward pass."""
    return x * g + (x - x * g).detach()


def step_shape(weight_shape, per_channel: bool):
    return (weight_shape[0],) + (1,) * (len(weight_shape) - 1) if per_channel else ()


def fake_quantize(w: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """Deployed weights s * round(clip(w / s, -Q_N, Q_P)) (no gradient tricks); step broadcast per channel."""
    qn, qp = qrange(bits)
    s = step.reshape(step_shape(w.shape, step.numel() > 1)) if step.dim() <= 1 else step
    return torch.clamp(torch.round(w / s), -qn, qp) * s


def integer_codes(w: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    qn, qp = qrange(bits)
    s = step.reshape(step_shape(w.shape, step.numel() > 1))
    return torch.clamp(torch.round(w / s), -qn, qp).to(torch.int8)


def init_step(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    _, qp = qrange(bits)
    a = w.detach().abs()
    m = a.reshape(a.shape[0], -1).mean(1) if per_channel else a.mean()
    return (2 * m / math.sqrt(qp)).clamp_min(1e-8)


class LSQ(nn.Module):
    """A parametrization of a weight tensor: returns its LSQ-quantized value; owns the learned step."""

    def __init__(self, weight: torch.Tensor, bits: int, per_channel: bool = True):
        super().__init__()
        self.bits = bits
        self.qn, self.qp = qrange(bits)
        self.per_channel = per_channel
        self.step = nn.Parameter(init_step(weight, bits, per_channel))
        self.grad_scale = 1.0 / math.sqrt(self.qp * weight.numel())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = scale_grad(self.step, self.grad_scale).reshape(step_shape(w.shape, self.per_channel))
        return round_ste(torch.clamp(w / s, -self.qn, self.qp)) * s
