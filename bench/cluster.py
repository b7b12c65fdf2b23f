"""`g2rec bench cluster`: soft modularity clustering beside Leiden and Louvain on the same graphs.

(a) planted: a synthetic graph with planted interests (power-law sizes, 30% of edges leaving each
    interest): hard modularity of the argmax assignment, NMI with the planted labels, wall time.
(b) beauty: the Amazon Beauty training co-engagement graph: g2rec at the chosen K, at the
    resolution where Leiden finds about K communities, beside Leiden at its modularity optimum
    (resolution 1) and Leiden at that matched resolution.
(c) scaling: seconds per optimiser iteration on planted graphs of about 1e5, 1e6, 1e7 edges, and
    the slope of log(time) against log(edges).
Writes bench/results/cluster.json (or --out).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import click
import numpy as np
import torch

from g2rec.cluster import ClusterConfig, WorkGraph, cluster, hard_modularity, nmi, pick_device, start_state
from g2rec.graph import GraphConfig, build_graph
from g2rec.synth import planted_graph
from g2rec.types import EdgeSnapshot

RESULTS = Path(__file__).resolve().parent / "results"


def _igraph(snapshot: EdgeSnapshot):
    import igraph

    up = snapshot.src < snapshot.dst
    graph = igraph.Graph(n=snapshot.n_items + 1, edges=np.stack([snapshot.src[up], snapshot.dst[up]], 1).tolist())
    graph.es["weight"] = snapshot.weight[up].astype(float).tolist()
    return graph


def _active(snapshot: EdgeSnapshot) -> np.ndarray:
    active = np.zeros(snapshot.n_items + 1, dtype=bool)
    active[snapshot.src] = True
    return active


def _sizes(labels: np.ndarray, active: np.ndarray) -> dict:
    counts = np.unique(labels[active], return_counts=True)[1]
    return {
        "n_communities": int(len(counts)),
        "size_min": int(counts.min()),
        "size_median": float(np.median(counts)),
        "size_max": int(counts.max()),
        "largest_share": float(counts.max() / active.sum()),
    }


def _describe(snapshot: EdgeSnapshot, labels: np.ndarray, seconds: float, planted: np.ndarray | None, resolution: float = 1.0) -> dict:
    active = _active(snapshot)
    out = {"modularity": hard_modularity(snapshot.src, snapshot.dst, snapshot.weight, labels)}
    if resolution != 1.0:
        out["modularity_at_resolution"] = _q_at(snapshot, labels, resolution)
        out["resolution"] = resolution
    if planted is not None:
        out["nmi"] = nmi(labels[1:], planted[1:])
    out["seconds"] = seconds
    out.update(_sizes(labels, active))
    return out


def _q_at(snapshot: EdgeSnapshot, labels: np.ndarray, resolution: float) -> float:
    w = snapshot.weight.astype(np.float64)
    two_m = w.sum()
    _, lab = np.unique(labels, return_inverse=True)
    d_c = np.bincount(lab, weights=np.bincount(snapshot.src, weights=w, minlength=len(labels)))
    return float(w[labels[snapshot.src] == labels[snapshot.dst]].sum() / two_m - resolution * ((d_c / two_m) ** 2).sum())


def run_leiden(snapshot: EdgeSnapshot, resolution: float, seed: int) -> tuple[np.ndarray, float]:
    import leidenalg

    graph = _igraph(snapshot)
    t0 = time.perf_counter()
    if resolution == 1.0:
        part = leidenalg.find_partition(graph, leidenalg.ModularityVertexPartition, weights="weight", seed=seed)
    else:
        part = leidenalg.find_partition(
            graph, leidenalg.RBConfigurationVertexPartition, weights="weight", resolution_parameter=resolution, seed=seed
        )
    return np.asarray(part.membership), time.perf_counter() - t0


def run_louvain(snapshot: EdgeSnapshot) -> tuple[np.ndarray, float]:
    graph = _igraph(snapshot)
    t0 = time.perf_counter()
    part = graph.community_multilevel(weights="weight")
    return np.asarray(part.membership), time.perf_counter() - t0


def run_igraph_leiden(snapshot: EdgeSnapshot, seed: int) -> tuple[np.ndarray, float]:
    import random

    graph = _igraph(snapshot)
    random.seed(seed)
    t0 = time.perf_counter()
    part = graph.community_leiden(objective_function="modularity", weights="weight", n_iterations=-1)
    return np.asarray(part.membership), time.perf_counter() - t0


def run_g2rec(snapshot: EdgeSnapshot, cfg: ClusterConfig, planted: np.ndarray | None) -> dict:
    t0 = time.perf_counter()
    profiles, report = cluster(snapshot, cfg)
    seconds = time.perf_counter() - t0
    out = _describe(snapshot, profiles.primary, seconds, planted, report.resolution)
    active = _active(snapshot)
    out.update(
        {
            "soft_modularity": report.soft_modularity,
            "init_modularity": report.init_modularity,
            "iterations": report.iterations,
            "iter_seconds": report.iter_seconds,
            "n_empty_clusters": report.n_empty,
            "mean_nonzero_memberships": report.mean_memberships,
            "mean_primary_weight": report.mean_primary_weight,
            "items_with_primary_below_0.9": float((profiles.weights[active, 0] < 0.9).mean()),
            "device": report.device,
            "config": dataclasses.asdict(dataclasses.replace(cfg, resolution=report.resolution)),
        }
    )
    return out


def bench_planted(n_items: int, n_interests: int, cfg: ClusterConfig, seed: int, log) -> dict:
    snapshot, labels = planted_graph(n_items=n_items, n_interests=n_interests, avg_degree=20, mixing=0.3, seed=seed)
    log(f"planted: {n_items} items, {snapshot.n_edges // 2} edges")
    out = {
        "graph": {
            "n_items": n_items, "n_interests": n_interests, "avg_degree": 20, "mixing": 0.3, "seed": seed,
            "edges": snapshot.n_edges // 2,
            "planted_modularity": hard_modularity(snapshot.src, snapshot.dst, snapshot.weight, np.maximum(labels, 0)),
        },
        "g2rec": run_g2rec(snapshot, cfg, labels),
    }
    log(f"  g2rec {out['g2rec']['modularity']:.4f} nmi {out['g2rec']['nmi']:.4f} {out['g2rec']['seconds']:.1f}s")
    lab, sec = run_leiden(snapshot, 1.0, seed)
    out["leiden"] = _describe(snapshot, lab, sec, labels)
    log(f"  leiden {out['leiden']['modularity']:.4f} nmi {out['leiden']['nmi']:.4f} {sec:.1f}s")
    lab, sec = run_louvain(snapshot)
    out["louvain"] = _describe(snapshot, lab, sec, labels)
    log(f"  louvain {out['louvain']['modularity']:.4f} nmi {out['louvain']['nmi']:.4f} {sec:.1f}s")
    lab, sec = run_igraph_leiden(snapshot, seed)
    out["leiden_igraph_c"] = _describe(snapshot, lab, sec, labels)
    log(f"  igraph leiden {out['leiden_igraph_c']['modularity']:.4f} {sec:.1f}s")
    out["modularity_ratio_vs_leiden"] = out["g2rec"]["modularity"] / out["leiden"]["modularity"]
    return out


def beauty_graph() -> EdgeSnapshot:
    from cli.context import data_root
    from g2rec.data import load_dataset
    from g2rec.metrics import loo_split

    return build_graph(loo_split(load_dataset("beauty", data_root())).train, GraphConfig())


def matched_resolution(snapshot: EdgeSnapshot, target: int, seed: int, log) -> tuple[float, np.ndarray, float]:
    """Bisect (in log space) the Leiden resolution whose partition has about `target` communities."""
    active = _active(snapshot)
    lo, hi = 1.0, 64.0
    best = None
    for _ in range(7):
        mid = math.sqrt(lo * hi)
        lab, sec = run_leiden(snapshot, mid, seed)
        n = len(np.unique(lab[active]))
        log(f"  leiden resolution {mid:.2f}: {n} communities")
        if best is None or abs(n - target) < abs(best[3] - target):
            best = (mid, lab, sec, n)
        if abs(n - target) <= 0.05 * target:
            break
        lo, hi = (mid, hi) if n < target else (lo, mid)
    return best[0], best[1], best[2]


def bench_beauty(cfg: ClusterConfig, seed: int, log) -> dict:
    snapshot = beauty_graph()
    log(f"beauty: {snapshot.n_items} items, {snapshot.n_edges // 2} edges")
    out: dict = {"graph": {"n_items": snapshot.n_items, "edges": snapshot.n_edges // 2, "graph_config": dataclasses.asdict(GraphConfig())}}
    lab, sec = run_leiden(snapshot, 1.0, seed)
    out["leiden_optimum"] = _describe(snapshot, lab, sec, None)
    log(f"  leiden optimum {out['leiden_optimum']['modularity']:.4f}, {out['leiden_optimum']['n_communities']} communities")
    gamma, lab, sec = matched_resolution(snapshot, cfg.n_clusters, seed, log)
    out["leiden_matched"] = _describe(snapshot, lab, sec, None, gamma)
    out["g2rec"] = run_g2rec(snapshot, dataclasses.replace(cfg, resolution=gamma), None)
    log(f"  g2rec K={cfg.n_clusters} resolution {gamma:.2f}: {out['g2rec']['modularity']:.4f}, {out['g2rec']['n_communities']} clusters")
    out["g2rec_optimum"] = run_g2rec(snapshot, dataclasses.replace(cfg, resolution=1.0), None)
    log(f"  g2rec resolution 1: {out['g2rec_optimum']['modularity']:.4f}, {out['g2rec_optimum']['n_communities']} clusters")
    # The library's own search for gamma (no Leiden needed), as training uses it.
    out["g2rec_auto_resolution"] = run_g2rec(snapshot, dataclasses.replace(cfg, auto_resolution=True), None)
    auto = out["g2rec_auto_resolution"]
    log(f"  g2rec auto resolution {auto['config']['resolution']:.2f}: {auto['modularity']:.4f}, {auto['n_communities']} clusters")
    # The collapse regulariser trades modularity for all K clusters in use and flatter sizes.
    balanced = dataclasses.replace(cfg, resolution=gamma, collapse_weight=0.1)
    out["g2rec_balanced"] = run_g2rec(snapshot, balanced, None)
    log(f"  g2rec collapse_weight 0.1: {out['g2rec_balanced']['modularity']:.4f}, {out['g2rec_balanced']['n_communities']} clusters")
    return out


def time_iterations(n_items: int, cfg: ClusterConfig, iters: int, seed: int, log) -> tuple[int, float, float]:
    """Seconds per optimiser iteration (objective, gradient, Adam step) and per candidate refresh on
    a planted graph, started from the planted labels (the initialisation is timed elsewhere)."""
    snapshot, labels = planted_graph(n_items=n_items, n_interests=256, avg_degree=20, mixing=0.3, seed=seed)
    g = WorkGraph(snapshot, pick_device(cfg.device))
    del snapshot
    # As cluster() does: rows numbered by initial cluster, here the planted labels.
    order = torch.as_tensor(np.argsort(labels, kind="stable"), device=g.src.device)
    g = g.relabelled(order)
    init_c = torch.as_tensor(np.maximum(labels, 0), device=g.src.device)[order][:, None]
    state = start_state(g, cfg, init_c, torch.full_like(init_c, cfg.init_logit, dtype=torch.float32))
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        state.iterate()
        if g.src.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    state.refresh(salt=1)
    refresh = time.perf_counter() - t0
    edges = len(g.src) // 2
    log(f"  scaling {edges} edges: {np.median(times[1:]):.3f} s/iteration, refresh {refresh:.2f} s")
    return edges, float(np.median(times[1:])), refresh


def bench_scaling(sizes: list[int], cfg: ClusterConfig, iters: int, seed: int, log) -> dict:
    edges, secs, refresh = [], [], []
    for n in sizes:
        e, s, r = time_iterations(n, cfg, iters, seed, log)
        edges.append(e)
        secs.append(s)
        refresh.append(r)
    slope = float(np.polyfit(np.log(edges), np.log(secs), 1)[0])
    return {
        "edges": edges, "iter_seconds": secs, "refresh_seconds": refresh, "loglog_slope": slope,
        "n_items": sizes, "timed_iterations": iters,
        "note": "median seconds of one iteration (objective, gradient, Adam step); candidate refresh runs every refresh_every iterations and is timed separately",
    }


@click.command()
@click.option("--quick", is_flag=True, help="Small graphs (smoke test, a minute or two).")
@click.option("--parts", default="planted,beauty,scaling", show_default=True, help="Comma-separated parts to run.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Output JSON (default bench/results/cluster.json).")
def command(quick: bool, parts: str, threads: int, device: str, seed: int, out: str | None) -> None:
    """Soft modularity clustering vs Leiden and Louvain; writes bench/results/cluster.json."""
    torch.set_num_threads(threads)
    wanted = {p.strip() for p in parts.split(",") if p.strip()}
    unknown = wanted - {"planted", "beauty", "scaling"}
    if unknown:
        raise click.BadParameter(f"unknown parts {sorted(unknown)}", param_hint="--parts")
    cfg = ClusterConfig(device=device, seed=seed)
    path = Path(out) if out else RESULTS / ("cluster-quick.json" if quick else "cluster.json")
    result: dict = json.loads(path.read_text()) if path.exists() else {}
    result.update(
        {
            "hardware": _hardware(device),
            "torch_threads": threads,
            "quick": quick,
            "cluster_config": dataclasses.asdict(cfg),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")

    if "planted" in wanted:
        n, k = (20_000, 64) if quick else (100_000, 256)
        result["planted"] = bench_planted(n, k, dataclasses.replace(cfg, n_clusters=k), seed, log)
        save()
    if "beauty" in wanted:
        result["beauty"] = bench_beauty(cfg, seed, log)
        save()
    if "scaling" in wanted:
        sizes = [2_000, 20_000, 200_000] if quick else [10_000, 100_000, 1_000_000]
        result["scaling"] = bench_scaling(sizes, cfg, 3 if quick else 5, seed, log)
        save()
    log(f"wrote {path}")


def _hardware(device: str) -> str:
    dev = pick_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA), host {platform.processor() or platform.machine()}"
    cores = os.cpu_count() or 0
    return f"{cores}-core CPU dev machine, shared" if cores <= 2 else f"{cores}-core CPU ({platform.machine()})"
