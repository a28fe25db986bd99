"""Curvature estimators built on matrix-free operators: the Hessian (the Objective's own HVPs), the generalized
Gauss-Newton and the Fisher (ggn.py), S H S (scaled.py), or a caller's own `CurvatureOperator`."""
from .density import density
from .diagonal import diagonal
from .eigen import top_eigenvalues
from .ggn import FisherOperator, GGNOperator, fisher, ggn
from .linear_operator import as_linear_operator
from .operator import CurvatureOperator
from .results import DensityResult, DiagonalResult, EigenResult, TraceResult
from .trace import trace

__all__ = ["top_eigenvalues", "trace", "density", "diagonal", "ggn", "fisher", "GGNOperator", "FisherOperator",
           "CurvatureOperator", "as_linear_operator", "EigenResult", "TraceResult", "DensityResult",
           "DiagonalResult"]
