"""mixrec: multi-task mixture-embedding candidate retrieval (Brinkman et al. 2020).

    import mixrec
    data = mixrec.ingest("events.parquet", "data/", relation_col="event")
    model = mixrec.train("data/", mixrec.Config(components={"user": 4, "item": 1}), out="model/")
    candidates = mixrec.Retriever(model).recommend([0, 1, 2], k=100)
    report = mixrec.evaluate(model, "data/", ks=[20, 50])
"""
from mixrec.config import Config
from mixrec.data.dataset import Dataset
from mixrec.data.ingest import ingest
from mixrec.evaluate import evaluate
from mixrec.model.mixture import MixtureModel
from mixrec.retrieve import Candidates, Retriever
from mixrec.train import Trainer, train

__version__ = "0.1.0"


def load(path) -> MixtureModel:
    """Load a trained model directory."""
    return MixtureModel.load(path)


__all__ = ["Config", "Dataset", "MixtureModel", "Retriever", "Candidates", "Trainer", "train", "ingest",
           "evaluate", "load", "__version__"]
