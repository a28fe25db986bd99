"""Loss landscapes: directions, the batched evaluator, 1D curves, 2D slices, distributed and resumable runs."""
from .curves import curve_1d, grid, random_curves, random_surface, surface_2d
from .directions import KINDS, DirectionSpace, as_flat_direction, directions, orthogonal_pair
from .evaluator import Evaluator
from .results import CurveResult, CurvesResult, SurfaceResult
from .runner import init_distributed, run_chunks

__all__ = ["directions", "orthogonal_pair", "DirectionSpace", "as_flat_direction", "Evaluator", "curve_1d",
           "random_curves", "surface_2d", "random_surface", "grid", "run_chunks", "init_distributed", "KINDS",
           "CurveResult", "CurvesResult", "SurfaceResult"]
