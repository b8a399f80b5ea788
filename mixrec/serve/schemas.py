"""Request and response bodies of the HTTP API (they also make the OpenAPI schema).

Request bodies are strict: a JSON value of the wrong type is refused (422), never converted
(``"k": true`` or ``"k": "5"`` is not ``k = 1`` or ``k = 5``; ``"exclude_seen": "yes"`` is not ``true``)."""
from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field

RawId = Union[int, str]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Candidate(BaseModel):
    """One retrieved item: raw id, round-robin score max_c w_c / rank_c, 1-based rank, winning user component."""

    item: RawId
    score: float
    rank: int
    component: int


class UserCandidates(BaseModel):
    user: Optional[RawId] = None
    items: list[Candidate]


class CandidatesResponse(UserCandidates):
    model: str = Field(description="content id of the model that answered (changes on reload)")
    weights: str
    k: int


class TypedCandidatesResponse(BaseModel):
    """Candidates of one entity type for one node of another (or the same) type of a typed-graph model."""

    source_type: str
    target_type: str
    id: RawId = Field(description="the raw id of the query node in its source type")
    items: list[Candidate] = Field(description="raw ids of the target type, best first")
    model: str = Field(description="content id of the model that answered (changes on reload)")
    weights: str
    k: int


class BatchRequest(_Body):
    users: list[RawId] = Field(min_length=1, description="raw user ids (at most the server's max_batch)")
    k: Optional[int] = Field(None, ge=1, description="candidates per user (default min(100, max_k))")
    weights: str = "all"
    exclude_seen: bool = True


class BatchResponse(BaseModel):
    model: str
    weights: str
    k: int
    results: list[UserCandidates]


class HistoryRequest(_Body):
    items: list[RawId] = Field(min_length=1, description="raw item ids the new user interacted with")
    relations: Optional[list[str]] = Field(None, description="relation name per item (default: the first relation)")
    k: Optional[int] = Field(None, ge=1, description="number of candidates (default min(100, max_k))")
    weights: str = "all"
    exclude_seen: bool = Field(True, description="leave the history items out of the candidates")
    ignore_unknown: bool = Field(False, description="skip item ids the model does not know instead of 404")
    source_type: Optional[str] = Field(None, description="entity type of the new node (default: the model's "
                                                         "source type), e.g. creator")
    target_type: Optional[str] = Field(None, description="entity type of the history items and of the candidates "
                                                         "(default: the model's target type), e.g. media")


class HistoryResponse(CandidatesResponse):
    source_type: str = Field(description="entity type of the folded-in node")
    target_type: str = Field(description="entity type of the history and of the candidates")
    mixture_weights: list[float] = Field(description="the folded-in user's weight per component (eq. 5)")
    unknown_items: list[RawId] = Field(default_factory=list, description="history ids skipped (ignore_unknown)")


class ReloadRequest(_Body):
    model_dir: Optional[str] = Field(None, description="new model directory (default: reload the current one)")


class ModelInfo(BaseModel):
    model: str
    kind: str = Field("mixture", description="'mixture' (embeddings and an index) or 'filter' (a closed-form "
                      "graph filter, ranked exactly)")
    path: str
    users: int
    items: int
    user_components: Optional[int] = Field(description="null for a graph-filter model")
    item_components: Optional[int] = Field(description="null for a graph-filter model")
    dim: Optional[int] = Field(description="null for a graph-filter model")
    index: Optional[str] = Field(description="null for a graph-filter model (every item is scored)")
    index_size: Optional[int] = Field(description="null for a graph-filter model")
    filter: Optional[dict] = Field(None, description="a graph-filter model's kind, params, relations, target "
                                   "and per-user table size table_k (0: none)")
    weight_sets: list[str]
    relations: list[str]
    loaded_at: float
    pid: int = Field(description="the server process that answered (one of several with --workers)")


class ErrorResponse(BaseModel):
    error: str
