"""The Lanczos recurrence with full reorthogonalization, shared by the eigenvalue solver (which stops on its
Ritz values' error bounds) and stochastic Lanczos quadrature (which runs a fixed number of steps).

    w = H v_j - alpha_j v_j - beta_{j-1} v_{j-1},   alpha_j = v_j' H v_j,   beta_j = ||w||,   v_{j+1} = w / beta_j
with w reorthogonalized twice against every earlier v (Gram-Schmidt, "twice is enough"), so the basis stays
orthonormal to working precision and T_j = tridiag(alpha, beta) is V_j' H V_j.

A `LanczosRun` holds one recurrence and leaves the HVP to its caller, so independent runs (SLQ's starts) can
advance in lockstep with one `hvp_many` per step: on an accelerator a block of HVPs through one vmapped
backward. Each run's arithmetic is the same either way; only the HVPs' float summation order differs."""
from __future__ import annotations

from typing import Iterator

import torch


class LanczosRun:
    """One recurrence from `v`. Apply H to `run.v`, hand the product to `advance`; repeat while it is True.
    After each advance, alpha has j+1 entries, beta j, V j+1 and `residual` is beta_j (not yet in beta)."""

    def __init__(self, v: torch.Tensor):
        self.V = [v / v.norm()]
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.residual = 0.0
        self._next = None  # w / beta_j, committed when the next step asks for v

    @property
    def v(self) -> torch.Tensor:
        if self._next is not None:
            self.beta.append(self.residual)
            self.V.append(self._next)
            self._next = None
        return self.V[-1]

    def advance(self, w: torch.Tensor) -> bool:
        """Take H v; False at an invariant subspace (beta_j ~ 0: T's eigenvalues are exact eigenvalues of H)."""
        v = self.v
        a = float(w @ v)
        w = w - a * v - (self.beta[-1] * self.V[-2] if len(self.V) > 1 else 0.0)
        Vm = torch.stack(self.V)
        for _ in range(2):
            w = w - Vm.T @ (Vm @ w)
        self.alpha.append(a)
        self.residual = float(w.norm())
        if self.residual <= 1e-12 * max(1.0, max(abs(x) for x in self.alpha)):
            return False
        self._next = w / self.residual
        return True


def lanczos(obj, v: torch.Tensor, m: int) -> Iterator[tuple[list, list, float, list]]:
    """Up to m steps from v; after step j yields (alpha[0..j], beta[0..j-1], beta_j, V[0..j]) (the lists are
    live: copy to keep). Ends early at an invariant subspace (after yielding it)."""
    run = LanczosRun(v)
    for _ in range(m):
        going = run.advance(obj.hvp(run.v))
        yield run.alpha, run.beta, run.residual, run.V
        if not going:
            return


def lanczos_lockstep(obj, starts: torch.Tensor, m: int, *, batched: bool | str = "auto") -> list[LanczosRun]:
    """m steps of independent recurrences from each row of `starts`, one `obj.hvp_many` per step over the runs
    still going (batched as asked: see Objective.hvp_many)."""
    runs = [LanczosRun(s) for s in starts]
    going = list(runs)
    for _ in range(m):
        W = obj.hvp_many(torch.stack([r.v for r in going]), batched=batched)
        going = [r for r, w in zip(going, W) if r.advance(w)]
        if not going:
            break
    return runs
