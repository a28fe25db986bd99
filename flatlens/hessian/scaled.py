"""S H S for a diagonal scaling S = diag(s): the operator whose trace is the step-weighted Hessian trace

    tr(S H S) = sum_i s_i^2 H_ii,

the quantity the quantization-noise test predicts from ((1/24) of it). A `CurvatureOperator` over another one,
so every trace estimator runs on it unchanged: Hutch++ deflates its top directions exactly, which the plain
Hutchinson diagonal cannot.
"""
from __future__ import annotations

import torch

from .._util import FlatlensError
from .operator import operator_of


class ScaledHessian:
    def __init__(self, obj, s: torch.Tensor):
        self.base = operator_of(obj)
        if s.shape != (self.base.num_params,):
            raise FlatlensError(f"the scaling has {tuple(s.shape)} entries; the objective has "
                                f"{self.base.num_params}")
        self.s = s.to(self.base.device, self.base.dtype)
        self.num_params, self.names, self.offsets = self.base.num_params, self.base.names, self.base.offsets
        self.device, self.dtype = self.base.device, self.base.dtype

    @property
    def n_hvp(self) -> int:
        return self.base.n_hvp

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self.s * self.base.hvp(self.s * v)          # S H S v

    def hvp_many(self, V: torch.Tensor, *, batched: bool | str = "auto") -> torch.Tensor:
        return self.s * self.base.hvp_many(self.s * V, batched=batched)

    def batched_hvps_pay(self) -> bool:
        return self.base.batched_hvps_pay()

    @property
    def hvp_block(self) -> int:
        return self.base.hvp_block

    def describe(self) -> dict:
        return {**self.base.describe(), "operator": "S H S (diagonal step scaling)"}
