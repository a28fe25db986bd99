"""Sharpness measures: local flatness, worst-case (and adaptive) sharpness, the quantization-noise test."""
from .flatness import local_flatness
from .pac_bayes import PacBayesSigma, pac_bayes_sigma
from .qnoise import noise_steps, quantization_noise, step_vector
from .results import FlatnessResult, QuantNoiseResult, SharpnessResult, WorstCaseResult
from .worst_case import batch_sharpness, worst_case

__all__ = ["local_flatness", "worst_case", "batch_sharpness", "quantization_noise", "noise_steps", "step_vector",
           "pac_bayes_sigma", "PacBayesSigma",
           "FlatnessResult", "WorstCaseResult", "QuantNoiseResult", "SharpnessResult"]
