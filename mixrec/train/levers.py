"""Component levers around training: start from interest clusters, a per-node number of components, pruning."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mixrec.config import Config
from mixrec.model.components import components_per_node, masked_weights, prune_mask, segment_kmeans, tie_slots
from mixrec.model.functional import normalize
from mixrec.model.mixture import MixtureModel

log = logging.getLogger("mixrec.train")


def multi_types(config: Config, types) -> list[str]:
    return [t for t in types if config.components_of(t) > 1]


def node_counts(trainer) -> dict[str, torch.Tensor]:
    """Per multi-component type: each node's number of components under ``components_rule`` (C when off)."""
    cfg, ds = trainer.config, trainer.dataset
    out = {}
    tr = ds.split("train") if cfg.components_rule.min_edges_per_component else None
    for t in multi_types(cfg, ds.entity_types):
        c, m = cfg.components_of(t), cfg.components_rule.min_edges_per_component
        if not m:
            continue
        deg = np.zeros(ds.num(t), np.int64)
        for code, r in enumerate(ds.relations):
            keep = tr.rel == code
            if r.source_type == t:
                deg += np.bincount(tr.src[keep], minlength=ds.num(t))
            if r.target_type == t:
                deg += np.bincount(tr.dst[keep], minlength=ds.num(t))
        out[t] = torch.from_numpy(components_per_node(deg, c, m))
    return out


def prepare(trainer) -> None:
    """Apply ``init`` and ``components_rule`` to a fresh trainer's tables (and Adagrad states); registers the
    callback that keeps tied slots tied after every epoch."""
    cfg = trainer.config
    counts = node_counts(trainer)
    if cfg.init.user_components == "clusters":
        _cluster_init(trainer, counts)
    if not counts:
        return
    trainer.component_counts = counts
    for t, cnt in counts.items():
        trainer.model.tables[t] = tie_slots(trainer.model.tables[t], cnt).contiguous()
    log.info("components per node: %s", {t: np.bincount(c.numpy()).tolist() for t, c in counts.items()})

    def retie(event) -> None:
        if event.kind == "epoch":
            for t, cnt in counts.items():
                trainer.model.tables[t].copy_(tie_slots(trainer.model.tables[t], cnt))
    trainer.callbacks.append(retie)


def _single_model(trainer):
    """(tables, states) of a one-component model: loaded from ``init.from_model`` or pre-trained here."""
    cfg, ds = trainer.config, trainer.dataset
    if cfg.init.from_model:
        src = MixtureModel.load(cfg.init.from_model)
        for t in ds.entity_types:
            if src.components(t) != 1 or not np.array_equal(src.ids[t], ds.ids[t]):
                raise ValueError(f"init.from_model={cfg.init.from_model}: type {t!r} must have one component and "
                                 "the dataset's ids; train it with components.<type>=1 on the same data")
        ck = Path(cfg.init.from_model) / "checkpoint"
        states = {t: torch.from_numpy(np.load(ck / f"{t}.state.npy")) if (ck / f"{t}.state.npy").is_file()
                  else torch.zeros(ds.num(t)) for t in ds.entity_types}
        return src.tables, states
    single = cfg.with_overrides({"components": {t: 1 for t in ds.entity_types}, "epochs": cfg.init.pretrain_epochs,
                                 "init.user_components": "random", "components_rule.min_edges_per_component": 0,
                                 "early_stopping.patience": 0, "eval_every": 0})
    pre = type(trainer)(ds, single, None, progress=False)  # the in-memory trainer that asked for the start
    pre.fit()
    return pre.model.tables, pre.states


def _cluster_init(trainer, counts: dict[str, torch.Tensor]) -> None:
    """Every multi-component source type starts at its nodes' interest clusters (``counts``: per-node component
    counts from :func:`node_counts`); items at the single vectors."""
    cfg, ds = trainer.config, trainer.dataset
    tables, states = _single_model(trainer)
    tr = ds.split("train")
    for t in ds.entity_types:
        if cfg.components_of(t) == 1:
            trainer.model.tables[t] = tables[t].clone()
            trainer.states[t] = states[t].clone()
    for t in multi_types(cfg, ds.entity_types):
        c = cfg.components_of(t)
        rel = [code for code, r in enumerate(ds.relations) if r.source_type == t and cfg.components_of(r.target_type) == 1]
        keep = np.isin(tr.rel, rel)
        pairs = np.unique(np.stack([tr.src[keep], tr.dst[keep], tr.rel[keep]]), axis=1)  # distinct edges
        d_types = np.array([ds.relations[r].target_type for r in range(len(ds.relations))])[pairs[2]]
        x = torch.cat([normalize(tables[d][torch.from_numpy(pairs[1][d_types == d])].squeeze(1))
                       for d in np.unique(d_types)]) if len(pairs[0]) else torch.zeros(0, cfg.dim)
        seg = torch.from_numpy(np.concatenate([pairs[0][d_types == d] for d in np.unique(d_types)])
                               if len(pairs[0]) else np.zeros(0, np.int64))
        k = counts.get(t, c)
        cent = segment_kmeans(x.float(), seg, ds.num(t), k, cfg.init.kmeans_iters,
                              cfg.seed)
        if cent.shape[1] < c:  # per-node counts below C everywhere: pad with copies (tied later)
            cent = tie_slots(torch.cat([cent, cent.new_zeros(len(cent), c - cent.shape[1], cfg.dim)], 1),
                             torch.full((len(cent),), cent.shape[1]))
        own = tables[t].squeeze(1)
        empty = cent.abs().sum((1, 2)) == 0  # no edges: every slot starts at the single vector
        scale = own.norm(dim=-1, keepdim=True).unsqueeze(1)
        start = torch.where(empty.view(-1, 1, 1), normalize(own).unsqueeze(1).expand(-1, c, -1), cent) * scale
        trainer.model.tables[t] = start.contiguous().float()
        trainer.states[t] = states[t].clone()


def prune_weights(model) -> dict:
    """The model's weight sets with pruned components at weight 0 (``prune`` in the config; unchanged when off)."""
    pc = model.config.prune
    if pc.min_weight <= 0 and pc.max_cosine >= 1.0:
        return model.weights
    out = {}
    for name, per_type in model.weights.items():
        out[name] = {}
        for t, w in per_type.items():
            if w.shape[1] == 1:
                out[name][t] = w
                continue
            vec = model.tables[t]
            keep = prune_mask(vec, torch.as_tensor(w), pc.min_weight, pc.max_cosine)
            out[name][t] = masked_weights(w, vec, keep, pc.max_cosine)
    return out
