"""Item-interest profiles (method spec section 3): per item the top-rho (cluster, weight) pairs.

Rows are sorted by weight (descending) and sum to 1; row 0 is padding (weights all zero). A row
with fewer than rho non-zero memberships repeats its primary cluster with weight 0 in the spare
slots, so every cluster id stays a valid embedding index.
"""

from __future__ import annotations


import numpy as np
import torch

from g2rec.errors import DataError
from g2rec.types import InterestProfiles

_MIN_MASS = 1e-12  # denominator floor of a cluster's membership mass
_SUM_TOL, _ORDER_TOL = 1e-5, 1e-7  # float32 weights: row sums and descending order, within rounding


def top_rho(clusters: np.ndarray, weights: np.ndarray, rho: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce sparse memberships (R, C) cluster ids + non-negative weights to the top-rho per row.

    Duplicate cluster ids within a row are summed first. Returns (R, rho) clusters and weights,
    sorted by weight descending, normalised to sum 1 (all-zero rows stay zero, cluster of slot 0).
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if clusters.shape != weights.shape or clusters.ndim != 2:
        raise ValueError(f"clusters {clusters.shape} and weights {weights.shape} must be equal 2-d shapes")
    if rho < 1:
        raise ValueError(f"rho={rho} must be >= 1")
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("weights must be finite and non-negative")
    n_rows, width = clusters.shape
    # Merge duplicate ids: sort each row by id, add runs into their first slot.
    order = np.argsort(clusters, axis=1, kind="stable")
    c = np.take_along_axis(clusters, order, 1)
    w = np.take_along_axis(weights, order, 1)
    for j in range(width - 1, 0, -1):
        same = c[:, j] == c[:, j - 1]
        w[same, j - 1] += w[same, j]
        w[same, j] = 0.0
    take = min(rho, width)
    idx = np.argsort(-w, axis=1, kind="stable")[:, :take]
    out_c = np.take_along_axis(c, idx, 1)
    out_w = np.take_along_axis(w, idx, 1)
    if take < rho:
        out_c = np.concatenate([out_c, np.repeat(out_c[:, :1], rho - take, 1)], 1)
        out_w = np.concatenate([out_w, np.zeros((n_rows, rho - take))], 1)
    out_c = np.where(out_w > 0, out_c, out_c[:, :1])  # spare slots repeat the primary
    total = out_w.sum(1, keepdims=True)
    out_w = np.divide(out_w, total, out=np.zeros_like(out_w), where=total > 0)
    return out_c, out_w.astype(np.float32)


def make_profiles(
    clusters: np.ndarray,
    weights: np.ndarray,
    item_ids: np.ndarray,
    n_clusters: int,
    rho: int,
    version: int = 0,
) -> InterestProfiles:
    """InterestProfiles from (N+1, C) sparse memberships; row 0 is forced to padding."""
    c, w = top_rho(clusters, weights, rho)
    if len(c) != len(item_ids):
        raise ValueError(f"{len(c)} membership rows for {len(item_ids)} item ids")
    if c.size and (c.min() < 0 or c.max() >= n_clusters):
        raise ValueError(f"cluster ids must lie in 0..{n_clusters - 1}")
    c[0] = 0
    w[0] = 0.0
    return InterestProfiles(clusters=c, weights=w, item_ids=np.asarray(item_ids), n_clusters=n_clusters, version=version)


def check_profiles(profiles: InterestProfiles, what: str = "profiles") -> None:
    """Raise DataError unless the profiles are well formed: (N+1, rho) clusters and weights with
    N >= 1, cluster ids in range, finite weights, rows 1..N summing to 1 in descending order."""
    c, w = np.asarray(profiles.clusters), np.asarray(profiles.weights)
    if c.shape != w.shape or c.ndim != 2 or len(c) != len(profiles.item_ids):
        raise DataError(f"{what}: clusters {c.shape}, weights {w.shape}, item_ids {np.shape(profiles.item_ids)} disagree")
    if len(c) < 2:
        raise DataError(f"{what}: no items (only the padding row)")
    if c.min() < 0 or c.max() >= profiles.n_clusters:
        raise DataError(f"{what}: cluster ids outside 0..{profiles.n_clusters - 1}")
    if not np.isfinite(w).all():
        raise DataError(f"{what}: weights must be finite")
    if not np.allclose(w[1:].sum(1), 1.0, atol=_SUM_TOL):
        raise DataError(f"{what}: weights of items 1..N must sum to 1")
    if (np.diff(w[1:], axis=1) > _ORDER_TOL).any():
        raise DataError(f"{what}: weights must be sorted in descending order")


def memberships(profiles: InterestProfiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO (item, cluster, weight) of the non-zero memberships, items 1..N."""
    item, slot = np.nonzero(profiles.weights > 0)
    return item, profiles.clusters[item, slot], profiles.weights[item, slot]


def cluster_sizes(profiles: InterestProfiles, soft: bool = False) -> np.ndarray:
    """(K,) items per cluster: primary counts, or summed membership weights when soft."""
    if soft:
        _, c, w = memberships(profiles)
        return np.bincount(c, weights=w, minlength=profiles.n_clusters)
    return np.bincount(profiles.primary[1:], minlength=profiles.n_clusters).astype(np.float64)


def cluster_prototypes(profiles: InterestProfiles, item_embeddings: torch.Tensor) -> torch.Tensor:
    """(K, d) membership-weighted mean of item embeddings (N+1, d) per cluster; empty clusters get 0."""
    n_rows = len(profiles.clusters)
    if item_embeddings.ndim != 2 or item_embeddings.shape[0] != n_rows:
        raise ValueError(f"item_embeddings {tuple(item_embeddings.shape)} must be ({n_rows}, d)")
    item, c, w = memberships(profiles)
    dev = item_embeddings.device
    item_t = torch.as_tensor(item, device=dev)
    c_t = torch.as_tensor(c, device=dev)
    w_t = torch.as_tensor(w, device=dev, dtype=item_embeddings.dtype)
    k, d = profiles.n_clusters, item_embeddings.shape[1]
    sums = torch.zeros(k, d, device=dev, dtype=item_embeddings.dtype)
    sums.index_add_(0, c_t, item_embeddings[item_t] * w_t[:, None])
    mass = torch.zeros(k, device=dev, dtype=item_embeddings.dtype).index_add_(0, c_t, w_t)
    return sums / mass.clamp_min(_MIN_MASS)[:, None]  # an empty cluster gets a zero vector
