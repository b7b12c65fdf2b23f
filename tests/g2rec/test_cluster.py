import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from g2rec import cluster as cluster_module
from g2rec.cluster import (
    ClusterConfig,
    _SoftState,
    cluster,
    dense_soft_modularity,
    hard_modularity,
    nmi,
    soft_modularity,
    start_state,
)
from g2rec.partition import WorkGraph
from g2rec.profiles import check_profiles
from g2rec.synth import planted_graph
from g2rec.types import EdgeSnapshot


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Many small tensor ops: on a shared 2-core machine intra-op threads cost far more than they save.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_snapshot(rng: np.random.Generator, n: int, p: float) -> EdgeSnapshot:
    upper = np.triu(rng.random((n + 1, n + 1)) < p, 1)
    upper[0] = False
    a, b = np.nonzero(upper)
    w = rng.integers(1, 4, len(a)).astype(np.float32)
    if len(a) == 0:
        a, b, w = np.array([1]), np.array([2]), np.array([1.0], dtype=np.float32)
    return EdgeSnapshot(
        src=np.concatenate([a, b]), dst=np.concatenate([b, a]), weight=np.concatenate([w, w]),
        item_ids=np.arange(n + 1) * 10,
    )


def dense_adjacency(snap: EdgeSnapshot) -> torch.Tensor:
    adj = torch.zeros(snap.n_items + 1, snap.n_items + 1, dtype=torch.float64)
    adj[snap.src, snap.dst] = torch.as_tensor(snap.weight, dtype=torch.float64)
    return adj


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 14), st.integers(1, 6), st.integers(1, 4), st.floats(0.3, 3.0), st.integers(0, 10**6))
def test_sparse_objective_equals_dense_formula(n, k, rho, resolution, seed):
    rng = np.random.default_rng(seed)
    snap = random_snapshot(rng, n, 0.4)
    clusters = rng.integers(0, k, (n + 1, rho))  # repeated ids in a row are allowed and summed
    weights = rng.random((n + 1, rho))
    weights /= weights.sum(1, keepdims=True)
    dense_s = torch.zeros(n + 1, k, dtype=torch.float64)
    for i in range(n + 1):
        for c, w in zip(clusters[i], weights[i]):
            dense_s[i, c] += w
    sparse = soft_modularity(snap.src, snap.dst, snap.weight, clusters, weights, k, resolution)
    dense = float(dense_soft_modularity(dense_adjacency(snap), dense_s, resolution))
    assert sparse == pytest.approx(dense, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(4, 12), st.integers(0, 10**6), st.floats(0.0, 2.0), st.floats(0.5, 2.0), st.sampled_from([0.0, 0.3]))
def test_training_objective_and_gradient_match_dense_autograd(n, seed, collapse, tau, softness):
    rng = np.random.default_rng(seed)
    snap = random_snapshot(rng, n, 0.5)
    k, c, rho = 6, 4, 2
    cfg = ClusterConfig(
        n_clusters=k, n_candidates=c, rho=rho, collapse_weight=collapse, temperature=tau, softness=softness, device="cpu"
    )
    g = WorkGraph(snap, torch.device("cpu"))
    cand = torch.as_tensor(np.stack([rng.permutation(k)[:c] for _ in range(n + 1)]))
    theta = torch.as_tensor(rng.normal(0, 1, (n + 1, c)), dtype=torch.float32)
    state = _SoftState(g, cfg, cand, theta.clone())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cluster_module, "_ROW_CHUNK", 3)  # several row blocks even on a tiny graph
        ps, grad = state.evaluate(), state.gradient()
    q, objective = ps.q, ps.objective

    active = (g.deg > 0).double()
    s_dense = torch.zeros(n + 1, k, dtype=torch.float64, requires_grad=True)
    vals, idx = theta.double().topk(rho, dim=1)
    s_top = torch.softmax(vals / tau, dim=1) * active[:, None]
    with torch.no_grad():
        s_dense.scatter_(1, cand.gather(1, idx), s_top)
    q_dense = dense_soft_modularity(dense_adjacency(snap), s_dense)
    reg = k**0.5 / active.sum() * s_dense.sum(0).norm() - 1
    deg = g.deg.double()
    obj_dense = q_dense - collapse * reg
    obj_dense.backward()
    with torch.no_grad():
        entropy = (deg[:, None] * -(s_top * torch.log(s_top.clamp_min(1e-30)))).sum() / g.two_m
    assert q == pytest.approx(float(q_dense.detach()), abs=1e-5)
    assert objective == pytest.approx(float(obj_dense.detach() + softness * entropy), abs=1e-5)
    # d obj / d theta: exact for the top-rho logits, the straight-through gain for the others;
    # the entropy term's d/ds = -T (d_i/2m)(log s + 1) is added by hand (it is -inf at s = 0).
    p = torch.exp(theta.double() / tau - torch.logsumexp(vals / tau, 1, keepdim=True))
    g_s = s_dense.grad.gather(1, cand) - softness * deg[:, None] / g.two_m * torch.log(p)  # (R, C)
    g_bar = (s_top * g_s.gather(1, idx)).sum(1, keepdim=True)
    expected = g.two_m * p * (g_s - g_bar) / tau * active[:, None]
    torch.testing.assert_close(grad.double(), expected, atol=2e-4, rtol=1e-3)


def test_hard_modularity_matches_igraph():
    igraph = pytest.importorskip("igraph")
    snap, labels = planted_graph(n_items=500, n_interests=8, avg_degree=8, seed=2)
    up = snap.src < snap.dst
    graph = igraph.Graph(n=snap.n_items + 1, edges=np.stack([snap.src[up], snap.dst[up]], 1).tolist())
    ours = hard_modularity(snap.src, snap.dst, snap.weight, np.maximum(labels, 0))
    theirs = graph.modularity(np.maximum(labels, 0).tolist(), weights=snap.weight[up].tolist())
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_nmi_is_one_for_relabelled_partitions_and_low_for_independent_ones():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 10, 5000)
    assert nmi(a, (a * 7 + 3) % 10) == pytest.approx(1.0)
    assert nmi(a, rng.integers(0, 10, 5000)) < 0.02


@pytest.fixture(scope="module")
def planted():
    return planted_graph(n_items=3000, n_interests=16, avg_degree=16, mixing=0.3, seed=5)


@pytest.fixture(scope="module")
def clustered(planted):
    snap, _ = planted
    cfg = ClusterConfig(n_clusters=16, rho=3, n_candidates=8, iters=30, device="cpu")
    return cfg, *cluster(snap, cfg)


def test_cluster_recovers_planted_interests(planted, clustered):
    snap, labels = planted
    cfg, profiles, report = clustered
    planted_q = hard_modularity(snap.src, snap.dst, snap.weight, np.maximum(labels, 0))
    assert nmi(profiles.primary[1:], labels[1:]) > 0.9
    assert report.modularity > 0.95 * planted_q
    assert report.n_empty <= 2 and report.size_max < 0.5 * snap.n_items


def test_profile_rows_sum_to_one_with_at_most_rho_nonzeros(clustered):
    cfg, profiles, _ = clustered
    check_profiles(profiles)
    assert profiles.rho == cfg.rho
    assert ((profiles.weights[1:] > 0).sum(1) <= cfg.rho).all()
    assert profiles.version == 0


def test_warm_start_on_an_unchanged_graph_keeps_cluster_ids(planted, clustered):
    snap, _ = planted
    cfg, profiles, _ = clustered
    frozen, report = cluster(snap, dataclasses.replace(cfg, iters=0), warm=profiles)
    assert report.changed_primary == 0
    np.testing.assert_array_equal(frozen.primary, profiles.primary)
    again, report = cluster(snap, cfg, warm=profiles)
    assert report.changed_primary <= 0.02 * snap.n_items
    assert again.version == profiles.version + 1
    # Same graph under a different dense numbering: ids follow the original item ids.
    perm = np.concatenate([[0], np.random.default_rng(1).permutation(snap.n_items) + 1])
    inverse = np.argsort(perm)
    moved = EdgeSnapshot(src=inverse[snap.src], dst=inverse[snap.dst], weight=snap.weight, item_ids=snap.item_ids[perm])
    remapped, report = cluster(moved, dataclasses.replace(cfg, iters=0), warm=profiles)
    assert report.changed_primary == 0
    np.testing.assert_array_equal(remapped.primary[inverse], profiles.primary)


def test_warm_local_moves_repair_a_scrambled_partition_within_the_old_cluster_ids(planted, clustered):
    snap, _ = planted
    cfg, profiles, _ = clustered
    # A quarter of the items put in a random cluster: the warm start a changed graph would give.
    rng = np.random.default_rng(3)
    scrambled = profiles.clusters.copy()
    rows = rng.choice(np.arange(1, snap.n_items + 1), snap.n_items // 4, replace=False)
    scrambled[rows, 0] = rng.integers(0, cfg.n_clusters, len(rows))
    warm = dataclasses.replace(profiles, clusters=scrambled)
    frozen, stale = cluster(snap, dataclasses.replace(cfg, iters=0), warm=warm)
    moved, report = cluster(snap, dataclasses.replace(cfg, warm_rounds=20, warm_iters=0), warm=warm)
    assert report.iterations == 0
    assert report.modularity > stale.modularity + 0.05
    assert report.modularity >= 0.97 * hard_modularity(snap.src, snap.dst, snap.weight, profiles.primary)
    assert set(np.unique(moved.primary[1:])) <= set(np.unique(scrambled[1:, 0]))


def test_cluster_is_deterministic(planted):
    snap, _ = planted
    cfg = ClusterConfig(n_clusters=16, rho=2, n_candidates=6, iters=5, device="cpu")
    a, _ = cluster(snap, cfg)
    b, _ = cluster(snap, cfg)
    np.testing.assert_array_equal(a.clusters, b.clusters)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_bad_inputs_name_the_problem(planted, clustered):
    snap, _ = planted
    loops = dataclasses.replace(snap, src=np.array([1, 2]), dst=np.array([1, 1]), weight=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="self loops"):
        cluster(loops, ClusterConfig(n_clusters=4, iters=1))
    _, profiles, _ = clustered
    with pytest.raises(ValueError, match="n_clusters"):
        cluster(snap, ClusterConfig(n_clusters=8, iters=1), warm=profiles)
    with pytest.raises(ValueError, match="rho"):
        ClusterConfig(rho=20, n_candidates=16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(planted):
    snap, _ = planted
    cfg = ClusterConfig(n_clusters=16, rho=2, n_candidates=6, iters=10)
    cpu, _ = cluster(snap, dataclasses.replace(cfg, device="cpu"))
    gpu, report = cluster(snap, dataclasses.replace(cfg, device="cuda"))
    assert report.device.startswith("cuda")
    assert (cpu.primary == gpu.primary).mean() > 0.98


def test_candidate_refresh_keeps_top_memberships_and_a_consistent_table(planted):
    snap, labels = planted
    cfg = ClusterConfig(n_clusters=16, rho=2, n_candidates=6, device="cpu")
    g = WorkGraph(snap, torch.device("cpu"))
    init = torch.as_tensor(np.maximum(labels, 0))[:, None]
    state = start_state(g, cfg, init, torch.full(init.shape, cfg.init_logit))
    for _ in range(3):
        state.iterate()
    before = state.memberships()
    state.refresh(salt=1)
    after = state.memberships()
    torch.testing.assert_close(after.clusters, before.clusters)
    torch.testing.assert_close(after.weights, before.weights)
    ids = state.cand.sort(1).values
    assert (ids[:, 1:] != ids[:, :-1]).all() and (ids >= 0).all()
    incremental = state.table.clone()
    state._rebuild_table(None)
    torch.testing.assert_close(incremental, state.table)


def test_auto_resolution_finds_about_k_groups(planted):
    snap, _ = planted
    fixed = cluster(snap, ClusterConfig(n_clusters=48, rho=2, n_candidates=6, iters=5, device="cpu"))[1]
    auto = cluster(snap, ClusterConfig(n_clusters=48, rho=2, n_candidates=6, iters=5, auto_resolution=True, device="cpu"))[1]
    assert fixed.resolution == 1.0 and fixed.n_empty >= 30  # 16 planted interests at gamma = 1
    assert auto.resolution > 1.0 and auto.n_empty <= 8
