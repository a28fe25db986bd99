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
    After each advance, alpha has j+1 entries, beta j, the basis j+1 rows and `residual` is beta_j (not yet in beta).

    The basis is kept in blocks of `block` rows, allocated as the run reaches them and never copied: the
    reorthogonalization reads them in place (a list re-stacked every step held the basis twice, and one
    buffer sized for the longest run reserved memory a short run never used)."""

    def __init__(self, v: torch.Tensor, block: int = 8):
        self._block = max(1, int(block))
        self._blocks = [torch.empty(self._block, v.shape[-1], dtype=v.dtype, device=v.device)]
        self._blocks[0][0] = v / v.norm()
        self._n = 1
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.residual = 0.0
        self._next = None  # w / beta_j, committed when the next step asks for v

    def __len__(self) -> int:
        """Rows of the basis so far."""
        return self._n

    def row(self, j: int) -> torch.Tensor:
        """Basis vector v_j (a view; never rewritten)."""
        return self._blocks[j // self._block][j % self._block]

    def _filled(self):
        """The filled rows, block by block (views)."""
        for b, blk in enumerate(self._blocks):
            yield blk[:min(self._block, self._n - b * self._block)]

    @property
    def V(self) -> torch.Tensor:
        """The orthonormal basis so far as one (j+1, d) matrix (a copy)."""
        return torch.cat(list(self._filled()))

    @property
    def v(self) -> torch.Tensor:
        if self._next is not None:
            if self._n == len(self._blocks) * self._block:
                self._blocks.append(torch.empty_like(self._blocks[0]))
            self.beta.append(self.residual)
            self.row(self._n).copy_(self._next)
            self._n += 1
            self._next = None
        return self.row(self._n - 1)

    def advance(self, w: torch.Tensor) -> bool:
        """Take H v; False at an invariant subspace (beta_j ~ 0: T's eigenvalues are exact eigenvalues of H)."""
        v = self.v
        a = float(w @ v)
        w = w - a * v - (self.beta[-1] * self.row(self._n - 2) if self._n > 1 else 0.0)
        for _ in range(2):  # w -= V' (V w), the coefficients all from the same w (classical Gram-Schmidt)
            coef = [blk @ w for blk in self._filled()]
            for blk, c in zip(self._filled(), coef):
                w = w - blk.T @ c
        self.alpha.append(a)
        self.residual = float(w.norm())
        if self.residual <= 1e-12 * max(1.0, max(abs(x) for x in self.alpha)):
            return False
        self._next = w / self.residual
        return True


def lanczos(op, v: torch.Tensor, m: int) -> Iterator[LanczosRun]:
    """Up to m steps from v; yields the run after each step (alpha[0..j], beta[0..j-1], residual beta_j and
    the basis rows 0..j; they grow as it goes on: copy to keep). Ends early at an invariant subspace (after
    yielding it)."""
    run = LanczosRun(v)
    for _ in range(m):
        going = run.advance(op.hvp(run.v))
        yield run
        if not going:
            return


def lanczos_lockstep(op, starts: torch.Tensor, m: int, *, batched: bool | str = "auto") -> list[LanczosRun]:
    """m steps of independent recurrences from each row of `starts`, one `op.hvp_many` per step over the runs
    still going (batched as asked: see Objective.hvp_many)."""
    runs = [LanczosRun(s) for s in starts]
    going = list(runs)
    for _ in range(m):
        W = op.hvp_many(torch.stack([r.v for r in going]), batched=batched)
        going = [r for r, w in zip(going, W) if r.advance(w)]
        if not going:
            break
    return runs
