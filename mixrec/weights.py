"""Mixture weights (section 3.4, eq. 5): per-node component weights computed from training edges after training."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mixrec.model.functional import product

CHUNK = 65536


def component_logits(m: torch.Tensor, gamma: float, side: str, form: str = "sum") -> torch.Tensor:
    """Per-edge contribution to eq. 5, in log space, for one side's components.

    ``m`` is (E, C_s, C_d). For ``side="source"`` the result is (E, C_s):
    ``form="sum"``: log sum_l exp(M_cl / gamma) (eq. 5 as printed);
    ``form="responsibility"``: log of the edge's softmax mass on component c (each edge adds 1 in total).
    ``side="target"`` is the same with the roles of c and l swapped.
    """
    z = m.double() / gamma
    axis = -1 if side == "source" else -2
    x = torch.logsumexp(z, dim=axis)
    if form == "responsibility":
        x = x - torch.logsumexp(z.flatten(-2), dim=-1, keepdim=True)
    elif form != "sum":
        raise ValueError(f"unknown mixture weight form {form!r}; use 'sum' or 'responsibility'")
    return x


class OnlineWeights:
    """Eq. 5 accumulated over edge blocks in one pass: a running per-node max keeps ``exp`` in range,
    so any number of edges fits in memory and each block is computed once."""

    def __init__(self, n_nodes: int, n_components: int):
        self.peak = torch.full((n_nodes,), -torch.inf, dtype=torch.float64)
        self.acc = torch.zeros(n_nodes, n_components, dtype=torch.float64)

    def add(self, node: torch.Tensor, x: torch.Tensor) -> None:
        """Add log-contributions ``x`` (E, C) of nodes ``node`` (E,)."""
        new = self.peak.clone().scatter_reduce_(0, node, x.amax(1), reduce="amax")
        grow = torch.isfinite(self.peak) & (new > self.peak)
        self.acc[grow] *= torch.exp(self.peak[grow] - new[grow]).unsqueeze(1)
        self.peak = new
        self.acc.index_add_(0, node, torch.exp(x - new[node].unsqueeze(1)))

    def result(self) -> np.ndarray:
        """(N, C) normalised weights w_nc = sum_e exp(x_ec) / sum_c' (...); nodes without edges get uniform weights."""
        total = self.acc.sum(1, keepdim=True)
        uniform = torch.full_like(self.acc, 1.0 / self.acc.shape[1])
        return torch.where(total > 0, self.acc / total.clamp_min(1e-300), uniform).float().numpy()


def mixture_weights(us: torch.Tensor, ud: torch.Tensor, src: np.ndarray, dst: np.ndarray, gamma: float,
                    form: str = "sum", chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5 for both sides of a set of edges: returns (w_source (N_s, C_s), w_target (N_d, C_d)).

    ``us`` (N_s, C_s, n) and ``ud`` (N_d, C_d, n) are the two types' embeddings; ``src``/``dst`` the edges
    of the chosen task set T'.
    """
    acc_s, acc_d = OnlineWeights(us.shape[0], us.shape[1]), OnlineWeights(ud.shape[0], ud.shape[1])
    accumulate_pair(acc_s, acc_d, us, ud, src, dst, gamma, form, chunk)
    return acc_s.result(), acc_d.result()


def accumulate_pair(acc_s: OnlineWeights, acc_d: OnlineWeights, us: torch.Tensor, ud: torch.Tensor,
                    src: np.ndarray, dst: np.ndarray, gamma: float, form: str = "sum", chunk: int = CHUNK) -> None:
    """Add the eq. 5 terms of edges ``src -> dst`` to the source and target types' accumulators (the same
    object when both ends have one type: a node then sums its edges as a source and as a target)."""
    src_t, dst_t = torch.as_tensor(src, dtype=torch.int64), torch.as_tensor(dst, dtype=torch.int64)
    with torch.no_grad():
        for i in range(0, len(src_t), chunk):  # each block's products once, for both sides
            s, d = src_t[i:i + chunk], dst_t[i:i + chunk]
            m = product(us[s], ud[d])
            acc_s.add(s, component_logits(m, gamma, "source", form))
            acc_d.add(d, component_logits(m, gamma, "target", form))


PairAccumulate = Callable[[tuple[str, str], list[int], float, str, tuple[OnlineWeights, OnlineWeights]], None]


def group_weight_sets(config, relations, shape: Callable[[str], tuple[int, int]],
                      add_pair: PairAccumulate) -> dict[str, dict[str, np.ndarray]]:
    """Every weight set of ``config.weight_sets``: one eq. 5 accumulator per entity type (``shape(type)`` =
    (nodes, components)), fed by ``add_pair(pair, relation codes, gamma, form, (acc_source, acc_target))``
    for each (source type, target type) group of the set's relations, so that a node sums every edge it
    takes part in whatever the other end's type. In-memory and streaming trainers differ only in ``add_pair``."""
    names = [r.name for r in relations]
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, ws in config.weight_sets.items():
        bad = [r for r in ws.relations or [] if r not in names]
        if bad:
            raise KeyError(f"unknown relation {bad[0]!r}; the model has {names}")
        codes = [names.index(r) for r in (ws.relations or names)]
        acc: dict[str, OnlineWeights] = {}
        for pair in sorted({(relations[c].source_type, relations[c].target_type) for c in codes}):
            for t in pair:
                acc.setdefault(t, OnlineWeights(*shape(t)))
            pair_codes = [c for c in codes if (relations[c].source_type, relations[c].target_type) == pair]
            add_pair(pair, pair_codes, ws.gamma, ws.form, (acc[pair[0]], acc[pair[1]]))
        out[name] = {t: a.result() for t, a in acc.items()}
    return out


def compute_weight_sets(model) -> dict[str, dict[str, np.ndarray]]:
    """All weight sets named in ``model.config.weight_sets`` from the model's training edges.

    Eq. 5 per node: one sum over every edge of the set's relations in which the node takes part, as a
    source or as a target, whatever the type at the other end; normalised once per node.
    """
    e = model.train_edges

    def add_pair(pair, codes, gamma, form, accs):
        keep = np.isin(e["rel"], codes)
        accumulate_pair(accs[0], accs[1], model.tables[pair[0]], model.tables[pair[1]], e["src"][keep],
                        e["dst"][keep], gamma, form)
    return group_weight_sets(model.config, model.relations, lambda t: (model.num(t), model.components(t)), add_pair)
