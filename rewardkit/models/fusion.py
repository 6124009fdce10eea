"""Multi-view fusion: attention pooling over per-view image features with learned view embeddings.

Keys are computed from each view's feature plus a learned embedding of its render mode and of its view
slot; values are the view features themselves (no value projection), so with the query initialised to
zero the pooling starts as a plain mean over views and a pretrained CLIP's image–text alignment is kept
at initialisation. Multi-head: head h pools feature chunk h with its own weights. Works for any number of
views (slots wrap modulo ``max_views``) and honours a mask of present views; optional view dropout in
training (at least one view per sample is always kept).
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionViewPool(nn.Module):
    """Pools a sample's per-view features [B, V, D] into one [B, D] by attention with learned render-mode
    and view-slot embeddings (a plain mean at initialisation; see the module docstring)."""

    def __init__(self, dim: int, num_modes: int = 1, max_views: int = 32, heads: int = 1,
                 view_dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"feature dim {dim} is not divisible by heads={heads}")
        self.dim, self.heads, self.max_views = dim, heads, max_views
        self.view_dropout = float(view_dropout)
        self.mode_embed = nn.Parameter(torch.zeros(num_modes, dim))
        self.view_embed = nn.Parameter(torch.zeros(max_views, dim))
        nn.init.normal_(self.mode_embed, std=0.02)
        nn.init.normal_(self.view_embed, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.zeros(heads, dim // heads))

    def view_embeddings(self, mode_index: torch.Tensor, view_index: torch.Tensor) -> torch.Tensor:
        return self.mode_embed[mode_index] + self.view_embed[view_index % self.max_views]

    def dropout_mask(self, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Drop each present view with probability ``view_dropout``; keep at least one per sample."""
        if self.view_dropout <= 0:
            return mask
        r = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
        keep = (r >= self.view_dropout) & mask
        # A sample that lost every view keeps its highest-r present view.
        none_left = ~keep.any(dim=1)
        if none_left.any():
            best = torch.where(mask, r, torch.full_like(r, -1.0)).argmax(dim=1)
            keep[none_left, best[none_left]] = True
        return keep

    def forward(self, feats: torch.Tensor, mode_index: torch.Tensor, view_index: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, V, D]; mode_index, view_index [V] (long); mask [B, V] bool (True = present).

        Returns the pooled feature [B, D] and the view weights [B, heads, V].
        """
        b, v, d = feats.shape
        if mask is None:
            mask = torch.ones(b, v, dtype=torch.bool, device=feats.device)
        emb = self.view_embeddings(mode_index.to(feats.device), view_index.to(feats.device))
        keys = self.key(self.norm(feats) + emb).view(b, v, self.heads, d // self.heads)
        scores = torch.einsum("bvhc,hc->bhv", keys, self.query) / (d // self.heads) ** 0.5
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        values = feats.view(b, v, self.heads, d // self.heads)
        pooled = torch.einsum("bhv,bvhc->bhc", weights, values).reshape(b, d)
        return pooled, weights


class MeanViewPool(nn.Module):
    """Masked mean over views (a baseline fusion)."""

    def __init__(self, view_dropout: float = 0.0):
        super().__init__()
        self.view_dropout = float(view_dropout)

    dropout_mask = AttentionViewPool.dropout_mask

    def forward(self, feats, mode_index, view_index, mask=None):
        b, v, _ = feats.shape
        if mask is None:
            mask = torch.ones(b, v, dtype=torch.bool, device=feats.device)
        w = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1)
        return torch.einsum("bv,bvd->bd", w, feats), w[:, None, :]


__all__ = ["AttentionViewPool", "MeanViewPool"]
