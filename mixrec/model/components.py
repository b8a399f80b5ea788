"""Per-node component levers as pure tensor functions: cluster centroids, component counts, dead masks.

Interest-cluster centroids (segment k-means), a per-node number of components (tied slots), and the mask
of dead or duplicate components."""
from __future__ import annotations

import numpy as np
import torch

from mixrec.model.functional import normalize

Tensor = torch.Tensor
CHUNK = 1 << 17


def first_distinct(seg: Tensor, n_seg: int, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Up to ``k`` random members of each segment: returns (slot (n_seg, k) member index, -1 where the segment
    has fewer than k members; size (n_seg,) members per segment). ``seg`` (E,) segment id per member."""
    key = torch.rand(len(seg), generator=generator, dtype=torch.float64)
    order = torch.argsort(seg.double() * 2.0 + key)  # by segment, random within
    s = seg[order]
    size = torch.bincount(seg, minlength=n_seg)
    start = torch.cumsum(size, 0) - size
    pos = torch.arange(len(s)) - start[s]
    out = torch.full((n_seg, k), -1, dtype=torch.int64)
    take = pos < k
    out[s[take], pos[take]] = order[take]
    return out, size


def segment_kmeans(x: Tensor, seg: Tensor, n_seg: int, k: int | Tensor, iters: int = 10, seed: int = 0,
                   jitter: float = 0.02) -> Tensor:
    """Spherical k-means of every segment's unit vectors at once (Lloyd steps over all segments together).

    ``x`` (E, n) unit vectors, ``seg`` (E,) their segment (user), ``k`` clusters per segment (an int, or (n_seg,)
    ints <= the slot count ``K = max k``). Starts at ``k`` distinct random members; assigns each member to its
    most similar centroid among the segment's first ``k`` slots and sets each centroid to the normalised mean
    of its members; an empty cluster keeps its centroid. Returns (n_seg, K, n) unit centroids: slot j of a
    segment with m < K distinct members (or j >= k) starts as a copy of slot ``j mod min(m, k)`` plus Gaussian
    ``jitter`` (so training can separate the copies); a segment without members gets zeros.
    """
    g = torch.Generator().manual_seed(seed)
    k_seg = torch.full((n_seg,), int(k), dtype=torch.int64) if isinstance(k, int) else torch.as_tensor(k).long()
    kk = int(k_seg.max()) if n_seg else 1
    pick, size = first_distinct(seg, n_seg, kk, g)
    live = torch.minimum(size, k_seg)  # clusters a segment really has
    j = torch.arange(kk)
    src_slot = j.unsqueeze(0) % live.clamp_min(1).unsqueeze(1)  # copy pattern for slots >= live
    first = pick.gather(1, src_slot)
    cent = torch.where((first >= 0).unsqueeze(-1), x[first.clamp_min(0)], torch.zeros(()))
    valid = j.unsqueeze(0) < live.unsqueeze(1)  # (n_seg, K) slots that take part in the assignment
    for _ in range(iters):
        assign = _assign(x, seg, cent, valid)
        sums = torch.zeros(n_seg * kk, x.shape[1], dtype=x.dtype).index_add_(0, seg * kk + assign, x)
        count = torch.bincount(seg * kk + assign, minlength=n_seg * kk).view(n_seg, kk)
        cent = torch.where((count > 0).unsqueeze(-1), normalize(sums.view(n_seg, kk, -1)), cent)
    out = cent.gather(1, src_slot.unsqueeze(-1).expand(-1, -1, x.shape[1])).clone()
    copy = ~valid & (live > 0).unsqueeze(1)
    noise = torch.randn(out.shape, generator=g, dtype=out.dtype) * jitter
    return torch.where(copy.unsqueeze(-1), normalize(out + noise), out)


def _assign(x: Tensor, seg: Tensor, cent: Tensor, valid: Tensor) -> Tensor:
    """Index of each member's most similar valid centroid of its own segment, in edge chunks."""
    out = torch.empty(len(x), dtype=torch.int64)
    for lo in range(0, len(x), CHUNK):
        s = seg[lo:lo + CHUNK]
        sim = torch.einsum("en,ekn->ek", x[lo:lo + CHUNK], cent[s]).masked_fill(~valid[s], -torch.inf)
        out[lo:lo + CHUNK] = sim.argmax(1)
    return out


def allowed_counts(c: int) -> list[int]:
    """Component counts a node of a C-slot table may have: the divisors of C (tied copies keep pooling exact)."""
    return [d for d in range(1, c + 1) if c % d == 0]


def components_per_node(degree: np.ndarray, c: int, min_edges_per_component: int) -> np.ndarray:
    """c_u = the largest divisor of C not above min(C, max(1, floor(n_u / m))), per node.

    With each active component tied to C / c_u slots, every pooling that is symmetric in the slots and
    invariant to equal multiplicities (max, mean, smoothmax, regsmoothmax with theta on the mean) scores the
    node exactly as its c_u components would, and tied slots receive identical gradients.
    """
    raw = np.minimum(c, np.maximum(1, np.asarray(degree, np.int64) // max(min_edges_per_component, 1)))
    allowed = np.array(allowed_counts(c))
    return allowed[np.searchsorted(allowed, raw, side="right") - 1]


def tie_slots(table: Tensor, count: Tensor) -> Tensor:
    """Slot j of node u becomes a copy of slot ``j mod count[u]`` (the active components are slots < count)."""
    n, c = table.shape[:2]
    src = torch.arange(c).unsqueeze(0) % torch.as_tensor(count).long().clamp_min(1).unsqueeze(1)
    return table.gather(1, src.unsqueeze(-1).expand(-1, -1, table.shape[2]))


def prune_mask(vectors: Tensor, weights: Tensor, min_weight: float = 0.0, max_cosine: float = 1.0) -> Tensor:
    """(N, C) bool, True where a component stays in retrieval.

    A component is dropped when its eq. 5 weight is below ``min_weight`` or when its cosine to an earlier kept
    component of the same node is above ``max_cosine`` (duplicates: the first of a group stays). The
    highest-weight component of a node always stays. ``vectors`` (N, C, n), ``weights`` (N, C).
    """
    n, c = weights.shape
    unit = normalize(vectors.float())
    keep = weights >= min_weight
    keep[torch.arange(n), weights.argmax(1)] = True
    if max_cosine < 1.0:
        sim = unit @ unit.transpose(1, 2)  # (N, C, C)
        for j in range(1, c):  # over the C slots only (a handful), vectorised over nodes
            dup = ((sim[:, j, :j] > max_cosine) & keep[:, :j]).any(1)
            keep[:, j] &= ~dup
    return keep


def masked_weights(weights: np.ndarray, vectors: Tensor, keep: Tensor, max_cosine: float) -> np.ndarray:
    """Weights with dropped components at 0, renormalised; a duplicate's weight moves to the kept component it
    duplicates (its first kept twin), a dead component's is shared by the rest."""
    w = torch.as_tensor(weights, dtype=torch.float64).clone()
    unit = normalize(vectors.double())
    sim = unit @ unit.transpose(1, 2)
    c = w.shape[1]
    for j in range(c):
        twin = (sim[:, j, :] > max_cosine) & keep & ~keep[:, j:j + 1]
        twin[:, j] = False
        has = twin.any(1)
        to = twin.double().argmax(1)
        rows = torch.nonzero(has).squeeze(1)
        w[rows, to[rows]] += w[rows, j]
    w = torch.where(keep, w, torch.zeros(()))
    return (w / w.sum(1, keepdim=True)).float().numpy()


def masked_pool(m: Tensor, keep: Tensor, name: str, gamma: float = 0.1, theta: float = 0.1,
                theta_form: str = "mean") -> Tensor:
    """Built-in pooling of ``m`` (B, C_s, C_d, N) over the kept source components only; ``keep`` (B, C_s)."""
    k = keep.to(m.dtype).view(keep.shape[0], keep.shape[1], 1, 1).expand_as(m)
    if name == "max":
        return m.masked_fill(k == 0, -torch.inf).amax(dim=(1, 2))
    mean = (m * k).sum(dim=(1, 2)) / k.sum(dim=(1, 2))
    if name == "mean":
        return mean
    z = (m / gamma).masked_fill(k == 0, -torch.inf)
    p = torch.softmax(z.flatten(1, 2), dim=1).view_as(m)
    sm = (m.masked_fill(k == 0, 0.0) * p).sum(dim=(1, 2))
    if name == "smoothmax":
        return sm
    if name == "regsmoothmax":
        reg = mean if theta_form == "mean" else (m * k).sum(dim=(1, 2))
        return theta * reg + (1.0 - theta) * sm
    raise ValueError(f"masked scoring supports max, mean, smoothmax and regsmoothmax, not {name!r}")


def kept_components(model, rows: np.ndarray, weight_set: str = "all", source_type: str | None = None
                    ) -> Tensor | None:
    """(B, C_s) bool of the source components that stay in scoring (weight > 0), or None when all stay."""
    t = source_type or model.source_type
    if not model.weights or weight_set not in model.weights or t not in model.weights[weight_set]:
        return None
    w = np.asarray(model.weights[weight_set][t])[rows]
    if w.shape[1] == 1 or (w > 0).all():
        return None
    return torch.from_numpy(w > 0)
