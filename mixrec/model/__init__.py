"""Model: the mixture-embedding tables and the pure math (product, pooling, loss)."""
from mixrec.model.mixture import MixtureModel

__all__ = ["MixtureModel"]
