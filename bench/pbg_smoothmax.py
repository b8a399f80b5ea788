"""A PyTorch-BigGraph comparator scoring mixture embeddings like mixrec (benchmark code only, never imported by mixrec).

PBG 1.0.0 gives every entity type the same dimension, so both sides carry ``COMPONENTS * DIM`` numbers:
a source is ``COMPONENTS`` unit vectors of ``DIM``; a destination uses its first ``DIM`` numbers as its one
component (the rest is never read). Positives are pooled with regularised smoothmax (eq. 2, theta on the
mean), negatives with smoothmax (eq. 1), as in mixrec's defaults. Registered as ``smoothmax_mixture``
when the config file imports this module.
"""
from __future__ import annotations

import torch
from torchbiggraph.model import COMPARATORS, AbstractComparator

COMPONENTS = 5
DIM = 64
GAMMA = 0.1
THETA = 0.1


def _smoothmax(m: torch.Tensor, dim: int) -> torch.Tensor:
    return (m * torch.softmax(m / GAMMA, dim=dim)).sum(dim)


@COMPARATORS.register_as("smoothmax_mixture")
class SmoothmaxMixtureComparator(AbstractComparator):
    """Pooled cosine of ``COMPONENTS`` source components against one destination component."""

    def prepare(self, embs: torch.Tensor) -> torch.Tensor:
        x = embs.view(*embs.shape[:-1], COMPONENTS, DIM)
        return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).view(embs.shape)

    def forward(self, lhs_pos, rhs_pos, lhs_neg, rhs_neg):
        c, p, _ = lhs_pos.shape
        users = lhs_pos.reshape(c, p * COMPONENTS, DIM)
        items = rhs_pos[..., :DIM]
        m_pos = (users.view(c, p, COMPONENTS, DIM) * items.unsqueeze(2)).sum(-1)
        pos = THETA * m_pos.mean(-1) + (1 - THETA) * _smoothmax(m_pos, -1)
        rhs_m = torch.bmm(users, rhs_neg[..., :DIM].transpose(1, 2)).view(c, p, COMPONENTS, -1)
        n_l = lhs_neg.shape[1]
        lhs_m = torch.bmm(lhs_neg.reshape(c, n_l * COMPONENTS, DIM), items.transpose(1, 2))
        lhs_scores = _smoothmax(lhs_m.view(c, n_l, COMPONENTS, p), 2).transpose(1, 2)
        return pos, lhs_scores, _smoothmax(rhs_m, 2)
