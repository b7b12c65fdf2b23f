"""Modularity objectives and partition scores: the reference formulas tests and reports use.

Edge lists hold both directions of every undirected edge; rows are dense item ids (0 = padding).
"""

from __future__ import annotations

import numpy as np
import torch

_EDGE_CHUNK = 1 << 20  # directed edges per block in soft_modularity; bounds temporary memory


def hard_modularity(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, labels: np.ndarray) -> float:
    """Modularity of a hard partition; edges list both directions, labels index rows by item id."""
    src, dst = np.asarray(src), np.asarray(dst)
    labels = np.asarray(labels)
    weight = np.asarray(weight, dtype=np.float64)
    two_m = weight.sum()
    if two_m <= 0:
        raise ValueError("the graph has no positive edge weight")
    inside = weight[labels[src] == labels[dst]].sum()
    _, lab = np.unique(labels, return_inverse=True)
    deg = np.bincount(src, weights=weight, minlength=len(labels))
    d_c = np.bincount(lab, weights=deg)
    return float(inside / two_m - ((d_c / two_m) ** 2).sum())


def soft_modularity(
    src: torch.Tensor,
    dst: torch.Tensor,
    weight: torch.Tensor,
    clusters: torch.Tensor,
    weights: torch.Tensor,
    n_clusters: int,
    resolution: float = 1.0,
) -> float:
    """Q(S) for sparse rows S given as (R, rho) cluster ids and weights; O(rho*|E| + rho*R).

    Each directed edge looks up j's clusters among i's (rows sorted by id, batched binary search).
    """
    clusters, weights = torch.as_tensor(clusters), torch.as_tensor(weights, dtype=torch.float64)
    src, dst = torch.as_tensor(src), torch.as_tensor(dst)
    weight = torch.as_tensor(weight, dtype=torch.float64)
    two_m = weight.sum()
    deg = torch.zeros(len(clusters), dtype=torch.float64).index_add_(0, src, weight)
    d_c = torch.zeros(n_clusters, dtype=torch.float64).index_add_(
        0, clusters.flatten(), (weights * deg[:, None]).flatten()
    )
    # Merge duplicate ids within a row so the lookup below sees each cluster once.
    sorted_c, perm = clusters.sort(dim=1)
    sorted_w = weights.gather(1, perm)
    dup = torch.zeros_like(sorted_c, dtype=torch.bool)
    dup[:, 1:] = sorted_c[:, 1:] == sorted_c[:, :-1]
    for j in range(sorted_c.shape[1] - 1, 0, -1):
        sorted_w[:, j - 1] += torch.where(dup[:, j], sorted_w[:, j], 0.0)
    sorted_w = torch.where(dup, 0.0, sorted_w)
    inner = torch.zeros((), dtype=torch.float64)
    for lo in range(0, len(src), _EDGE_CHUNK):
        a, b, w = src[lo : lo + _EDGE_CHUNK], dst[lo : lo + _EDGE_CHUNK], weight[lo : lo + _EDGE_CHUNK]
        seq = sorted_c[a]
        pos = torch.searchsorted(seq, sorted_c[b]).clamp_max(seq.shape[1] - 1)
        hit = seq.gather(1, pos) == sorted_c[b]
        prod = sorted_w[a].gather(1, pos) * sorted_w[b] * hit
        inner += (w[:, None] * prod).sum()
    return float((inner - resolution * (d_c**2).sum() / two_m) / two_m)


def dense_soft_modularity(adjacency: torch.Tensor, s: torch.Tensor, resolution: float = 1.0) -> torch.Tensor:
    """Reference Q(S) = (1/2m)[tr(S^T A S) - (gamma/2m) ||S^T d||^2] on dense tensors (tests only)."""
    d = adjacency.sum(1)
    two_m = d.sum()
    return (torch.trace(s.T @ adjacency @ s) - resolution * ((s.T @ d) ** 2).sum() / two_m) / two_m


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of entropies) of two labelings."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"labelings must be equal-length 1-d arrays, got {a.shape} and {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    n, nb = len(a), bi.max() + 1
    joint = np.bincount(ai * nb + bi)
    idx = np.nonzero(joint)[0]
    p_ab = joint[idx] / n
    p_a, p_b = np.bincount(ai) / n, np.bincount(bi) / n
    mi = (p_ab * np.log(p_ab / (p_a[idx // nb] * p_b[idx % nb]))).sum()
    h_a = -(p_a * np.log(p_a)).sum()
    h_b = -(p_b * np.log(p_b)).sum()
    if h_a + h_b == 0:
        return 1.0
    return float(2 * mi / (h_a + h_b))
