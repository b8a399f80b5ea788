"""Training: :func:`train` picks the in-memory, partitioned or data-parallel trainer for a config.

Batches with one-sided negatives, the sampled softmax (or margin) loss, row-wise Adagrad, checkpoints."""
from mixrec.train.api import make_trainer, train
from mixrec.train.base import ModelTrainer, TrainEvent
from mixrec.train.trainer import Trainer

__all__ = ["ModelTrainer", "TrainEvent", "Trainer", "make_trainer", "train"]
