"""Nearest-neighbour indexes (FAISS: exact flat, HNSW, IVF) over all destination component vectors."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from mixrec.config import IndexConfig
from mixrec.io import atomic_file, save_json


class ComponentIndex:
    """Inner-product search over the (N * C_d) unit component vectors of one entity type.

    Row ``d * C_d + l`` holds component ``l`` of destination ``d``; :meth:`search` returns cosine
    similarities and those flat ids (-1 where fewer than ``k`` were found).
    """

    def __init__(self, index: faiss.Index, n_items: int, components: int, config: IndexConfig):
        self.index, self.n_items, self.components, self.config = index, n_items, components, config
        self.gpu_resources = None
        if config.device != "cpu" and config.kind != "hnsw":  # FAISS has no GPU HNSW
            self.index, self.gpu_resources = _to_gpu(index, config)

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig | None = None) -> "ComponentIndex":
        """Index ``vectors`` of shape (N, C_d, n), which must be unit length."""
        config = config or IndexConfig()
        n, cd, dim = vectors.shape
        flat = np.ascontiguousarray(vectors.reshape(n * cd, dim), dtype=np.float32)
        if config.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif config.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
        elif config.kind == "ivf":
            nlist = config.nlist or max(1, int(4 * np.sqrt(len(flat))))
            nlist = min(nlist, len(flat))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(flat)
        else:  # pragma: no cover - the config schema rejects other kinds
            raise ValueError(f"unknown index kind {config.kind!r}")
        index.add(flat)
        return cls(index, n, cd, config)

    @property
    def is_exact(self) -> bool:
        return self.config.kind == "flat"

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` component vectors per query: (similarities (Q, k), flat ids (Q, k))."""
        k = int(min(k, self.size))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.config.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
            return self.index.search(q, k, params=params)
        if self.config.kind == "ivf" and self.gpu_resources is None:
            params = faiss.SearchParametersIVF(nprobe=self.config.nprobe)
            return self.index.search(q, k, params=params)
        return self.index.search(q, k)

    # ----------------------------------------------------------------- storage
    def save(self, path: str | Path) -> None:
        """Write FAISS's own format plus a JSON sidecar (both atomically)."""
        path = Path(path)
        cpu = self.index if self.gpu_resources is None else faiss.index_gpu_to_cpu(self.index)
        data = faiss.serialize_index(cpu)
        with atomic_file(path) as fh:
            fh.write(data.tobytes())
        save_json(path.with_suffix(".json"), {"n_items": self.n_items, "components": self.components,
                                              "config": self.config.model_dump()})

    @staticmethod
    def read_meta(path: str | Path) -> tuple[int, int, IndexConfig]:
        """(items, components, config it was built with) from the JSON sidecar, without reading the index."""
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        return meta["n_items"], meta["components"], IndexConfig(**meta["config"])

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig | None = None) -> "ComponentIndex":
        """Read a saved index; ``config`` (default: the saved one) sets the search-time parameters and device."""
        n_items, components, saved = cls.read_meta(path)
        index = faiss.deserialize_index(np.fromfile(Path(path), dtype=np.uint8))
        return cls(index, n_items, components, config or saved)


BUILD_FIELDS = {"flat": (), "hnsw": ("hnsw_m", "ef_construction"), "ivf": ("nlist",)}


def same_build(a: IndexConfig, b: IndexConfig) -> bool:
    """True when both configs build the same index (search-time parameters and the device may differ)."""
    return a.kind == b.kind and all(getattr(a, f) == getattr(b, f) for f in BUILD_FIELDS[a.kind])


def gpu_resources():
    """FAISS GPU resources when this FAISS build has GPU support and sees a GPU; None otherwise."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None
    return faiss.StandardGpuResources()


def _to_gpu(index: faiss.Index, config: IndexConfig):
    """(index on GPU 0, its resources), or the index unchanged with None where no GPU can be used."""
    res = gpu_resources()
    if res is None:
        if config.device == "cuda":
            raise ValueError("index.device='cuda': this FAISS build has no GPU support or sees no GPU "
                               "(faiss-cpu); install a GPU build of FAISS, or use index.device='auto' or 'cpu'")
        return index, None
    gpu = faiss.index_cpu_to_gpu(res, 0, index)
    if config.kind == "ivf":
        gpu.nprobe = config.nprobe
    return gpu, res
