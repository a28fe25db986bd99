"""The Lanczos recurrence with full reorthogonalization, shared by the eigenvalue solver (which stops on its
Ritz values' error bounds) and stochastic Lanczos quadrature (which runs a fixed number of steps).

    w = H v_j - alpha_j v_j - beta_{j-1} v_{j-1},   alpha_j = v_j' H v_j,   beta_j = ||w||,   v_{j+1} = w / beta_j
with w reorthogonalized twice against every earlier v (Gram-Schmidt, "twice is enough"), so the basis stays
orthonormal to working precision and T_j = tridiag(alpha, beta) is V_j' H V_j."""
from __future__ import annotations

from typing import Iterator

import torch


def lanczos(obj, v: torch.Tensor, m: int) -> Iterator[tuple[list, list, float, list]]:
    """Up to m steps from v; after step j yields (alpha[0..j], beta[0..j-1], beta_j, V[0..j]) (the lists are
    live: copy to keep). Ends early at an invariant subspace (beta_j ~ 0, after yielding it)."""
    V, alpha, beta = [], [], []
    v = v / v.norm()
    w_prev, b_prev = None, 0.0
    for _ in range(m):
        V.append(v)
        w = obj.hvp(v)
        a = float(w @ v)
        w = w - a * v - (b_prev * w_prev if w_prev is not None else 0.0)
        Vm = torch.stack(V)
        for _ in range(2):
            w = w - Vm.T @ (Vm @ w)
        alpha.append(a)
        b = float(w.norm())
        yield alpha, beta, b, V
        if b <= 1e-12 * max(1.0, max(abs(x) for x in alpha)):
            return
        beta.append(b)
        w_prev, b_prev, v = v, b, w / b
