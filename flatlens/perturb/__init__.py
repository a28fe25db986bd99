"""The perturbation engine that landscapes and sharpness measures share: seeded directions in an objective's
parameter space, the batched evaluator of perturbed models (the hot path), and the chunked runner that makes a
run resumable and shards it over torch.distributed ranks. It uses the Objective's public interface only."""
from .directions import KINDS, DirectionSpace, as_flat_direction, directions, orthogonal_pair
from .evaluator import Evaluator
from .runner import init_distributed, max_points, run_chunks, tensor_digest

__all__ = ["KINDS", "DirectionSpace", "as_flat_direction", "directions", "orthogonal_pair", "Evaluator",
           "init_distributed", "max_points", "run_chunks", "tensor_digest"]
