"""S H S for a diagonal scaling S = diag(s): the operator whose trace is the step-weighted Hessian trace

    tr(S H S) = sum_i s_i^2 H_ii,

the quantity the quantization-noise test predicts from ((1/24) of it). It has the Objective's HVP interface
(hvp, hvp_many, num_params, names, offsets, device, dtype, n_hvp, describe), so every trace estimator runs on
it unchanged: Hutch++ deflates its top directions exactly, which the plain Hutchinson diagonal cannot.
"""
from __future__ import annotations

import torch

from .._util import FlatlensError


class ScaledHessian:
    def __init__(self, obj, s: torch.Tensor):
        if s.shape != (obj.num_params,):
            raise FlatlensError(f"the scaling has {tuple(s.shape)} entries; the objective has {obj.num_params}")
        self.obj = obj
        self.s = s.to(obj.device, obj.dtype)
        self.num_params, self.names, self.offsets = obj.num_params, obj.names, obj.offsets
        self.device, self.dtype = obj.device, obj.dtype

    @property
    def n_hvp(self) -> int:
        return self.obj.n_hvp

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.s * self.obj.hvp(self.s * v)          # S H S v

    def hvp_many(self, V: torch.Tensor, **kw) -> torch.Tensor:
        return self.s * self.obj.hvp_many(self.s * V, **kw)

    def batched_hvps_pay(self) -> bool:
        return self.obj.batched_hvps_pay()

    @property
    def hvp_block(self) -> int:
        return self.obj.hvp_block

    def describe(self) -> dict:
        return {**self.obj.describe(), "operator": "S H S (diagonal step scaling)"}
