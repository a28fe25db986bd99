"""Training: ERM / QAT with a delayed quantization start, and EoQ ensembles."""
from .ensemble import ensemble_accuracy
from .trainer import TrainConfig, Trainer, prefix_identity, train, train_prefix

__all__ = ["TrainConfig", "Trainer", "train", "train_prefix", "prefix_identity", "ensemble_accuracy"]
