"""Extreme-classification trainer: ``python -m jslide.xc {train,eval,predict}``."""

from jslide.xc.config import ModelConfig, RunConfig
from jslide.xc.trainer import evaluate, predict, train

__all__ = ["ModelConfig", "RunConfig", "evaluate", "predict", "train"]
