"""Curvature estimators built on the Objective's Hessian-vector products."""
from .density import density
from .diagonal import diagonal
from .eigen import top_eigenvalues
from .results import DensityResult, DiagonalResult, EigenResult, TraceResult
from .trace import trace

__all__ = ["top_eigenvalues", "trace", "density", "diagonal", "EigenResult", "TraceResult",
           "DensityResult", "DiagonalResult"]
