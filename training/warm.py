"""Carrying a model across catalogues: the union catalogue of a cycle, histories re-keyed to it,
the profile table the model holds, and a champion grown to the new catalogue.

Ids: a catalogue is (N+1,) int64 original item ids, sorted, catalogue[0] = 0 a padding
placeholder (as g2rec.data.from_events makes them); dense id i stands for catalogue[i].
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from g2rec.model import G2RecModel
from g2rec.types import Interactions, InterestProfiles

PAD_ID = 0


def catalogue(*item_ids: np.ndarray) -> np.ndarray:
    """The sorted union of the given (M+1,) id tables (their row 0, padding, is left out)."""
    ids = np.unique(np.concatenate([np.asarray(a, dtype=np.int64)[1:] for a in item_ids]))
    return np.concatenate([[PAD_ID], ids]).astype(np.int64)


def dense_ids(cat: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """(M,) original ids -> dense ids in `cat`, 0 where an id is not in it."""
    raw = np.asarray(raw, dtype=np.int64)
    pos = np.searchsorted(cat[1:], raw).clip(0, max(len(cat) - 2, 0))
    found = cat[1:][pos] == raw if len(cat) > 1 else np.zeros(len(raw), dtype=bool)
    return np.where(found, pos + 1, 0)


def rekey(data: Interactions, cat: np.ndarray) -> Interactions:
    """`data` with its items re-keyed to `cat` (which must hold every one of them)."""
    items = dense_ids(cat, np.asarray(data.item_ids, dtype=np.int64)[data.items])
    if len(items) and items.min() < 1:
        raise ValueError("the catalogue misses items of the histories")
    return replace(data, items=items, item_ids=cat)


def profile_table(cat: np.ndarray, profiles: InterestProfiles, older: list[InterestProfiles]) -> InterestProfiles:
    """Profiles of every catalogue item: from `profiles` where it has the item, else from the first
    of `older` that has it (a champion's, for items absent from this snapshot), else a stand-in
    (cluster id % K, weight 1) so that the model can embed it."""
    n, rho, k = len(cat), profiles.rho, profiles.n_clusters
    clusters = np.zeros((n, rho), np.int64)
    weights = np.zeros((n, rho), np.float32)
    todo = np.ones(n, dtype=bool)
    todo[0] = False
    for p in [profiles, *older]:
        if p.rho != rho or p.n_clusters != k:
            continue
        rows = dense_ids(np.asarray(p.item_ids, dtype=np.int64), cat)  # row of each catalogue item in p
        take = todo & (rows > 0)
        clusters[take], weights[take] = p.clusters[rows[take]], p.weights[rows[take]]
        todo &= ~take
    clusters[todo, 0] = cat[todo] % k
    weights[todo, 0] = 1.0
    return InterestProfiles(clusters, weights, cat, k, profiles.version)


def model_profiles(model: G2RecModel, item_ids: np.ndarray) -> InterestProfiles | None:
    """The profile table a g2rec-mode model holds (None in items mode)."""
    if model.cfg.mode != "g2rec":
        return None
    return InterestProfiles(model.prof_clusters.numpy().copy(), model.prof_weights.numpy().copy(),
                            np.asarray(item_ids, dtype=np.int64), model.cfg.n_clusters)


def can_grow(champion: G2RecModel, profiles: InterestProfiles | None) -> bool:
    """Whether `champion` can be carried to `profiles` (same interests: count and sparsity)."""
    if champion.cfg.mode != "g2rec":
        return True
    return profiles is not None and (champion.cfg.n_clusters, champion.cfg.rho) == (profiles.n_clusters, profiles.rho)


@torch.no_grad()
def grow(champion: G2RecModel, champion_ids: np.ndarray, profiles: InterestProfiles | None) -> G2RecModel:
    """A copy of `champion` over the catalogue profiles.item_ids (items mode: pass the catalogue as
    an InterestProfiles-free call through `grow_items`). Every weight carries over; an item the
    champion knew keeps its embedding row; a new item's row starts at its profile's weighted cluster
    embedding (g2rec mode), so it is scorable at once. The profile buffers become `profiles`."""
    cat = np.asarray(profiles.item_ids, dtype=np.int64)
    model = _resized(champion, champion_ids, cat)
    new = model.item_emb.weight.new_zeros(len(cat), dtype=torch.bool)
    new[1:] = torch.from_numpy(dense_ids(np.asarray(champion_ids, dtype=np.int64), cat[1:]) == 0)
    model.set_profiles(profiles.clusters, profiles.weights)
    c = model.prof_clusters[new]  # (n_new, rho)
    w = model.prof_weights[new].unsqueeze(-1)  # (n_new, rho, 1)
    model.item_emb.weight[new] = (model.cluster_emb(c) * w).sum(1)
    return model


@torch.no_grad()
def grow_items(champion: G2RecModel, champion_ids: np.ndarray, cat: np.ndarray) -> G2RecModel:
    """Items mode: `grow` without profiles; a new item starts at the mean known embedding."""
    model = _resized(champion, champion_ids, cat)
    known = dense_ids(np.asarray(champion_ids, dtype=np.int64), cat[1:]) > 0
    mean = champion.item_emb.weight[1:].mean(0)
    model.item_emb.weight[1:][torch.from_numpy(~known)] = mean
    return model


def _resized(champion: G2RecModel, champion_ids: np.ndarray, cat: np.ndarray) -> G2RecModel:
    """A new model over `cat` holding every champion weight; item rows copied by original id."""
    model = G2RecModel(replace(champion.cfg, n_items=len(cat) - 1))
    state = {k: v for k, v in champion.state_dict().items()
             if k not in ("item_emb.weight", "prof_clusters", "prof_weights")}
    model.load_state_dict(state, strict=False)
    rows = dense_ids(cat, np.asarray(champion_ids, dtype=np.int64)[1:])  # champion row i+1 -> new row
    with torch.no_grad():
        model.item_emb.weight[torch.from_numpy(rows)] = champion.item_emb.weight[1:]
        model.item_emb.weight[0] = 0.0
    return model
