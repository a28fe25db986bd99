"""Loss landscapes: directions, the batched evaluator, 1D curves, 2D slices, distributed and resumable runs; the
line between two models (interpolate), a training trajectory's plane (trajectory), HDF5 files other tools read (h5)."""
from .curves import curve_1d, grid, random_curves, random_surface, surface_2d
from ..perturb import (KINDS, DirectionSpace, Evaluator, as_flat_direction, directions, init_distributed,
                       orthogonal_pair, run_chunks)
from .results import CurveResult, CurvesResult, InterpolationResult, SurfaceResult, TrajectoryResult
from .interpolate import Endpoint, endpoint_of_checkpoint, interpolate, path_grid
from .trajectory import pca_directions, trajectory

__all__ = ["directions", "orthogonal_pair", "DirectionSpace", "as_flat_direction", "Evaluator", "curve_1d",
           "random_curves", "surface_2d", "random_surface", "grid", "run_chunks", "init_distributed", "KINDS",
           "CurveResult", "CurvesResult", "SurfaceResult",
           "InterpolationResult", "interpolate", "path_grid", "Endpoint", "endpoint_of_checkpoint",
           "TrajectoryResult", "trajectory", "pca_directions"]
