"""Alternating interest/item tokenization (spec section 4), in torch so it exports to ONNX.

A history (i_1, ..., i_T) becomes P(i_1), i_1, P(i_2), i_2, ..., P(i_T), i_T where P(i) is the
interest token of item i: its top-rho (cluster, weight) profile. Interest tokens are soft: the model
embeds them as the profile-weighted sum of cluster embeddings. A hard token is a one-hot profile.

Every token carries its pair index counted from the end of the sequence ("position"), so that left
padding and variable lengths give the same positions for the most recent pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, INTEREST, ITEM = 0, 1, 2  # token kinds
N_TOKEN_KINDS = 3


@dataclass
class TokenBatch:
    """kind:     (B, L) int64 PAD / INTEREST / ITEM
    item:     (B, L) int64 item id at ITEM tokens, the profile's item at INTEREST tokens, 0 at PAD
    clusters: (B, L, rho) int64 cluster ids (INTEREST tokens; 0 elsewhere)
    weights:  (B, L, rho) float profile weights (INTEREST tokens; 0 elsewhere)
    pos:      (B, L) int64 pair index from the end (0 = most recent pair)
    """

    kind: torch.Tensor
    item: torch.Tensor
    clusters: torch.Tensor
    weights: torch.Tensor
    pos: torch.Tensor


def interleave(items: torch.Tensor, clusters: torch.Tensor, weights: torch.Tensor, last_pos: int = 0) -> TokenBatch:
    """Left-padded item histories (B, T) -> alternating tokens (B, 2T).

    clusters, weights: (N+1, rho) profile tables (row 0 = padding).
    last_pos: pair index of the most recent pair (1 when an interest token will be appended).
    """
    B, T = items.shape
    valid = items > 0  # (B, T)
    rho = clusters.shape[1]
    kind = torch.stack([torch.where(valid, INTEREST, PAD), torch.where(valid, ITEM, PAD)], dim=2).view(B, 2 * T)
    item = items.repeat_interleave(2, dim=1)  # (B, 2T)
    is_interest = (kind == INTEREST).unsqueeze(-1)  # (B, 2T, 1)
    cl = torch.where(is_interest, clusters[item], torch.zeros_like(clusters[item]))  # (B, 2T, rho)
    w = torch.where(is_interest, weights[item], torch.zeros_like(weights[item]))
    pos = (T - 1 - torch.arange(T, device=items.device) + last_pos).repeat_interleave(2)  # (2T,)
    return TokenBatch(kind, item, cl.view(B, 2 * T, rho), w.view(B, 2 * T, rho), pos.expand(B, 2 * T))


def append_interests(tokens: TokenBatch, clusters: torch.Tensor) -> TokenBatch:
    """Append m hard interest tokens per row, all at pair index 0: clusters (B, m) -> a TokenBatch of
    length L+m. Encoded with n_tail=m they are m alternatives for the same next pair."""
    B, L, rho = tokens.clusters.shape
    m = clusters.shape[1]
    kind = torch.full((B, m), INTEREST, dtype=tokens.kind.dtype, device=clusters.device)
    cl = torch.zeros(B, m, rho, dtype=tokens.clusters.dtype, device=clusters.device)
    cl[:, :, 0] = clusters
    w = torch.zeros(B, m, rho, dtype=tokens.weights.dtype, device=clusters.device)
    w[:, :, 0] = 1.0
    return TokenBatch(
        kind=torch.cat([tokens.kind, kind], 1),
        item=torch.cat([tokens.item, torch.zeros_like(kind)], 1),
        clusters=torch.cat([tokens.clusters, cl], 1),
        weights=torch.cat([tokens.weights, w], 1),
        pos=torch.cat([tokens.pos, torch.zeros_like(kind)], 1),
    )
