"""Where training runs: resolve the ``device`` setting and hold the tables there for an epoch."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

Tables = dict[str, torch.Tensor]


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (cuda when available) as a :class:`torch.device`.

    Asking for CUDA where this torch sees no GPU is an error that says so, never a silent CPU run.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        built = "with" if torch.backends.cuda.is_built() else "without"
        raise ValueError(f"device={name!r}: no CUDA GPU is available (this torch {torch.__version__} was built "
                           f"{built} CUDA support); use device='cpu', or 'auto' to take a GPU only when present")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


@contextmanager
def on_device(tables: Tables, states: Tables, device: torch.device) -> Iterator[tuple[Tables, Tables]]:
    """Yield the tables and optimizer states on ``device``; on exit copy them back into the CPU tensors in place.

    On the CPU this yields the very same tensors (no copy), so HOGWILD shared memory keeps working.
    """
    if device.type == "cpu":
        yield tables, states
        return
    on_tab = {t: v.to(device) for t, v in tables.items()}
    on_st = {t: v.to(device) for t, v in states.items()}
    yield on_tab, on_st
    for t in tables:
        tables[t].copy_(on_tab[t].cpu())
        states[t].copy_(on_st[t].cpu())
