"""Swap full-precision conv/linear weights for LSQ-quantized ones (torch parametrizations), and move
between the parametrized model and plain state dicts under the original architecture's names."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._util import FlatlensError
from ..results import Result, register
from ..stats import UniformFit, kl_uniform
from .lsq import LSQ, fake_quantize, integer_codes, qrange

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_ORIG = ".parametrizations.weight.original"
_STEP = ".parametrizations.weight.0.step"


def default_layers(model: nn.Module) -> list[str]:
    """Every conv and linear layer except the last one registered (the classifier)."""
    names = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
    return names[:-1]


def quantize_model(model: nn.Module, bits: int, *, per_channel: bool = True, layers=None,
                   steps: dict | None = None) -> list[str]:
    """Parametrize the weights of `layers` (module names; default all conv/linear but the classifier) with
    LSQ in place. Returns the quantized weight names ("<module>.weight"). `steps` (weight name -> tensor)
    restores learned steps instead of the LSQ initialization."""
    qrange(bits)
    modules = dict(model.named_modules())
    layers = default_layers(model) if layers is None else list(layers)
    out = []
    for name in layers:
        m = modules.get(name)
        if not isinstance(m, QUANTIZABLE):
            raise FlatlensError(f"layer {name!r} is not a conv or linear module")
        if parametrize.is_parametrized(m, "weight"):
            raise FlatlensError(f"layer {name!r} is quantized already")
        q = LSQ(m.weight, bits, per_channel).to(m.weight.device)
        if steps is not None:
            with torch.no_grad():
                q.step.copy_(steps[f"{name}.weight"].reshape(q.step.shape))
        parametrize.register_parametrization(m, "weight", q)
        out.append(f"{name}.weight")
    return out


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.step for m in model.modules() if isinstance(m, LSQ)]


def latent_state(model: nn.Module) -> tuple[dict, dict]:
    """(state_dict under the original names with latent weights, {weight name: step})."""
    sd, steps = {}, {}
    for k, v in model.state_dict().items():
        if k.endswith(_ORIG):
            sd[k[: -len(_ORIG)] + ".weight"] = v.detach().clone()
        elif k.endswith(_STEP):
            steps[k[: -len(_STEP)] + ".weight"] = v.detach().clone()
        else:
            sd[k] = v.detach().clone()
    return sd, steps


def bits_and_steps(quant) -> tuple[int, dict]:
    """(bits, weight name -> step) of a quantizer description: a checkpoint's `Quant`, or its dict."""
    if isinstance(quant, dict):
        return quant["bits"], quant["steps"]
    return quant.bits, quant.steps


def deployed_state_dict(state_dict: dict, quant) -> dict:
    """The weights a quantized model computes with: s * round(clip(w / s)), under the original names."""
    if not quant:
        return dict(state_dict)
    bits, steps = bits_and_steps(quant)
    out = dict(state_dict)
    for name, step in steps.items():
        out[name] = fake_quantize(state_dict[name], step.to(state_dict[name].device), bits)
    return out


def packed_size(state_dict: dict, quant) -> dict:
    """Bytes of the deployed model with quantized weights packed at `bits` (plus one fp32 step per channel)
    against all floating tensors in fp32."""
    fp32 = sum(v.numel() * 4 for v in state_dict.values() if torch.is_floating_point(v))
    packed = fp32
    if quant:
        bits, steps = bits_and_steps(quant)
        for name, step in steps.items():
            n = state_dict[name].numel()
            packed += math.ceil(n * bits / 8) + step.numel() * 4 - n * 4
    return {"bytes": int(packed), "fp32_bytes": int(fp32), "ratio": packed / fp32 if fp32 else 1.0}


def export_integer(state_dict: dict, quant) -> dict:
    """Integer export: {weight name: {"codes": int8 tensor, "step": fp32 tensor, "bits"}}, other tensors as is.
    codes * step (step broadcast per output channel) equals the deployed weight exactly."""
    out = {}
    bits, steps = bits_and_steps(quant) if quant else (None, {})
    for k, v in state_dict.items():
        if k in steps:
            s = steps[k]
            out[k] = {"codes": integer_codes(v, s, bits), "step": s.clone(), "bits": bits}
        else:
            out[k] = v
    return out


@dataclass
class LayerQuantError:
    fit: UniformFit
    clipped_fraction: float
    n: int


@register
@dataclass
class QuantErrorResult(Result):
    """Histogram of the quantization error r = (w_q - w) / s against U(-1/2, 1/2), with a bias-corrected KL
    divergence and the G-test of uniformity (stats.kl_uniform), over all quantized layers and per layer."""
    edges: list[float]
    counts: list[float]
    fit: UniformFit
    per_layer: dict[str, LayerQuantError]
    bits: int


def quantization_error(state_dict: dict, quant, bins: int = 50) -> QuantErrorResult:
    """The quantization error D = w_q - w of each quantized layer, in units of its step: r = D / s lies in
    [-1/2, 1/2] for weights inside the clip range (clipped weights are counted apart). The plug-in KL of a
    50-bin histogram has a bias floor (bins - 1) / (2N) under exact uniformity, so the corrected value and
    the G-test are what tell a real departure (the form of the paper's Fig. 2, with the bias removed)."""
    edges = torch.linspace(-0.5, 0.5, bins + 1)
    total = torch.zeros(bins)
    per_layer = {}
    bits, steps = bits_and_steps(quant)
    for name, step in steps.items():
        w = state_dict[name].float()
        s = step.float().reshape((-1,) + (1,) * (w.dim() - 1)) if step.numel() > 1 else step.float()
        r = (fake_quantize(w, step.float(), bits) - w) / s
        inside = r.abs() <= 0.5 + 1e-6
        counts = torch.histc(r[inside].clamp(-0.5, 0.5), bins=bins, min=-0.5, max=0.5)
        total += counts
        per_layer[name] = LayerQuantError(fit=kl_uniform(counts.tolist()),
                                          clipped_fraction=float(1 - inside.float().mean()), n=int(w.numel()))
    return QuantErrorResult(edges=edges.tolist(), counts=total.tolist(), fit=kl_uniform(total.tolist()),
                            per_layer=per_layer, bits=int(bits))
