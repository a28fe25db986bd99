"""flatlens: how flat is a network's minimum? Hessian spectra, landscapes, sharpness, QAT."""
from ._version import __version__

from ._util import FlatlensError
from .objective import BatchLoss, Objective
from . import toys, hessian, landscape, sharpness  # noqa: E402
from .hessian.linear_operator import as_linear_operator  # noqa: E402

__all__ = ["Objective", "BatchLoss", "FlatlensError", "toys", "hessian", "landscape", "sharpness",
           "as_linear_operator", "__version__"]
