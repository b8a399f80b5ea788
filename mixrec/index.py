"""Nearest-neighbour indexes (FAISS: exact flat, HNSW, IVF) over all destination component vectors."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import faiss
import numpy as np

from mixrec.config import IndexConfig
from mixrec.io import atomic_file, save_json
from mixrec.registry import INDEX_BACKENDS


@dataclass(frozen=True)
class IndexBackend:
    """A registered index kind (``IndexConfig.kind``).

    ``build(flat (M, n) float32, config) -> faiss.Index``: an empty, trained inner-product index (the rows are
    added after); ``search_params(config, k)``: FAISS search parameters for a CPU search (None: none);
    ``build_fields``: the IndexConfig fields that change what is built (a saved index with other values is
    rebuilt); ``gpu``: FAISS can move it to a GPU, ``gpu_setup(gpu_index, config)`` then sets its search-time
    parameters there; ``exact``: its results are the exact top k.
    """

    build: Callable[[np.ndarray, IndexConfig], faiss.Index]
    search_params: Callable[[IndexConfig, int], Optional[faiss.SearchParameters]] = lambda config, k: None
    build_fields: tuple[str, ...] = ()
    gpu: bool = False
    gpu_setup: Optional[Callable[[faiss.Index, IndexConfig], None]] = None
    exact: bool = False


def _build_hnsw(flat: np.ndarray, config: IndexConfig) -> faiss.Index:
    index = faiss.IndexHNSWFlat(flat.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.ef_construction
    return index


def _build_ivf(flat: np.ndarray, config: IndexConfig) -> faiss.Index:
    dim = flat.shape[1]
    nlist = min(config.nlist or max(1, int(4 * np.sqrt(len(flat)))), len(flat))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(flat)
    return index


def _set_nprobe(index: faiss.Index, config: IndexConfig) -> None:
    index.nprobe = config.nprobe


INDEX_BACKENDS.register("flat", IndexBackend(lambda flat, config: faiss.IndexFlatIP(flat.shape[1]), gpu=True,
                                             exact=True))
INDEX_BACKENDS.register("hnsw", IndexBackend(  # FAISS has no GPU HNSW; it does not raise efSearch to k by itself
    _build_hnsw, lambda config, k: faiss.SearchParametersHNSW(efSearch=max(config.ef_search, k)),
    build_fields=("hnsw_m", "ef_construction")))
INDEX_BACKENDS.register("ivf", IndexBackend(
    _build_ivf, lambda config, k: faiss.SearchParametersIVF(nprobe=config.nprobe), build_fields=("nlist",), gpu=True,
    gpu_setup=_set_nprobe))


class IndexFileError(ValueError):
    """A saved index file (or its sidecar) is unreadable, modified or missing its checksums; the message names it."""


def embeddings_digest(vectors: np.ndarray) -> str:
    """SHA-256 of the exact float32 vectors an index is built from (ties a saved index to its embeddings)."""
    flat = np.ascontiguousarray(vectors, dtype=np.float32)
    h = hashlib.sha256(repr(flat.shape).encode())
    h.update(memoryview(flat.reshape(-1)).cast("B"))
    return h.hexdigest()


class ComponentIndex:
    """Inner-product search over the (N * C_d) unit component vectors of one entity type.

    Row ``d * C_d + l`` holds component ``l`` of destination ``d``; :meth:`search` returns cosine
    similarities and those flat ids (-1 where fewer than ``k`` were found).
    """

    def __init__(self, index: faiss.Index, n_items: int, components: int, config: IndexConfig):
        self.index, self.n_items, self.components, self.config = index, n_items, components, config
        self.backend: IndexBackend = INDEX_BACKENDS.get(config.kind)
        self.gpu_resources = None
        if config.device != "cpu" and self.backend.gpu:
            self.index, self.gpu_resources = _to_gpu(index, config)

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig | None = None) -> "ComponentIndex":
        """Index ``vectors`` of shape (N, C_d, n), which must be unit length."""
        config = config or IndexConfig()
        n, cd, dim = vectors.shape
        flat = np.ascontiguousarray(vectors.reshape(n * cd, dim), dtype=np.float32)
        index = INDEX_BACKENDS.get(config.kind).build(flat, config)
        index.add(flat)
        return cls(index, n, cd, config)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` component vectors per query: (similarities (Q, k), flat ids (Q, k))."""
        k = int(min(k, self.size))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        params = None if self.gpu_resources is not None else self.backend.search_params(self.config, k)
        return self.index.search(q, k) if params is None else self.index.search(q, k, params=params)

    # ----------------------------------------------------------------- storage
    def save(self, path: str | Path, embeddings: str | None = None) -> None:
        """Write FAISS's own format plus a JSON sidecar (both atomically) holding the index file's SHA-256
        and ``embeddings``, the :func:`embeddings_digest` of the vectors it was built from."""
        path = Path(path)
        cpu = self.index if self.gpu_resources is None else faiss.index_gpu_to_cpu(self.index)
        raw = faiss.serialize_index(cpu).tobytes()
        with atomic_file(path) as fh:
            fh.write(raw)
        save_json(path.with_suffix(".json"), {"n_items": self.n_items, "components": self.components,
                                              "config": self.config.model_dump(), "embeddings_sha256": embeddings,
                                              "sha256": hashlib.sha256(raw).hexdigest()})

    @staticmethod
    def read_sidecar(path: str | Path) -> dict:
        """The JSON sidecar of a saved index; :class:`IndexFileError` naming the file when it is unreadable."""
        side = Path(path).with_suffix(".json")
        try:
            meta = json.loads(side.read_text())
            IndexConfig(**meta["config"]), int(meta["n_items"]), int(meta["components"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IndexFileError(f"{side}: unreadable index sidecar ({e}); delete it and its .faiss file "
                                 "so the index is rebuilt") from None
        return meta

    @staticmethod
    def read_meta(path: str | Path) -> tuple[int, int, IndexConfig]:
        """(items, components, config it was built with) from the JSON sidecar, without reading the index."""
        meta = ComponentIndex.read_sidecar(path)
        return meta["n_items"], meta["components"], IndexConfig(**meta["config"])

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig | None = None, verify: bool = True) -> "ComponentIndex":
        """Read a saved index; ``config`` (default: the saved one) sets the search-time parameters and device.

        With ``verify`` the file must match the SHA-256 in its sidecar; :class:`IndexFileError` names the
        file when it does not, has none, or FAISS cannot read it.
        """
        path = Path(path)
        meta = cls.read_sidecar(path)
        if verify and not meta.get("sha256"):
            raise IndexFileError(f"{path}: its sidecar lists no checksum (an index saved by an older mixrec); "
                                 "delete it so it is rebuilt, or load it with verify=False")
        try:
            raw = path.read_bytes()  # read once: checksummed and deserialised from the same bytes
        except OSError as e:
            raise IndexFileError(f"{path}: unreadable ({e}); delete it so it is rebuilt") from None
        if verify and hashlib.sha256(raw).hexdigest() != meta["sha256"]:
            raise IndexFileError(f"{path}: modified since it was saved (checksum mismatch); delete it so it is rebuilt")
        try:
            index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
        except (RuntimeError, OSError) as e:
            raise IndexFileError(f"{path}: not a readable FAISS index ({str(e).splitlines()[0] if str(e) else e}); "
                                 "delete it so it is rebuilt") from None
        return cls(index, meta["n_items"], meta["components"], config or IndexConfig(**meta["config"]))


def same_build(a: IndexConfig, b: IndexConfig) -> bool:
    """True when both configs build the same index (search-time parameters and the device may differ)."""
    return a.kind == b.kind and all(getattr(a, f) == getattr(b, f) for f in INDEX_BACKENDS.get(a.kind).build_fields)


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
    setup = INDEX_BACKENDS.get(config.kind).gpu_setup
    if setup is not None:
        setup(gpu, config)
    return gpu, res
