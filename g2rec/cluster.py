"""Soft modularity clustering with rho-sparse memberships (method spec section 2).

Objective, for weights w_ij (both directions listed), degrees d_i, 2m = sum_i d_i and a soft
assignment S with at most rho non-zeros per row:

    Q(S) = (1/2m) * [ sum_ij w_ij <s_i, s_j>  -  (gamma/2m) * ||S^T d||^2 ]

gamma is the resolution (1 = standard modularity). Each item i holds logits over a small candidate
set C_i of clusters (n_candidates of them); s_i = softmax(top-rho logits / temperature). Adam
ascends  Q - lambda * R(S) + T * sum_i (d_i/2m) H(s_i)  with DMoN's collapse regulariser
R = (sqrt(K)/N) * ||sum_i s_i|| - 1 and a degree-weighted membership entropy (`softness` T):
Q alone is linear in each row, so its maximisers are one-hot; the entropy keeps an item soft
exactly when its edges are split between clusters.

Cost per iteration is O(rho*|E| + C*N): a per-edge table, rebuilt only where candidates change,
maps each of j's candidate slots to the slot of the same cluster among i's candidates, so
(A S)_i restricted to C_i is one index_add over rho*|E| entries. That gives the exact gradient for
the top-rho logits and, for the other candidates, the gain they would have if they entered
(a straight-through estimate), so a better cluster can climb into the top rho. Every
`refresh_every` iterations the candidate sets are rebuilt from the current top-rho clusters plus the
neighbours' clusters with the best modularity gain. Nothing of size N x N or N x K is ever built.

Cold start: a hard partition from label propagation and/or multilevel modularity moves at the
same resolution (g2rec/partition.py), its K largest groups mapped onto the cluster ids. Warm start:
previous profiles matched by original item id, so cluster ids stay stable across publishes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from g2rec.errors import ConfigError
from g2rec.modularity import dense_soft_modularity, hard_modularity, nmi, soft_modularity
from g2rec.partition import (
    WorkGraph,
    hard_assign,
    hard_q,
    hash_ints,
    label_propagation,
    labels_to_clusters,
    local_moves,
    modularity_propagation,
    neighbour_gains,
    row_dedupe,
    slot_lookup,
)
from g2rec.profiles import make_profiles
from g2rec.types import EdgeSnapshot, InterestProfiles

__all__ = [
    "ClusterConfig", "ClusterReport", "cluster", "start_state", "pick_device",
    "hard_modularity", "soft_modularity", "dense_soft_modularity", "nmi",
]
_EDGE_CHUNK = 1 << 17  # directed edges per block in the per-iteration passes
_ROW_CHUNK = 1 << 15  # item rows per block in the gradient and Adam passes
# Salts of hash_ints streams, so that each pseudo-random choice is independent of the others.
_SALT_FALLBACK = 17  # the cluster of an item no initial partition placed
_SALT_FILLER = 23  # filler candidates of the first candidate sets (refreshes salt by iteration)
_LOG_FLOOR = 1e-30  # weights are clamped to this before a log: log(0) would give -inf * 0 = nan


@dataclass(frozen=True)
class ClusterConfig:
    """Soft modularity clustering settings.

    n_clusters:      K, the number of interest clusters.
    rho:             non-zeros per membership row.
    n_candidates:    C, clusters each item may choose from (rebuilt every refresh_every iterations).
    temperature:     tau in s_i = softmax(top-rho logits / tau).
    iters, lr:       Adam iterations and step size on the logits.
    collapse_weight: lambda of the DMoN collapse regulariser.
    resolution:      gamma of the null-model term; > 1 favours more, smaller clusters.
    auto_resolution: ignore `resolution` and search (bisection in log space) for the gamma at
                     which the cold-start partition has about n_clusters groups; the report
                     gives the gamma used. Real co-engagement graphs have far fewer communities
                     at gamma = 1 than a useful K (Beauty: 13), leaving most clusters empty.
    init:            cold start, a hard partition: "lpa" = label propagation until resolution-gamma
                     modularity peaks, then multilevel modularity local moves on its groups;
                     "moves" = multilevel modularity local moves from singletons (a synchronous
                     Louvain at this resolution); "auto" = both, keeping the higher modularity.
    init_rounds:     at most this many propagation rounds (per level) for a cold start.
    warm_rounds:     warm start: at most this many rounds of modularity local moves from the warm
                     primary partition (cluster ids kept); an item that moves restarts as a hard
                     member of its new cluster, the others keep their soft warm rows. On a newer
                     snapshot the old partition has lost modularity the soft Adam steps regain only
                     slowly (ML-100K, 55% -> 70% of the span: 0.108 warm vs 0.145 cold at the start).
    warm_iters, warm_tol: Adam budget and convergence tolerance of a warm start (None: iters, tol).
    init_logit:      logit given to an item's initial cluster (other candidates start at 0).
    min_weight:      memberships below this weight are dropped from the profiles.
    tol:             stop when the objective gains less than this over one refresh period.
    softness:        T, weight of the degree-weighted membership entropy T * sum_i (d_i/2m) H(s_i)
                     added to the objective. Q is linear in each row, so without it memberships
                     drift to one-hot; with it the optimum is s_ic ~ exp(2 * gain_ic / (T d_i)), i.e.
                     soft exactly where an item's edges are split between clusters.
    """

    n_clusters: int = 256
    rho: int = 4
    n_candidates: int = 16
    temperature: float = 1.0
    iters: int = 200
    lr: float = 0.1
    collapse_weight: float = 0.0
    seed: int = 0
    device: str = "auto"
    resolution: float = 1.0
    refresh_every: int = 10
    init_rounds: int = 50
    init_logit: float = 6.0
    init: str = "auto"
    min_weight: float = 1e-3
    tol: float = 1e-4
    softness: float = 0.05
    auto_resolution: bool = False
    warm_rounds: int = 0
    warm_iters: int | None = None
    warm_tol: float | None = None

    def __post_init__(self) -> None:
        if self.n_clusters < 1:
            raise ConfigError(f"n_clusters={self.n_clusters} must be >= 1")
        if not 1 <= self.rho <= self.n_candidates:
            raise ConfigError(f"need 1 <= rho={self.rho} <= n_candidates={self.n_candidates}")
        if self.n_candidates > 127:
            raise ConfigError(f"n_candidates={self.n_candidates} must be <= 127")
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError(f"temperature={self.temperature} and lr={self.lr} must be positive")
        if self.iters < 0 or self.init_rounds < 0 or self.warm_rounds < 0 or self.refresh_every < 1:
            raise ConfigError("iters, init_rounds and warm_rounds must be >= 0, refresh_every >= 1")
        if (self.warm_iters is not None and self.warm_iters < 0) or (self.warm_tol is not None and self.warm_tol < 0):
            raise ConfigError(f"warm_iters={self.warm_iters} and warm_tol={self.warm_tol} must be >= 0")
        if self.collapse_weight < 0 or self.resolution <= 0:
            raise ConfigError("collapse_weight must be >= 0 and resolution > 0")
        if self.init not in ("auto", "lpa", "moves"):
            raise ConfigError(f"init={self.init!r} must be 'auto', 'lpa' or 'moves'")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device={self.device!r} must be 'auto', 'cpu' or 'cuda[:n]'")


@dataclass(frozen=True)
class ClusterReport:
    """What one clustering run achieved.

    modularity:      hard modularity of the argmax (primary) assignment, resolution 1.
    soft_modularity: Q(S) of the final rho-sparse memberships, resolution 1.
    objective:       the optimised value, Q_gamma(S) - lambda * R(S) + T * entropy.
    init_modularity: hard modularity right after initialisation (before any Adam step).
    mean_primary_weight, mean_memberships: how soft the profiles are (items with edges only).
    changed_primary: items (present in both) whose primary cluster differs from the warm start.
    """

    modularity: float
    soft_modularity: float
    objective: float
    init_modularity: float
    iterations: int
    seconds: float
    iter_seconds: float
    size_min: int
    size_median: float
    size_max: int
    n_empty: int
    n_isolated: int
    mean_primary_weight: float
    mean_memberships: float
    changed_primary: int | None
    device: str
    resolution: float


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# The optimiser


@dataclass(frozen=True)
class _Memberships:
    """Each row's top-rho memberships: idx (R, rho) candidate columns, clusters (R, rho) their
    cluster ids, weights (R, rho) their softmax weights."""

    idx: torch.Tensor
    clusters: torch.Tensor
    weights: torch.Tensor


@dataclass(frozen=True)
class _Pass:
    """One forward pass: Q_gamma and the objective, and what the gradient needs from it.

    idx, s:  (R, rho) top-rho columns and (active-masked) weights.
    a_s:     (R, C) (A S)_ic at each candidate column.
    d_c, sizes: (K,) degree mass and membership mass per cluster; norm = ||sizes||.
    """

    q: float
    objective: float
    idx: torch.Tensor
    s: torch.Tensor
    a_s: torch.Tensor
    d_c: torch.Tensor
    sizes: torch.Tensor
    norm: float


@dataclass(frozen=True)
class _InitialRows:
    """clusters (R, P) initial clusters, logits (R, P) their logits (-inf = unused) and, for a warm
    start, warm_primary (R,) the warm primary cluster per row (-1 for new items), else None."""

    clusters: torch.Tensor
    logits: torch.Tensor
    warm_primary: torch.Tensor | None


class _SoftState:
    """Candidate clusters, logits and Adam moments of every row, plus the per-edge slot table."""

    def __init__(self, g: WorkGraph, cfg: ClusterConfig, cand: torch.Tensor, theta: torch.Tensor):
        self.g, self.cfg = g, cfg
        self.k = cfg.n_clusters
        self.c = cand.shape[1]
        self.cand, self.theta = cand, theta
        self.m1 = torch.zeros_like(theta)
        self.m2 = torch.zeros_like(theta)
        self.step = 0
        self.w32 = g.w.float()
        self.deg32 = g.deg.float()
        self.rows = torch.arange(g.n_rows, device=cand.device)
        self.n_active = max(int(g.active.sum()), 1)
        self.active_f = g.active.float()
        self.n_slots = g.n_rows * self.c
        self.table_dtype = torch.int32 if self.n_slots < 2**31 - 1 else torch.int64
        self.table = torch.empty((len(g.src), self.c), dtype=self.table_dtype, device=cand.device)
        self._rebuild_table(None)

    def _rebuild_table(self, changed: torch.Tensor | None) -> None:
        """table[e, y] = flat slot src_e * C + x where cand[src_e, x] == cand[dst_e, y], else the
        dump slot R * C; (E, C). Only edges touching a `changed` row are recomputed."""
        g = self.g
        if changed is None:
            edges = torch.arange(len(g.src), device=g.src.device)
        else:
            edges = torch.nonzero(changed[g.src] | changed[g.dst]).flatten()
        for lo in range(0, len(edges), _EDGE_CHUNK):
            e = edges[lo : lo + _EDGE_CHUNK]
            a, b = g.src[e], g.dst[e]
            col = slot_lookup(self.cand, a, self.cand[b])
            flat = torch.where(col >= 0, a[:, None] * self.c + col, self.n_slots)
            self.table[e] = flat.to(self.table_dtype)

    def memberships(self) -> _Memberships:
        vals, idx = self.theta.topk(self.cfg.rho, dim=1)
        s = torch.softmax(vals / self.cfg.temperature, dim=1)
        return _Memberships(idx, self.cand.gather(1, idx), s)

    def _forward(self) -> _Pass:
        """Q_gamma, the objective and what the gradient needs: one O(rho*|E| + C*N) pass."""
        cfg, g = self.cfg, self.g
        mem = self.memberships()
        idx, tc, s = mem.idx, mem.clusters, mem.weights
        s = s * self.active_f[:, None]  # isolated items take no part in the objective
        d_c = torch.zeros(self.k, device=s.device).index_add_(0, tc.flatten(), (s * self.deg32[:, None]).flatten())
        sizes = torch.zeros(self.k, device=s.device).index_add_(0, tc.flatten(), s.flatten())
        if not hasattr(self, "_a_s"):
            self._a_s = torch.zeros(self.n_slots + 1, device=s.device)  # reused: no fresh pages per step
        a_s = self._a_s.zero_()
        # One packed int64 row per item, top columns then the weights' bits: a single random read
        # per edge instead of two (index_select, not s[b]: advanced indexing is slower on CPU).
        rho = cfg.rho
        s_bits = s if rho % 2 == 0 else torch.cat([s, torch.zeros_like(s[:, :1])], dim=1)
        packed = torch.cat([idx, s_bits.view(torch.int64)], dim=1)  # (R, rho + ceil(rho/2))
        for lo, _, b, _ in g.chunks():
            hi = lo + len(b)
            row = packed.index_select(0, b)
            flat = self.table[lo:hi].gather(1, row[:, :rho])  # (e, rho): slots in a's row
            s_b = row[:, rho:].contiguous().view(torch.float32)[:, :rho]
            a_s.index_add_(0, flat.flatten().long(), (self.w32[lo:hi, None] * s_b).flatten())
        a_s = a_s[: self.n_slots].view(g.n_rows, self.c)  # (R, C): (A S)_ic at each candidate
        two_m = g.two_m
        inner = float((s.double() * a_s.gather(1, idx).double()).sum())
        null = float((d_c.double() ** 2).sum()) / two_m
        q = (inner - cfg.resolution * null) / two_m
        norm = float(sizes.double().norm())
        reg = math.sqrt(self.k) / self.n_active * norm - 1.0
        entropy = float((self.deg32[:, None] * s * -torch.log(s.clamp_min(_LOG_FLOOR))).double().sum()) / two_m
        objective = q - cfg.collapse_weight * reg + cfg.softness * entropy
        return _Pass(q, objective, idx, s, a_s, d_c, sizes, norm)

    def _grad_rows(self, ps: _Pass, lo: int, hi: int) -> torch.Tensor:
        """(hi-lo, C) ascent gradient w.r.t. theta[lo:hi], scaled by 2m so it is O(1) whatever the
        graph size (Adam's eps stays negligible). Row blocks keep the temporaries in cache."""
        cfg, two_m = self.cfg, self.g.two_m
        idx, s, a_s = ps.idx[lo:hi], ps.s[lo:hi], ps.a_s[lo:hi]
        d_c, sizes, norm = ps.d_c, ps.sizes, ps.norm
        theta, cand = self.theta[lo:hi], self.cand[lo:hi]
        deg, active = self.deg32[lo:hi, None], self.active_f[lo:hi, None]
        # dQ/ds_ic = (2/2m) [(A S)_ic - gamma d_i D_c / 2m]; dR/ds_ic = sqrt(K)/N * n_c / ||n||.
        d_cand = d_c.index_select(0, cand.flatten()).view_as(a_s)
        grad_s = (2.0 / two_m) * (a_s - (cfg.resolution / two_m) * deg * d_cand)
        if cfg.collapse_weight > 0 and norm > 0:
            size_cand = sizes.index_select(0, cand.flatten()).view_as(a_s)
            grad_s -= cfg.collapse_weight * math.sqrt(self.k) / self.n_active / norm * size_cand
        # Softmax mass of every candidate relative to the top-rho set: exactly s on the top columns,
        # so their gradient is exact; for the others it is the straight-through estimate.
        log_z = torch.logsumexp(theta.gather(1, idx) / cfg.temperature, dim=1, keepdim=True)
        log_p = theta / cfg.temperature - log_z
        if cfg.softness > 0:
            # d/ds_ic of T * sum_i (d_i/2m) H(s_i) = -T (d_i/2m)(log s_ic + 1); the +1 cancels below.
            grad_s -= (cfg.softness / two_m) * deg * log_p
        grad_s *= active
        g_bar = (s * grad_s.gather(1, idx)).sum(1, keepdim=True)
        return (two_m / cfg.temperature) * torch.exp(log_p) * (grad_s - g_bar)

    def evaluate(self) -> _Pass:
        """Q_gamma and the objective of the current memberships (no step)."""
        return self._forward()

    def gradient(self) -> torch.Tensor:
        """(R, C) ascent gradient w.r.t. theta at the current memberships."""
        ps, rows = self._forward(), self.g.n_rows
        return torch.cat([self._grad_rows(ps, lo, min(lo + _ROW_CHUNK, rows)) for lo in range(0, rows, _ROW_CHUNK)])

    def iterate(self) -> float:
        """One Adam ascent step on every row; returns the objective before the step."""
        ps = self._forward()
        self.step += 1
        for lo in range(0, self.g.n_rows, _ROW_CHUNK):
            hi = min(lo + _ROW_CHUNK, self.g.n_rows)
            self.adam_step(self._grad_rows(ps, lo, hi), lo, hi)
        return ps.objective

    def adam_step(
        self, grad: torch.Tensor, lo: int = 0, hi: int | None = None,
        beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
    ) -> None:
        """Adam update of theta[lo:hi] with this step's gradient (call after advancing self.step)."""
        m1, m2, theta = self.m1[lo:hi], self.m2[lo:hi], self.theta[lo:hi]
        m1.mul_(beta1).add_(grad, alpha=1 - beta1)
        m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (m2 / (1 - beta2**self.step)).sqrt_().add_(eps)
        theta.addcdiv_(m1, denom, value=self.cfg.lr / (1 - beta1**self.step))

    def refresh(self, salt: int) -> None:
        """Rebuild candidates: current top-rho, the neighbours' best-gain clusters, the rest of the
        old candidates by logit, then pseudo-random clusters. Kept candidates keep logit and moments."""
        cfg = self.cfg
        mem = self.memberships()
        idx, tc, s = mem.idx, mem.clusters, mem.weights
        d_c = torch.zeros(self.k, dtype=torch.float64, device=s.device).index_add_(
            0, tc.flatten(), (s.double() * self.g.deg[:, None]).flatten()
        )
        # Neighbours' primary clusters only: the others rarely rank and would cost rho times more.
        neighbours = neighbour_gains(self.g, tc[:, :1], s[:, :1].double(), d_c, cfg.resolution, self.c, self.k)
        by_logit = self.cand.gather(1, torch.argsort(self.theta, dim=1, descending=True, stable=True))
        filler = (hash_ints(cfg.seed, salt, self.rows)[:, None] + torch.arange(self.c, device=s.device)) % self.k
        prio = torch.cat([by_logit[:, : cfg.rho], neighbours, by_logit[:, cfg.rho :], filler], dim=1)
        new = row_dedupe(prio, self.c)
        # Kept candidates stay in their old column (their logit, moments and table entries stay
        # valid); newcomers take the freed columns. Only rows with a newcomer need table updates.
        old_col = slot_lookup(self.cand, self.rows, new)
        kept = old_col >= 0
        c = self.c
        placed = torch.full((len(new), c + 1), -2, dtype=new.dtype, device=new.device)
        placed.scatter_(1, torch.where(kept, old_col, c), new)  # column c collects the newcomers
        placed = placed[:, :c]
        free = placed == -2
        cols = torch.arange(c, device=new.device)
        free_order = torch.argsort(cols + c * (~free).long(), dim=1, stable=True)
        new_order = torch.argsort(cols + c * kept.long(), dim=1, stable=True)
        n_new = (~kept).sum(1, keepdim=True)
        take = cols[None, :] < n_new
        rows = self.rows[:, None].expand(-1, c)
        placed[rows[take], free_order[take]] = new.gather(1, new_order)[take]
        floor = self.theta.gather(1, idx[:, -1:]) - 1.0  # newcomers start just below the top rho
        self.theta = torch.where(free, floor, self.theta)
        self.m1 = torch.where(free, 0.0, self.m1)
        self.m2 = torch.where(free, 0.0, self.m2)
        changed = free.any(1)
        self.cand = placed
        self._rebuild_table(changed)


def _initial_rows(g: WorkGraph, cfg: ClusterConfig, snapshot: EdgeSnapshot, warm: InterestProfiles | None) -> _InitialRows:
    """Cold start: a hard partition. Warm start: the previous profiles matched by original item id."""
    dev = g.src.device
    n_rows, k = g.n_rows, cfg.n_clusters
    fallback = hash_ints(cfg.seed, _SALT_FALLBACK, torch.arange(n_rows, device=dev)) % k
    if warm is None:
        tries = []
        if cfg.init in ("auto", "lpa"):
            start = label_propagation(g, cfg.init_rounds, cfg.seed, cfg.resolution)
            tries.append(modularity_propagation(g, cfg.resolution, cfg.init_rounds, cfg.seed, start))
        if cfg.init in ("auto", "moves"):
            tries.append(modularity_propagation(g, cfg.resolution, cfg.init_rounds, cfg.seed))
        labels = max(tries, key=lambda lab: hard_q(g, lab, cfg.resolution))
        hard = labels_to_clusters(labels, g, k, cfg.resolution)
        hard = torch.where(hard >= 0, hard, fallback)
        return _InitialRows(hard[:, None], torch.full((n_rows, 1), cfg.init_logit, device=dev), None)
    if warm.n_clusters != k:
        raise ValueError(f"warm profiles have {warm.n_clusters} clusters, cfg.n_clusters={k}")
    warm_ids = np.asarray(warm.item_ids)[1:]
    order = np.argsort(warm_ids, kind="stable")
    ids = np.asarray(snapshot.item_ids)
    pos = np.searchsorted(warm_ids[order], ids).clip(0, max(len(warm_ids) - 1, 0))
    found = (warm_ids[order][pos] == ids) if len(warm_ids) else np.zeros(len(ids), dtype=bool)
    found[0] = False
    row = np.where(found, order[pos] + 1, 0)
    w_c = torch.as_tensor(warm.clusters[row], device=dev)
    w_w = torch.as_tensor(warm.weights[row], dtype=torch.float32, device=dev)
    found_t = torch.as_tensor(found, device=dev)
    logits = torch.where(w_w > 0, cfg.init_logit + cfg.temperature * torch.log(w_w.clamp_min(_LOG_FLOOR)), -math.inf)
    logits = torch.where(found_t[:, None], logits, -math.inf)
    prim = torch.where(found_t, w_c[:, 0], -1)
    hard = hard_assign(g, prim, k, rounds=5, resolution=cfg.resolution)
    hard = torch.where(hard >= 0, hard, fallback)
    if cfg.warm_rounds and len(g.src):
        hard = local_moves(g.src, g.dst, g.w, g.deg, g.two_m, cfg.resolution, cfg.warm_rounds, cfg.seed, 1e-3, hard)
    kept = found_t & (hard == prim)  # rows that keep their soft warm memberships
    clusters = torch.where(kept[:, None], w_c, hard[:, None])
    logits = torch.where(kept[:, None], logits, -math.inf)
    logits[~kept, 0] = cfg.init_logit
    return _InitialRows(clusters, logits, prim)


def match_resolution(g: WorkGraph, cfg: ClusterConfig, steps: int = 10, tolerance: float = 0.05) -> float:
    """The resolution (searched in [0.25, 1024], log-space bisection) at which multilevel
    modularity moves from singletons give the number of groups closest to cfg.n_clusters."""
    target = cfg.n_clusters
    lo, hi = math.log(0.25), math.log(1024.0)
    best = (math.inf, 1.0)
    for _ in range(steps):
        gamma = math.exp((lo + hi) / 2)
        labels = modularity_propagation(g, gamma, cfg.init_rounds, cfg.seed)
        n = len(torch.unique(labels[g.active]))
        best = min(best, (abs(n - target), gamma))
        if abs(n - target) <= tolerance * target:
            break
        lo, hi = (math.log(gamma), hi) if n < target else (lo, math.log(gamma))
    return best[1]


def start_state(g: WorkGraph, cfg: ClusterConfig, init_c: torch.Tensor, init_logit: torch.Tensor) -> _SoftState:
    """Optimiser state from initial rows: candidates are the initial clusters, then the neighbours'
    best-gain clusters, then filler; the initial clusters keep their logits, the rest start below."""
    n_rows, k = g.n_rows, cfg.n_clusters
    c = min(cfg.n_candidates, k)
    dev = g.src.device
    hard0 = init_c[:, 0]
    one = torch.ones(n_rows, 1, dtype=torch.float64, device=dev)
    d_c = torch.zeros(k, dtype=torch.float64, device=dev).index_add_(0, hard0, g.deg)
    neighbours = neighbour_gains(g, hard0[:, None], one, d_c, cfg.resolution, c, k)
    filler = (hash_ints(cfg.seed, _SALT_FILLER, torch.arange(n_rows, device=dev))[:, None] + torch.arange(c, device=dev)) % k
    init_valid = torch.where(torch.isfinite(init_logit), init_c, -1)
    cand = row_dedupe(torch.cat([init_valid, neighbours, filler], 1), c)
    col = slot_lookup(init_valid, torch.arange(n_rows, device=dev), cand)
    base = torch.where(torch.isfinite(init_logit), init_logit, math.inf).min(1, keepdim=True).values - 1.0
    other = torch.minimum(base, torch.zeros_like(base))
    theta = torch.where(col >= 0, init_logit.gather(1, col.clamp_min(0)), other).float()
    return _SoftState(g, cfg, cand, theta)


def cluster(
    snapshot: EdgeSnapshot, cfg: ClusterConfig, warm: InterestProfiles | None = None, version: int | None = None
) -> tuple[InterestProfiles, ClusterReport]:
    """Soft modularity clustering of a snapshot into rho-sparse item-interest profiles.

    warm: previous profiles; items are matched by original id (snapshot.item_ids vs warm.item_ids),
    so cluster ids carry over and the report counts items whose primary cluster changed.
    The profiles' version is `version`, else warm.version + 1, else 0.
    """
    t0 = time.perf_counter()
    dev = pick_device(cfg.device)
    g = WorkGraph(snapshot, dev)
    if cfg.auto_resolution:
        cfg = dataclasses.replace(cfg, resolution=match_resolution(g, cfg), auto_resolution=False)
    k = cfg.n_clusters
    c = min(cfg.n_candidates, k)
    if cfg.rho > c:
        raise ValueError(f"rho={cfg.rho} exceeds the {c} candidates available with n_clusters={k}")
    init = _initial_rows(g, cfg, snapshot, warm)
    init_c, init_logit, warm_primary = init.clusters, init.logits, init.warm_primary

    hard0 = init_c[:, 0]
    init_mod = hard_q(g, hard0) if len(g.src) else 0.0
    # Rows numbered by initial cluster (padding row stays 0) for memory locality; undone below.
    key = torch.where(torch.arange(g.n_rows, device=dev) == 0, -1, hard0)
    order = torch.argsort(key, stable=True)
    gr = g.relabelled(order)
    state = start_state(gr, cfg, init_c[order], init_logit[order])
    t_iter = time.perf_counter()
    done, objective, last_checkpoint = 0, -math.inf, -math.inf
    iters = cfg.warm_iters if warm is not None and cfg.warm_iters is not None else cfg.iters
    tol = cfg.warm_tol if warm is not None and cfg.warm_tol is not None else cfg.tol
    for it in range(iters):
        if it and it % cfg.refresh_every == 0:
            if objective - last_checkpoint < tol:
                break  # converged: one refresh period gained less than tol
            last_checkpoint = objective
            state.refresh(salt=it)
        objective = state.iterate()
        done += 1
    iter_seconds = (time.perf_counter() - t_iter) / max(done, 1)
    objective = state.evaluate().objective
    del gr

    mem = state.memberships()
    tc_r, s_r = mem.clusters, mem.weights
    tc, s = torch.empty_like(tc_r), torch.empty_like(s_r)
    tc[order], s[order] = tc_r, s_r
    s = torch.where(s >= cfg.min_weight, s, 0.0)
    s = torch.where(g.active[:, None], s, torch.nn.functional.one_hot(torch.zeros_like(tc[:, 0]), cfg.rho).float())
    clusters_np, weights_np = tc.cpu().numpy(), s.double().cpu().numpy()
    if version is None:
        version = warm.version + 1 if warm is not None else 0
    profiles = make_profiles(clusters_np, weights_np, snapshot.item_ids, k, cfg.rho, version)

    primary = torch.as_tensor(profiles.primary, device=dev)
    active_np = g.active.cpu().numpy()
    sizes = np.bincount(profiles.primary[active_np], minlength=k)
    changed = None
    if warm_primary is not None:
        both = (warm_primary >= 0) & g.active
        changed = int(((primary != warm_primary) & both).sum())
    src_np, dst_np, w_np = snapshot.src, snapshot.dst, snapshot.weight
    report = ClusterReport(
        modularity=hard_modularity(src_np, dst_np, w_np, profiles.primary) if len(src_np) else 0.0,
        soft_modularity=soft_modularity(src_np, dst_np, w_np, profiles.clusters, profiles.weights, k) if len(src_np) else 0.0,
        objective=objective,
        init_modularity=init_mod,
        iterations=done,
        seconds=time.perf_counter() - t0,
        iter_seconds=iter_seconds,
        size_min=int(sizes.min()),
        size_median=float(np.median(sizes)),
        size_max=int(sizes.max()),
        n_empty=int((sizes == 0).sum()),
        n_isolated=int((~active_np[1:]).sum()),
        mean_primary_weight=float(profiles.weights[active_np, 0].mean()) if active_np.any() else 0.0,
        mean_memberships=float((profiles.weights[active_np] > 0).sum(1).mean()) if active_np.any() else 0.0,
        changed_primary=changed,
        device=str(dev),
        resolution=cfg.resolution,
    )
    return profiles, report
