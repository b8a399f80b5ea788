"""Mixture weights (section 3.4, eq. 5): per-node component weights computed from training edges after training."""
from __future__ import annotations

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
    src_t, dst_t = torch.as_tensor(src, dtype=torch.int64), torch.as_tensor(dst, dtype=torch.int64)
    acc_s, acc_d = OnlineWeights(us.shape[0], us.shape[1]), OnlineWeights(ud.shape[0], ud.shape[1])
    with torch.no_grad():
        for i in range(0, len(src_t), chunk):  # each block's products once, for both sides
            s, d = src_t[i:i + chunk], dst_t[i:i + chunk]
            m = product(us[s], ud[d])
            acc_s.add(s, component_logits(m, gamma, "source", form))
            acc_d.add(d, component_logits(m, gamma, "target", form))
    return acc_s.result(), acc_d.result()


def compute_weight_sets(model) -> dict[str, dict[str, np.ndarray]]:
    """All weight sets named in ``model.config.weight_sets`` from the model's training edges."""
    out: dict[str, dict[str, np.ndarray]] = {}
    e = model.train_edges
    for name, ws in model.config.weight_sets.items():
        rel_names = ws.relations or [r.name for r in model.relations]
        codes = [model.relation_code(r) for r in rel_names]
        pairs = {(model.relations[c].source_type, model.relations[c].target_type) for c in codes}
        per_type: dict[str, list[np.ndarray]] = {}
        for s_t, d_t in sorted(pairs):
            keep = np.isin(e["rel"], [c for c in codes if (model.relations[c].source_type,
                                                            model.relations[c].target_type) == (s_t, d_t)])
            w_s, w_d = mixture_weights(model.tables[s_t], model.tables[d_t], e["src"][keep], e["dst"][keep],
                                       ws.gamma, ws.form)
            per_type.setdefault(s_t, []).append(w_s)
            per_type.setdefault(d_t, []).append(w_d)
        out[name] = {t: _merge(ws_list) for t, ws_list in per_type.items()}
    return out


def _merge(parts: list[np.ndarray]) -> np.ndarray:
    """Average weights a type got from several (source, target) type pairs, renormalised."""
    w = np.mean(parts, axis=0)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)
