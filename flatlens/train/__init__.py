"""Training: ERM / QAT with a delayed quantization start, and EoQ ensembles."""
from .ensemble import ensemble_accuracy
from .trainer import TrainConfig, Trainer, train

__all__ = ["TrainConfig", "Trainer", "train", "ensemble_accuracy"]
