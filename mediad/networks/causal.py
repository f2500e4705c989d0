"""Cross-modal causal fusion with a mediator: front-door and back-door adjustment.

Our reading of MediAD (docs/design.md, "The model"). With X the multimodal input, M the mediator
(what of X the label actually depends on), S the site/scanner (an observed confounder where a
cohort records it, at training time only) and U unobserved confounders:

* **Front door** (against U):
  ``P(Y | do(X)) = Σ_m P(m | X) Σ_x' P(x') P(Y | m, x')``.
  ``P(m | X)`` is an in-sample attention over the fused tokens (:class:`Mediator`), and
  ``Σ_x' P(x') ·`` a cross-sample attention from the mediator to a dictionary of K global
  prototypes of fused features with their training frequencies as prior
  (:class:`FrontDoorAdjustment`). Under the normalised weighted geometric mean (NWGM) the
  expectations move inside the classifier: ``P(Y|do(X)) ≈ softmax(g(E[m], E[x']))``.
* **Back door** (against S): ``P(Y | do(X)) = Σ_s P(Y | X, s) P(s)``, an exact sum over the
  training sites with their training prior (:class:`BackDoorAdjustment`). ``P(Y | X, s)``
  depends on s through a FiLM interaction, so the sum really marginalises the site; the
  site is never needed at prediction time.

Age, sex and vascular risk are recorded risk factors of the diagnosis: they stay in X (the
summary and the record tokens) and are not adjusted away (docs/design.md, "Age").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BackDoorAdjustment",
    "CrossModalFusion",
    "FrontDoorAdjustment",
    "Mediator",
    "masked_attention",
    "masked_mean",
    "remove_group_means",
]


def remove_group_means(features: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Features with each group's (site's) mean replaced by the overall mean.

    What is left cannot tell the groups apart by their average: a k-means dictionary built
    from it has no prototype per site. Rows of group -1 (unknown) are left as they are.
    """
    if groups is None:
        return features
    out = features.copy()
    overall = features.mean(0)
    for g in np.unique(groups[groups >= 0]):
        rows = groups == g
        out[rows] += overall - features[rows].mean(0)
    return out


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the tokens whose mask is 1; zeros where none is."""
    w = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * w).sum(1) / w.sum(1).clamp(min=1.0)


def masked_attention(attn: nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor,
                     key_mask: torch.Tensor) -> torch.Tensor:
    """Attention that returns zeros (not NaN) for samples with no valid key."""
    empty = key_mask.sum(1) == 0
    padding = key_mask == 0
    padding = padding & ~empty.unsqueeze(1)  # let empty rows attend (result is zeroed)
    out, _ = attn(query, keys, keys, key_padding_mask=padding, need_weights=False)
    return out.masked_fill(empty.view(-1, 1, 1), 0.0)


class CrossModalFusion(nn.Module):
    """Bidirectional cross-attention: visual tokens attend to text, text to visual.

    ``V' = LN(V + Attn(V, T))``, ``T' = LN(T + Attn(T, V))``, each followed by a
    feed-forward block; the fused tokens are ``Z = [V'; T']``.
    """

    def __init__(self, d_model: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.v_from_t = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.t_from_v = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_v, self.norm_t = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ff_v = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                  nn.Linear(2 * d_model, d_model))
        self.ff_t = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                  nn.Linear(2 * d_model, d_model))
        self.norm_v2, self.norm_t2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, v: torch.Tensor, v_mask: torch.Tensor, t: torch.Tensor,
                t_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v2 = self.norm_v(v + masked_attention(self.v_from_t, v, t, t_mask))
        t2 = self.norm_t(t + masked_attention(self.t_from_v, t, v, v_mask))
        v2 = self.norm_v2(v2 + self.ff_v(v2))
        t2 = self.norm_t2(t2 + self.ff_t(t2))
        return torch.cat([v2, t2], 1), torch.cat([v_mask, t_mask], 1)


class Mediator(nn.Module):
    """In-sample attention pooling, ``m = Σ_i softmax(q·z_i) z_i`` ≈ ``E_{P(M|X)}[m]``."""

    def __init__(self, d_model: int, heads: int = 4) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)

    def forward(self, z: torch.Tensor, mask: torch.Tensor,
                base: torch.Tensor | None = None) -> torch.Tensor:
        """``base``: a starting summary of X the attention refines (default: token mean)."""
        q = self.query.expand(z.shape[0], -1, -1)
        start = masked_mean(z, mask) if base is None else base
        return masked_attention(self.attn, q, z, mask)[:, 0] + start


class FrontDoorAdjustment(nn.Module):
    """Cross-sample attention from the mediator to K global prototypes of fused features.

    ``x̂ = Σ_k α_k W_v d_k`` with ``α_k ∝ P(d_k) exp((W_q m)·(W_k d_k)/√D)``: the prototypes
    ``d_k`` (k-means centres of training fused features, refreshed during training, kept
    in the checkpoint) with their cluster frequencies ``P(d_k)`` stand for ``P(x')``. With
    ``W_q = 0`` the weights are exactly the prior and ``x̂ = W_v E_{P(x')}[x']``.
    """

    def __init__(self, d_model: int, n_prototypes: int = 16) -> None:
        super().__init__()
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.register_buffer("prototypes", torch.zeros(n_prototypes, d_model))
        self.register_buffer("prior", torch.full((n_prototypes,), 1.0 / n_prototypes))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def weights(self, m: torch.Tensor) -> torch.Tensor:
        """``α`` of shape ``(B, K)``."""
        scores = self.q(m) @ self.k(self.prototypes).T / math.sqrt(m.shape[-1])
        # log P(d_k), with -inf for a prototype without mass: however well it matches, it
        # stands for no training sample and gets no weight
        log_prior = torch.where(self.prior > 0, torch.log(self.prior.clamp(min=1e-30)),
                                torch.full_like(self.prior, float("-inf")))
        return torch.softmax(scores + log_prior, dim=-1)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.weights(m) @ self.v(self.prototypes)

    @torch.no_grad()
    def refresh(self, features: torch.Tensor | np.ndarray, seed: int = 0,
                groups: np.ndarray | None = None) -> None:
        """Re-cluster the dictionary from fused features of training samples (k-means).

        Args:
            features: ``(N, D)`` fused features.
            seed: k-means seed.
            groups: each sample's site (-1 unknown); the site means are removed first, so
                that the prototypes, and attention to them, carry no site code.
        """
        from sklearn.cluster import KMeans

        x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor)
                       else features, dtype=np.float64)
        x = remove_group_means(x, groups)
        k = self.prototypes.shape[0]
        if len(x) < k:  # too few samples: repeat them (tiny sets, first steps)
            x = np.concatenate([x] * (k // max(1, len(x)) + 1))[: max(k, len(x))]
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
        counts = np.bincount(km.labels_, minlength=k).astype(np.float64)
        self.prototypes.copy_(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))
        self.prior.copy_(torch.as_tensor(counts / counts.sum(), dtype=torch.float32))
        self.ready.fill_(True)


class BackDoorAdjustment(nn.Module):
    """Stratify over the site: ``P(Y|do(X)) = Σ_s P(Y | X, s) P(s)``.

    ``P(Y | X, s) = softmax(W (h ⊙ (1 + γ_s) + β_s) + b)``: a FiLM interaction, so the site
    changes how the features are read, not just an offset that the sum would leave as it
    was. ``P(s)`` is the sites' training frequency (a buffer, saved in checkpoints). Only
    training needs the site (to fit the conditional); prediction sums over all of them.
    """

    def __init__(self, d_hidden: int, n_classes: int, n_strata: int = 1) -> None:
        super().__init__()
        self.film = nn.Embedding(n_strata, 2 * d_hidden)  # (γ_s, β_s)
        nn.init.zeros_(self.film.weight)
        self.out = nn.Linear(d_hidden, n_classes)
        self.register_buffer("prior", torch.full((n_strata,), 1.0 / n_strata))

    def set_prior(self, strata: np.ndarray) -> None:
        """``P(s)`` from the training samples' sites (unknown, -1, ignored; add-0.5)."""
        strata = np.asarray(strata)
        counts = np.bincount(strata[strata >= 0], minlength=self.prior.shape[0])
        counts = counts.astype(np.float64) + 0.5
        self.prior.copy_(torch.as_tensor(counts / counts.sum(), dtype=torch.float32))

    def conditional_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of ``P(Y | X, s)`` for every site, ``(B, S, C)``."""
        gamma, beta = self.film.weight.chunk(2, dim=-1)
        return self.out(h.unsqueeze(1) * (1 + gamma.unsqueeze(0)) + beta.unsqueeze(0))

    def forward(self, h: torch.Tensor, stratum: torch.Tensor) -> tuple[torch.Tensor,
                                                                      torch.Tensor]:
        """Returns ``(log P(Y|do(X)), logits of P(Y|X, s_observed))`` (site -1: the first)."""
        all_logits = self.conditional_logits(h)
        log_mix = torch.logsumexp(F.log_softmax(all_logits, -1)
                                  + torch.log(self.prior).view(1, -1, 1), dim=1)
        observed = all_logits[torch.arange(h.shape[0]), stratum.clamp(min=0)]
        return log_mix, observed
