"""Extreme-classification trainer: ``python -m jslide.xc {train,eval,predict}``."""

from jslide.xc.config import ModelConfig, TrainConfig
from jslide.xc.trainer import evaluate, predict, train

__all__ = ["ModelConfig", "TrainConfig", "evaluate", "predict", "train"]
