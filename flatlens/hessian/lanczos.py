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
    After each advance, alpha has j+1 entries, beta j, V j+1 rows and `residual` is beta_j (not yet in beta).

    The basis lives in one preallocated (capacity, d) tensor and `V` is a view of its filled rows, so the
    reorthogonalization reads it in place (a list stacked every step held the basis twice)."""

    def __init__(self, v: torch.Tensor, capacity: int = 16):
        self._basis = torch.empty(max(1, int(capacity)), v.shape[-1], dtype=v.dtype, device=v.device)
        self._basis[0] = v / v.norm()
        self._n = 1
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.residual = 0.0
        self._next = None  # w / beta_j, committed when the next step asks for v

    @property
    def V(self) -> torch.Tensor:
        """The orthonormal basis so far, (j+1, d): a view, live while the run goes on."""
        return self._basis[:self._n]

    @property
    def v(self) -> torch.Tensor:
        if self._next is not None:
            if self._n == len(self._basis):  # past the capacity asked for: double it
                grown = torch.empty(2 * len(self._basis), self._basis.shape[1], dtype=self._basis.dtype,
                                    device=self._basis.device)
                grown[:self._n] = self._basis
                self._basis = grown
            self.beta.append(self.residual)
            self._basis[self._n] = self._next
            self._n += 1
            self._next = None
        return self._basis[self._n - 1]

    def advance(self, w: torch.Tensor) -> bool:
        """Take H v; False at an invariant subspace (beta_j ~ 0: T's eigenvalues are exact eigenvalues of H)."""
        v = self.v
        a = float(w @ v)
        w = w - a * v - (self.beta[-1] * self._basis[self._n - 2] if self._n > 1 else 0.0)
        Vm = self.V
        for _ in range(2):
            w = w - Vm.T @ (Vm @ w)
        self.alpha.append(a)
        self.residual = float(w.norm())
        if self.residual <= 1e-12 * max(1.0, max(abs(x) for x in self.alpha)):
            return False
        self._next = w / self.residual
        return True


def lanczos(obj, v: torch.Tensor, m: int) -> Iterator[tuple[list, list, float, list]]:
    """Up to m steps from v; after step j yields (alpha[0..j], beta[0..j-1], beta_j, V[0..j]) (the lists and the
    basis view are live: copy to keep). Ends early at an invariant subspace (after yielding it)."""
    run = LanczosRun(v, capacity=m)
    for _ in range(m):
        going = run.advance(obj.hvp(run.v))
        yield run.alpha, run.beta, run.residual, run.V
        if not going:
            return


def lanczos_lockstep(obj, starts: torch.Tensor, m: int, *, batched: bool | str = "auto") -> list[LanczosRun]:
    """m steps of independent recurrences from each row of `starts`, one `obj.hvp_many` per step over the runs
    still going (batched as asked: see Objective.hvp_many)."""
    runs = [LanczosRun(s, capacity=m) for s in starts]
    going = list(runs)
    for _ in range(m):
        W = obj.hvp_many(torch.stack([r.v for r in going]), batched=batched)
        going = [r for r, w in zip(going, W) if r.advance(w)]
        if not going:
            break
    return runs
