"""The metric registry: every measurement flatlens can take of a checkpoint, in one place.

`registry.py` holds its shape (settings, rows, the `Metric` entry, `REGISTRY`, the settings of a run); the entries
live by family, registered in this order (the order of the CLI's choices, of `compare`'s rows and of the report's
columns): hessian.py, flatness.py, landscape.py, sharpness.py, interpolate.py."""
from .registry import (BOUND_KINDS, COMMANDS, LOWER, REGISTRY, ROLES, Common, Context, Metric, Row, RowSpec,
                       Settings, check_settings, default_metric, drawn_in, get, interval_label, names,
                       register_metric, setting, swapped, t_row)
from .hessian import (CurvatureEigSettings, CurvatureTraceSettings, DensitySettings, DiagSettings,  # noqa: E402
                      EigSettings, FisherTraceSettings, TraceSettings)  # (registers)
from .flatness import EvalSettings, FlatnessSettings  # noqa: E402
from .landscape import CurveSettings, GridSettings, SurfaceSettings  # noqa: E402
from .sharpness import QnoiseSettings, SharpnessSettings  # noqa: E402
from .interpolate import InterpolateSettings  # noqa: E402
from ..hessian.results import DiagonalSummary, ExtremeEigenvalues  # noqa: E402  (result types, re-exported)
from ..sharpness.results import SharpnessResult  # noqa: E402

__all__ = ["BOUND_KINDS", "COMMANDS", "LOWER", "REGISTRY", "ROLES", "Common", "Context", "Metric", "Row", "RowSpec",
           "Settings", "check_settings", "default_metric", "drawn_in", "get", "interval_label", "names",
           "register_metric", "setting", "swapped", "t_row", "EigSettings", "TraceSettings", "DensitySettings",
           "DiagSettings", "CurvatureEigSettings", "CurvatureTraceSettings", "FisherTraceSettings", "EvalSettings",
           "FlatnessSettings", "GridSettings", "CurveSettings", "SurfaceSettings", "SharpnessSettings",
           "QnoiseSettings", "InterpolateSettings", "ExtremeEigenvalues", "DiagonalSummary", "SharpnessResult"]
