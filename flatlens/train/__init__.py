"""Training: ERM / QAT with a delayed quantization start, and EoQ ensembles. (`TrainConfig`, the settings a
checkpoint records and its loader checks, is defined with the checkpoint's other types.)"""
from ..checkpoint import TrainConfig
from .ensemble import ensemble_accuracy
from .snapshots import Snapshots, load_snapshots, save_snapshots, snapshot_path
from .trainer import Trainer, prefix_identity, train, train_prefix

__all__ = ["TrainConfig", "Trainer", "train", "train_prefix", "prefix_identity", "ensemble_accuracy", "Snapshots",
           "load_snapshots", "save_snapshots", "snapshot_path"]
