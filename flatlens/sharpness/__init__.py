"""Sharpness measures: local flatness, worst-case (and adaptive) sharpness, the quantization-noise test."""
from .flatness import local_flatness
from .qnoise import quantization_noise, step_vector
from .results import FlatnessResult, QuantNoiseResult, WorstCaseResult
from .worst_case import worst_case

__all__ = ["local_flatness", "worst_case", "quantization_noise", "step_vector", "FlatnessResult",
           "WorstCaseResult", "QuantNoiseResult"]
