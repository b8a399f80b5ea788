"""What every trainer shares: the one ``fit`` signature, callback events and the checkpoint conventions."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from mixrec.model.mixture import MixtureModel

CHECKPOINT = "checkpoint"  # the checkpoint folder inside the output directory
RESUMABLE = {"epochs", "workers", "early_stopping", "eval_every", "device", "compile"}  # keys a resume may change


@dataclass
class TrainEvent:
    """What a callback sees: ``kind`` is 'batch' or 'epoch'.

    An epoch event comes once per epoch, after that epoch's checkpoint is written, with ``loss`` the epoch's
    mean loss per edge and ``metrics`` its history record (``model.info["history"]``). A batch event carries
    the batch's position in the epoch's schedule and its summed loss.
    """

    kind: str
    epoch: int
    batch: int = 0
    loss: float = 0.0
    metrics: dict = field(default_factory=dict)


Callback = Callable[[TrainEvent], None]


class ModelTrainer(ABC):
    """A training run: in memory (:class:`~mixrec.train.trainer.Trainer`, with HOGWILD workers), partitioned
    from disk (:class:`~mixrec.train.partitioned.PartitionedTrainer`) or data-parallel over torch.distributed
    (:class:`~mixrec.train.distributed_trainer.DistributedTrainer`). :func:`mixrec.train.train` picks one."""

    callbacks: list[Callback]

    @abstractmethod
    def fit(self, resume: bool = False) -> MixtureModel:
        """Run the epochs (from the last checkpoint when ``resume``), write the model directory when the
        trainer has one, and return the trained model."""

    def _emit(self, event: TrainEvent) -> None:
        for cb in self.callbacks:
            cb(event)


def epoch_event(record: dict) -> TrainEvent:
    """The epoch event of a history record, the same on every trainer."""
    return TrainEvent("epoch", record["epoch"], loss=record["loss"], metrics=record)


__all__ = ["CHECKPOINT", "RESUMABLE", "Callback", "ModelTrainer", "TrainEvent", "epoch_event"]
