"""Progress for long loops: a tqdm bar on a terminal, otherwise one log line per loop (no carriage returns)."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Mapping

from tqdm.auto import tqdm

log = logging.getLogger("mixrec.progress")


def on_terminal(stream=None) -> bool:
    """True when ``stream`` (default: stderr, where bars are drawn) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


class LineProgress:
    """The bar's interface without drawing: counts updates and logs one summary line on ``close``
    (only when ``leave``; loops that log their own line per pass, like training epochs, pass ``leave=False``)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, **_: Any):
        self.iterable, self.total, self.desc, self.unit, self.leave = iterable, total, desc, unit, leave
        self.n, self.postfix, self.start, self.closed = 0, {}, time.perf_counter(), False

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Mapping | None = None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave:
            secs = time.perf_counter() - self.start
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            log.info("%s: %s %s in %.1fs (%s %s/s)%s", self.desc or "done", f"{self.n:,}", self.unit, secs,
                     f"{self.n / max(secs, 1e-9):,.0f}", self.unit, extra)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, *, disable: bool = False, stream=None, **kwargs):
    """Drop-in for ``tqdm(...)``: a bar when stderr is a terminal, else a :class:`LineProgress`."""
    if not disable and on_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    bar = LineProgress(iterable, **kwargs)
    if disable:
        bar.leave = False
    return bar


def epoch_line(record: Mapping, epochs: int, logger: logging.Logger = log) -> str:
    """Log (INFO) and return one line for a finished epoch: loss, edges/s, seconds and any validation metric."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['loss']:.6g}",
             f"{record['edges_per_s']:,.0f} edges/s", f"{record['seconds']:.2f}s"]
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("valid_") and isinstance(v, float)]
    line = ", ".join(parts)
    logger.info("%s", line)
    return line


def show_progress_lines() -> None:
    """Let this module's INFO lines through when the root logger only passes warnings (the CLI's default)."""
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
