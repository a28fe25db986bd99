"""Result dataclasses of landscape measurements."""
from __future__ import annotations

from dataclasses import dataclass

from ..perturb.results import DirectionMeansResult, PerturbedResult
from ..results import register


@register
@dataclass
class CurveResult(PerturbedResult):
    alphas: list[float]
    losses: list[float]
    accuracies: list[float] | None
    direction: dict


@register
@dataclass
class CurvesResult(DirectionMeansResult):
    """Many random directions: per-direction curves and their mean with a 95 % CI per alpha."""
    alphas: list[float]
    losses: list[list[float]]       # (n_directions, n_alphas)
    accuracies: list[list[float]] | None


@register
@dataclass
class SurfaceResult(PerturbedResult):
    xs: list[float]
    ys: list[float]
    losses: list[list[float]]       # (len(ys), len(xs))
    accuracies: list[list[float]] | None
    direction: dict


def write_npz(path: str, records) -> None:
    """The grids of landscape records as one .npz (atomically): `xs` (the steps along the first axis), and per
    split `{split}_losses` and `{split}_accuracies` (where the loss has an accuracy)."""
    import io

    import numpy as np

    from .._util import atomic_write_bytes
    arrays = {}
    for rec in records:
        r = rec.result
        arrays["xs"] = np.asarray(r.alphas if isinstance(r, CurvesResult) else r.xs)
        arrays[f"{rec.split}_losses"] = np.asarray(r.losses)
        if r.accuracies is not None:
            arrays[f"{rec.split}_accuracies"] = np.asarray(r.accuracies)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
