"""Data: reading interaction logs into a dataset directory, splits, and synthetic logs."""
from mixrec.data.dataset import Dataset, Edges, Relation

__all__ = ["Dataset", "Edges", "Relation"]
