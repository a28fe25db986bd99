"""Loss landscapes: directions, the batched evaluator, 1D curves, 2D slices, distributed and resumable runs."""
from .curves import curve_1d, grid, random_curves, random_surface, surface_2d
from ..perturb import (KINDS, DirectionSpace, Evaluator, as_flat_direction, directions, init_distributed,
                       orthogonal_pair, run_chunks)
from .results import CurveResult, CurvesResult, SurfaceResult

__all__ = ["directions", "orthogonal_pair", "DirectionSpace", "as_flat_direction", "Evaluator", "curve_1d",
           "random_curves", "surface_2d", "random_surface", "grid", "run_chunks", "init_distributed", "KINDS",
           "CurveResult", "CurvesResult", "SurfaceResult"]
