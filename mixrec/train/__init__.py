"""Training: batches with one-sided negatives, the margin loss, row-wise Adagrad, checkpoints."""
from mixrec.train.trainer import TrainEvent, Trainer, train

__all__ = ["TrainEvent", "Trainer", "train"]
