"""Mixture weights (section 3.4, eq. 5): per-node component weights computed from training edges after training."""
from __future__ import annotations

from typing import Callable, Iterator

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


def _scatter_max(node: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
    out.scatter_reduce_(0, node.unsqueeze(1).expand_as(x), x, reduce="amax", include_self=True)


def accumulate_weights(chunks: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]], n_nodes: int,
                       n_components: int) -> np.ndarray:
    """Normalised weights from log-contributions: w_nc = sum_e exp(x_ec) / sum_c' (...) per node.

    ``chunks()`` yields ``(node index (E,), x (E, C))`` and is called twice (max pass, sum pass), so any
    number of edges fits in memory. Nodes without edges get uniform weights.
    """
    peak = torch.full((n_nodes, n_components), -torch.inf, dtype=torch.float64)
    for node, x in chunks():
        _scatter_max(node, x, peak)
    peak = peak.amax(1)
    acc = torch.zeros(n_nodes, n_components, dtype=torch.float64)
    for node, x in chunks():
        acc.index_add_(0, node, torch.exp(x - peak[node].unsqueeze(1)))
    total = acc.sum(1, keepdim=True)
    uniform = torch.full_like(acc, 1.0 / n_components)
    w = torch.where(total > 0, acc / total.clamp_min(1e-300), uniform)
    return w.float().numpy()


def mixture_weights(us: torch.Tensor, ud: torch.Tensor, src: np.ndarray, dst: np.ndarray, gamma: float,
                    form: str = "sum", chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5 for both sides of a set of edges: returns (w_source (N_s, C_s), w_target (N_d, C_d)).

    ``us`` (N_s, C_s, n) and ``ud`` (N_d, C_d, n) are the two types' embeddings; ``src``/``dst`` the edges
    of the chosen task set T'.
    """
    src_t, dst_t = torch.as_tensor(src, dtype=torch.int64), torch.as_tensor(dst, dtype=torch.int64)

    def side_chunks(side: str):
        def gen():
            with torch.no_grad():
                for i in range(0, len(src_t), chunk):
                    s, d = src_t[i:i + chunk], dst_t[i:i + chunk]
                    m = product(us[s], ud[d])
                    yield (s if side == "source" else d), component_logits(m, gamma, side, form)
        return gen

    w_s = accumulate_weights(side_chunks("source"), us.shape[0], us.shape[1])
    w_d = accumulate_weights(side_chunks("target"), ud.shape[0], ud.shape[1])
    return w_s, w_d


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
