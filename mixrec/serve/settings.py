"""Server settings (limits, binding, admin token) and the loopback check that guards the admin endpoint."""
from __future__ import annotations

import ipaddress
import os
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mixrec.registry import INDEX_BACKENDS

TOKEN_ENV = "MIXREC_ADMIN_TOKEN"


class ServeSettings(BaseModel):
    """Everything ``mixrec serve`` can be told; the defaults are the safe ones."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=0, le=65535)
    max_k: int = Field(1000, ge=1, description="largest k a request may ask for")
    max_batch: int = Field(256, ge=1, description="most user ids in one POST /v1/candidates")
    max_history: int = Field(2000, ge=1, description="most items in one fold-in history")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    admin_token: Optional[str] = Field(None, description=f"bearer token for /admin/*; default ${TOKEN_ENV}")
    index_kind: Optional[str] = Field(None, description="override the model's index (a registered index backend)")
    merge: Optional[Literal["round_robin", "rescore"]] = Field(None, description="override how per-component "
                                                              "lists merge (default: the model's index.merge)")
    ef_search: Optional[int] = Field(None, ge=1, le=100000, description="HNSW efSearch (default: the model's)")
    nprobe: Optional[int] = Field(None, ge=1, le=100000, description="IVF lists probed (default: the model's)")
    foldin_steps: int = Field(30, ge=0, le=5000, description="Adagrad steps per fold-in request (after the k-means start)")
    foldin_negatives: int = Field(256, ge=1, le=100000)
    threads: Optional[int] = Field(None, ge=1, le=1024, description="requests computed at once per worker "
                                   "(default: the number of CPUs)")
    rankers: dict[str, str] = Field(default_factory=dict, description="funnel rankers for POST /v1/query: "
                                    "name -> directory written by FunnelRanker.save")
    filters: dict[str, str] = Field(default_factory=dict, description="graph-filter models for POST /v1/query's "
                                    "graph(model=NAME) sources: name -> directory written by mixrec fit-filter")
    max_query_cost: int = Field(4_000_000, ge=1, description="POST /v1/query: largest estimated cost in work units "
                                "(about one walker step or one candidate searched/scored); larger queries get 422")
    query_timeout_s: float = Field(10.0, gt=0, le=3600, description="POST /v1/query: a query still running after "
                                   "this many seconds stops at its next step and answers 503")
    workers: int = Field(1, ge=1, le=64, description="server processes, each with its own copy of the model")
    reload_signal: bool = Field(True, description="reload the model directory on SIGHUP")

    @field_validator("index_kind")
    @classmethod
    def _registered_kind(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else INDEX_BACKENDS.check(v)

    def token(self) -> str | None:
        return self.admin_token or os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; anything else (0.0.0.0, names, public IPs) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
