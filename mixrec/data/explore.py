"""A synthetic Explore-like typed graph: consumers follow creators and like media that creators authored."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixrec.io import atomic_file

SCHEMA_TOML = """\
# Explore-like graph: an account is a "consumer" and, for some, also a "creator" (a persona: same raw id)
[entities.consumer]
[entities.creator]
[entities.media]

[split]
strategy = "column"

[[relations]]
name = "follow"
source = "consumer"
target = "creator"
file = "follow.parquet"
source_col = "consumer_id"
target_col = "creator_id"
split_col = "split"

[[relations]]
name = "like"
source = "consumer"
target = "media"
file = "like.parquet"
source_col = "consumer_id"
target_col = "media_id"
split_col = "split"

[[relations]]
name = "authored"
source = "creator"
target = "media"
file = "authored.parquet"
source_col = "creator_id"
target_col = "media_id"
split_col = "split"
weight = 0.5
"""


@dataclass
class ExploreSpec:
    """Size and shape of the graph; see :func:`generate_explore`."""

    n_accounts: int = 600
    n_creators: int = 120  # accounts 0..n_creators-1 are also creators
    media_per_creator: tuple[int, int] = (2, 6)
    n_topics: int = 8
    interests_per_consumer: tuple[int, int] = (1, 3)
    follows_per_consumer: tuple[int, int] = (6, 14)
    likes_per_consumer: tuple[int, int] = (10, 30)
    noise: float = 0.05
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.n_creators <= self.n_accounts) or self.n_topics < 1 or self.n_topics > self.n_creators:
            raise ValueError("need 1 <= n_creators <= n_accounts and 1 <= n_topics <= n_creators")
        for name in ("media_per_creator", "interests_per_consumer", "follows_per_consumer", "likes_per_consumer"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 1 <= low <= high; got {(lo, hi)}")
        if self.interests_per_consumer[1] > self.n_topics:
            raise ValueError("interests_per_consumer cannot exceed n_topics")
        if not (0.0 <= self.noise <= 1.0 and 0.0 <= self.test_fraction < 1.0):
            raise ValueError("need 0 <= noise <= 1 and 0 <= test_fraction < 1")


@dataclass
class ExploreTruth:
    """The planted structure: topics of creators and media, interests of consumers (dense = raw index)."""

    creator_topic: np.ndarray  # (n_creators,)
    media_topic: np.ndarray  # (n_media,)
    media_author: np.ndarray  # (n_media,)
    interests: np.ndarray  # (n_accounts, max_k) topics, -1 padded


def account_ids(idx: np.ndarray) -> pa.Array:
    """Raw account ids "a00000", ...: the same id names an account's consumer and creator personas."""
    return pa.array([f"a{i:05d}" for i in idx.tolist()], pa.string())


def media_ids(idx: np.ndarray) -> pa.Array:
    return pa.array([f"m{i:06d}" for i in idx.tolist()], pa.string())


def generate_explore(spec: ExploreSpec) -> tuple[dict[str, pa.Table], ExploreTruth]:
    """Tables ``follow``, ``like``, ``authored`` (with a ``split`` column) and the planted truth.

    Creator c has topic ``c % n_topics`` and authors 2-6 media of its topic. Each consumer has 1-3
    distinct interest topics with Dirichlet(1) shares; each follow (like) picks an interest by share, then
    a uniform creator (medium) of that topic, or with probability ``noise`` a uniform one. Repeated pairs
    are kept once (first draw), then a consumer's distinct follows and likes are held out at random with
    ``test_fraction``, so no pair is both in train and in test.
    """
    rng = np.random.default_rng(spec.seed)
    creator_topic = np.arange(spec.n_creators) % spec.n_topics
    per = rng.integers(spec.media_per_creator[0], spec.media_per_creator[1] + 1, spec.n_creators)
    media_author = np.repeat(np.arange(spec.n_creators), per)
    media_topic = creator_topic[media_author]
    interests, shares = _interests(spec, rng)
    follow_src, follow_dst = _distinct(*_engagements(spec, rng, interests, shares, creator_topic,
                                                     spec.follows_per_consumer))
    like_src, like_dst = _distinct(*_engagements(spec, rng, interests, shares, media_topic, spec.likes_per_consumer))
    split = lambda n: pa.array(np.where(rng.random(n) < spec.test_fraction, "test", "train"))  # noqa: E731
    tables = {
        "follow": pa.table({"consumer_id": account_ids(follow_src), "creator_id": account_ids(follow_dst),
                            "split": split(len(follow_src))}),
        "like": pa.table({"consumer_id": account_ids(like_src), "media_id": media_ids(like_dst),
                          "split": split(len(like_src))}),
        "authored": pa.table({"creator_id": account_ids(media_author),
                              "media_id": media_ids(np.arange(len(media_author))),
                              "split": pa.array(["train"] * len(media_author))}),
    }
    return tables, ExploreTruth(creator_topic, media_topic, media_author, interests)


def _distinct(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (src, dst) pairs, in the order of their first draw."""
    key = src.astype(np.int64) * (int(dst.max(initial=0)) + 1) + dst
    first = np.sort(np.unique(key, return_index=True)[1])
    return src[first], dst[first]


def _interests(spec: ExploreSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = spec.interests_per_consumer
    k = rng.integers(lo, hi + 1, spec.n_accounts)
    order = np.argsort(rng.random((spec.n_accounts, spec.n_topics)), axis=1)[:, :hi]  # distinct topics per row
    mask = np.arange(hi)[None, :] < k[:, None]
    shares = np.where(mask, rng.exponential(size=(spec.n_accounts, hi)), 0.0)
    shares /= shares.sum(1, keepdims=True)
    return np.where(mask, order, -1), shares


def _engagements(spec: ExploreSpec, rng: np.random.Generator, interests: np.ndarray, shares: np.ndarray,
                 node_topic: np.ndarray, per_consumer: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(consumer, node) pairs: interest by share, then a uniform node of that topic (or noise)."""
    n = rng.integers(per_consumer[0], per_consumer[1] + 1, spec.n_accounts)
    src = np.repeat(np.arange(spec.n_accounts), n)
    pick = (rng.random(len(src))[:, None] > np.cumsum(shares[src], 1)).sum(1)  # inverse-CDF draw
    topic = interests[src, np.minimum(pick, interests.shape[1] - 1)]
    by_topic = np.argsort(node_topic, kind="stable")
    start = np.searchsorted(node_topic[by_topic], np.arange(spec.n_topics))
    size = np.bincount(node_topic, minlength=spec.n_topics)
    dst = by_topic[start[topic] + (rng.random(len(src)) * size[topic]).astype(np.int64)]
    noise = rng.random(len(src)) < spec.noise
    dst[noise] = rng.integers(0, len(node_topic), int(noise.sum()))
    return src, dst


def write_explore(spec: ExploreSpec, out_dir: str | Path) -> Path:
    """Write the three relation files and ``graph.toml`` (the schema naming them) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables, _ = generate_explore(spec)
    for name, table in tables.items():
        with atomic_file(out_dir / f"{name}.parquet") as fh:
            pq.write_table(table, fh)
    with atomic_file(out_dir / "graph.toml", mode="w") as fh:
        fh.write(SCHEMA_TOML)
    return out_dir / "graph.toml"
