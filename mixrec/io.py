"""Safe file output: atomic files and directories, pickle-free array storage, checksums."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` by rename.

    If the body raises, the temporary directory is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it, or choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard_dir(path: str | Path) -> None:
    """Remove a directory atomically: renamed away first (readers see it whole or not at all), then deleted."""
    path = Path(path)
    if not path.is_dir():
        return
    gone = Path(tempfile.mkdtemp(prefix=f".{path.name}.gone-", dir=path.parent))
    os.rename(path, gone / path.name)
    shutil.rmtree(gone, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path`` and rename it over ``path`` once closed without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_array(path: str | Path, arr: np.ndarray) -> None:
    """Write an array as .npy atomically."""
    with atomic_file(path) as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)


def load_array(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Read a .npy file without ever unpickling."""
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def save_json(path: str | Path, obj) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=2, default=str)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
