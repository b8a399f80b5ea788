"""Prometheus text-format metrics without a client library: request counters, latency histograms, gauges."""
from __future__ import annotations

import bisect
import threading
import time
from typing import Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(**kv: str) -> str:
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in kv.items())
    return "{" + body + "}" if body else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Thread-safe request metrics; ``gauges`` are callables read at scrape time."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._hist: dict[tuple[str, str], list] = {}  # (method, route) -> [bucket counts..., sum, count]
        self._events: dict[tuple[str, str], int] = {}
        self.started = time.time()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            h = self._hist.setdefault((method, route), [0] * (len(self.buckets) + 2))
            h[bisect.bisect_left(self.buckets, seconds)] += 1  # bucket i counts le=buckets[i]; last is +Inf
            h[-1] += seconds

    def event(self, name: str, outcome: str) -> None:
        """Count a named event (e.g. a reload) by outcome."""
        with self._lock:
            self._events[(name, outcome)] = self._events.get((name, outcome), 0) + 1

    def gauge(self, name: str, help_text: str, fn: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, fn)

    def render(self) -> str:
        """The Prometheus exposition text."""
        with self._lock:
            reqs, hist, events = dict(self._requests), {k: list(v) for k, v in self._hist.items()}, dict(self._events)
        out = ["# HELP mixrec_http_requests_total HTTP requests by method, route template and status.",
               "# TYPE mixrec_http_requests_total counter"]
        for (m, r, s), n in sorted(reqs.items()):
            out.append(f"mixrec_http_requests_total{_labels(method=m, route=r, status=str(s))} {n}")
        out += ["# HELP mixrec_http_request_duration_seconds Request latency, measured in the server.",
                "# TYPE mixrec_http_request_duration_seconds histogram"]
        for (m, r), h in sorted(hist.items()):
            cum = 0
            for b, c in zip(self.buckets, h):
                cum += c
                out.append(f"mixrec_http_request_duration_seconds_bucket{_labels(method=m, route=r, le=repr(b))} {cum}")
            cum += h[len(self.buckets)]
            out.append(f"mixrec_http_request_duration_seconds_bucket{_labels(method=m, route=r, le='+Inf')} {cum}")
            out.append(f"mixrec_http_request_duration_seconds_sum{_labels(method=m, route=r)} {h[-1]:.6f}")
            out.append(f"mixrec_http_request_duration_seconds_count{_labels(method=m, route=r)} {cum}")
        out += ["# HELP mixrec_events_total Administrative events (model reloads) by outcome.",
                "# TYPE mixrec_events_total counter"]
        for (name, outcome), n in sorted(events.items()):
            out.append(f"mixrec_events_total{_labels(event=name, outcome=outcome)} {n}")
        for name, (help_text, fn) in sorted(self.gauges.items()):
            try:
                value = float(fn())
            except Exception:  # a gauge must never break the scrape
                continue
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"
