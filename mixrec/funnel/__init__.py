"""The Explore-style candidate funnel around mixture retrieval: sources, blending, ranking, re-ranking.

A query language over sources (mixture, history, item-to-item, random walks, popularity), blending,
filters, multi-task ranking with a value model and a distilled first pass, and diversity re-ranking."""
from mixrec.funnel.engine import Funnel, FunnelResult, StepTrace
from mixrec.funnel.query import Query, QueryError, Step
from mixrec.funnel.rank import FunnelRanker, ValueModel
from mixrec.funnel.sources import SOURCES, CandidateSet, blend, dedup

__all__ = ["Funnel", "FunnelResult", "StepTrace", "Query", "QueryError", "Step", "FunnelRanker", "ValueModel",
           "SOURCES", "CandidateSet", "blend", "dedup"]
