"""Any flatlens curvature as a `scipy.sparse.linalg.LinearOperator`, so scipy's routines (eigsh, lobpcg, cg, ...)
run on it: float64 vectors on the host in, float64 out; each product moves the vector to the operator's device and
dtype, applies the operator there (the model stays where it is), and brings the result back.

    A x = M x,   A X = [M x_1, ..., M x_m] (one hvp_many call),   A' = A (every curvature here is symmetric)
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from .operator import operator_of


def _to_device(op, x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(op.device, op.dtype)


def as_linear_operator(x) -> LinearOperator:
    """A scipy LinearOperator of `x`: an Objective (its Hessian) or any `CurvatureOperator` (GGN, Fisher, S H S,
    a caller's own). Products count in the operator's `n_hvp`."""
    op = operator_of(x)
    d = op.num_params

    def matvec(v):
        return op.hvp(_to_device(op, v).reshape(-1)).double().cpu().numpy()

    def matmat(V):
        V = np.asarray(V)
        return op.hvp_many(_to_device(op, V.T)).double().cpu().numpy().T

    return LinearOperator((d, d), matvec=matvec, rmatvec=matvec, matmat=matmat, rmatmat=matmat, dtype=np.float64)
