"""`g2rec bench features`: feature store throughput and latency -> bench/results/features.json.

Per online backend (SQLite, and Redis started here on a free loopback port):
- publish: 100,000 item profiles (rho 4) published as a version, three times (into an empty
  slot twice, then over an old version): seconds until readers see the version (the pointer
  switch; rows/s is computed on it), and wall and CPU seconds of the whole call (SQLite then
  checkpoints its WAL);
- beside it, Feast's plain paths on the same rows in the same run: `store.push` and
  `provider.online_write_batch` with protobuf rows (on a subset, they are slow), and the ratio;
- lookup p50/p99 for 1, 100 and 1000 items: g2rec's FeatureLookup.profiles (which reads the
  version pointer too) beside Feast's `get_online_features` for the same rows (slot known);
- the same for user histories after the stream sink appended events for 20,000 users.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

PROFILE_FEATURES = ["item_interest_profile:clusters", "item_interest_profile:weights",
                    "item_interest_profile:primary_cluster", "item_interest_profile:profile_version"]
HISTORY_FEATURES = ["user_recent_history:item_ids", "user_recent_history:timestamps"]


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1e3, q))


def _timed(fn, reps: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _latency(ours: list[float], feast: list[float]) -> dict:
    r = {"g2rec_p50_ms": _pct(ours, 50), "g2rec_p99_ms": _pct(ours, 99),
         "feast_p50_ms": _pct(feast, 50), "feast_p99_ms": _pct(feast, 99), "reps": len(ours)}
    r["speedup_p50"] = r["feast_p50_ms"] / r["g2rec_p50_ms"]
    r["speedup_p99"] = r["feast_p99_ms"] / r["g2rec_p99_ms"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}


def _profile_rows_df(profiles, slot: int, n: int):
    import pandas as pd

    return pd.DataFrame({
        "item_id": profiles.item_ids[1:n + 1].astype(np.int64),
        "buffer_slot": np.full(n, slot, np.int64),
        "clusters": list(profiles.clusters[1:n + 1]),
        "weights": list(profiles.weights[1:n + 1]),
        "primary_cluster": profiles.clusters[1:n + 1, 0],
        "profile_version": np.full(n, profiles.version, np.int64),
        "event_timestamp": datetime.now(timezone.utc),
    })


def _proto_rows(profiles, slot: int, n: int):
    """The rows `provider.online_write_batch` takes: one EntityKey and Value dict per item."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import FloatList, Int64List, Value

    now = datetime.now(timezone.utc)
    slot_v, version_v = Value(int64_val=slot), Value(int64_val=profiles.version)
    ids, cl, w = profiles.item_ids[1:n + 1].tolist(), profiles.clusters[1:n + 1].tolist(), profiles.weights[1:n + 1].tolist()
    return [(EntityKey(join_keys=["item_id", "buffer_slot"], entity_values=[Value(int64_val=i), slot_v]),
             {"clusters": Value(int64_list_val=Int64List(val=c)), "weights": Value(float_list_val=FloatList(val=ws)),
              "primary_cluster": Value(int64_val=c[0]), "profile_version": version_v}, now, None)
            for i, c, ws in zip(ids, cl, w)]


def bench_backend(config, n_profiles: int, rho: int, n_clusters: int, baseline_rows: int,
                  reps: dict[int, int], n_users: int, log) -> dict:
    from features.lookup import FeatureLookup
    from features.publish import publish_profiles, stand_in_profiles
    from features.sink import FeastHistorySink
    from features.store import FeatureRepo

    repo = FeatureRepo(config)
    repo.apply()
    # Open the store connection and the metadata DB before timing: one-time process start-up,
    # not part of a publish.
    FeatureLookup(repo).current_version()
    repo.versions.history()
    out: dict = {"publish": [], "note": "connections (online store, metadata DB) opened before timing"}
    for version in (1, 2, 3):
        profiles = stand_in_profiles(n_profiles, rho, n_clusters, version=version, seed=version)
        cpu, wall = time.process_time(), time.perf_counter()
        result = publish_profiles(repo, profiles)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out["publish"].append({"version": version, "slot": result.slot, "rows": result.rows,
                               "online_s": round(result.seconds, 3), "call_wall_s": round(wall, 3),
                               "call_cpu_s": round(cpu, 3), "rows_per_s": round(result.rows / result.seconds)})
        log(f"  publish v{version}: online after {result.seconds:.2f}s (call {wall:.2f}s wall, {cpu:.2f}s cpu),"
            f" {result.rows / result.seconds:,.0f} rows/s")
    median = statistics.median(p["rows_per_s"] for p in out["publish"])
    out["publish_rows_per_s_median"] = round(median)
    out["publish_online_within_3s_per_100k"] = [p["online_s"] <= 3.0 * p["rows"] / 100_000 for p in out["publish"]]

    # Feast's plain write paths on the same kind of rows, into a slot no reader uses.
    push_df = _profile_rows_df(profiles, slot=7, n=baseline_rows)
    t = time.perf_counter()
    repo.store.push("item_interest_profile_push", push_df)
    push_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = _proto_rows(profiles, slot=8, n=baseline_rows)
    repo.store.provider.online_write_batch(repo.repo_config, repo.view("item_interest_profile"), rows, None)
    owb_s = time.perf_counter() - t
    out["feast_push"] = {"rows": baseline_rows, "wall_s": round(push_s, 3), "rows_per_s": round(baseline_rows / push_s)}
    out["feast_online_write_batch"] = {"rows": baseline_rows, "wall_s": round(owb_s, 3),
                                       "rows_per_s": round(baseline_rows / owb_s),
                                       "note": "includes building the protobuf rows, as a caller must"}
    out["publish_speedup_vs_push"] = round(median / out["feast_push"]["rows_per_s"], 1)
    out["publish_speedup_vs_online_write_batch"] = round(median / out["feast_online_write_batch"]["rows_per_s"], 1)
    log(f"  feast push {baseline_rows / push_s:,.0f} rows/s, online_write_batch {baseline_rows / owb_s:,.0f} rows/s;"
        f" g2rec publish x{out['publish_speedup_vs_push']} / x{out['publish_speedup_vs_online_write_batch']}")

    rng = np.random.default_rng(0)
    lookup = FeatureLookup(repo)
    slot = out["publish"][-1]["slot"]
    out["lookup_profiles"] = {}
    for n, r in reps.items():
        ids = rng.integers(1, n_profiles + 1, n)
        entity_rows = {"item_id": ids.tolist(), "buffer_slot": [slot] * n}
        ours = _timed(lambda: lookup.profiles(ids), r)
        feast = _timed(lambda: repo.store.get_online_features(features=PROFILE_FEATURES, entity_rows=entity_rows).to_dict(), r)
        assert lookup.profiles(ids).found.all()
        out["lookup_profiles"][str(n)] = _latency(ours, feast)
        log(f"  lookup {n:>4} profiles: g2rec p50 {out['lookup_profiles'][str(n)]['g2rec_p50_ms']:.2f} ms, "
            f"feast p50 {out['lookup_profiles'][str(n)]['feast_p50_ms']:.2f} ms")

    # Histories: the stream sink applies 5 new events per user, 2,000 users per checkpoint.
    from streaming.sink import UserHistoryUpdate

    sink = FeastHistorySink(repo)
    batch = 2_000
    t = time.perf_counter()
    for start in range(0, n_users, batch):
        updates = []
        for u in range(start, min(start + batch, n_users)):
            items = rng.integers(1, n_profiles, 5)
            updates.append(UserHistoryUpdate(user_id=u, item_ids=items, timestamps=np.arange(u, u + 5, dtype=np.float64),
                                             window=items, position=5))
        sink.write(updates)
    sink_s = time.perf_counter() - t
    out["sink"] = {"users": n_users, "events": 5 * n_users, "batch_users": batch, "wall_s": round(sink_s, 3),
                   "events_per_s": round(5 * n_users / sink_s)}
    log(f"  sink: {5 * n_users / sink_s:,.0f} events/s")
    out["lookup_histories"] = {}
    for n, r in reps.items():
        users = rng.integers(0, n_users, n)
        ours = _timed(lambda: lookup.histories(users), r)
        feast = _timed(lambda: repo.store.get_online_features(features=HISTORY_FEATURES,
                                                              entity_rows={"user_id": users.tolist()}).to_dict(), r)
        out["lookup_histories"][str(n)] = _latency(ours, feast)
    repo.close()
    return out


@click.command()
@click.option("--backends", default="sqlite,redis", show_default=True)
@click.option("--profiles", "n_profiles", type=int, default=100_000, show_default=True)
@click.option("--rho", type=int, default=4, show_default=True)
@click.option("--clusters", "n_clusters", type=int, default=256, show_default=True)
@click.option("--baseline-rows", type=int, default=20_000, show_default=True,
              help="Rows written through Feast's own paths (they run at a few thousand rows/s).")
@click.option("--users", "n_users", type=int, default=20_000, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path(__file__).resolve().parent / "results" / "features.json", show_default=True)
def command(backends: str, n_profiles: int, rho: int, n_clusters: int, baseline_rows: int, n_users: int,
            out: Path) -> None:
    """Publish throughput and lookup latency of the feature store, beside Feast's plain paths."""
    import feast

    from features.config import StoreConfig
    from infra import redis as infra_redis

    chosen = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = set(chosen) - {"sqlite", "redis"}
    if unknown:
        raise click.BadParameter(f"{sorted(unknown)}: choose from sqlite, redis", param_hint="--backends")
    baseline_rows = min(baseline_rows, n_profiles)
    reps = {1: 300, 100: 200, 1000: 100}
    report: dict = {
        "benchmark": "features",
        "hardware": "2-core CPU dev machine, shared",
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "feast": feast.__version__,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "profiles": n_profiles, "rho": rho, "clusters": n_clusters,
        "target": "100,000 profiles online in <= 3 s",
        "backends": {},
    }
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    for backend in chosen:
        log(f"{backend}:")
        with tempfile.TemporaryDirectory(prefix=f"g2rec-bench-{backend}-") as tmp:
            server = None
            try:
                if backend == "redis":
                    server = infra_redis.start(data_dir=Path(tmp) / "redis")
                    config = StoreConfig(root=Path(tmp), online="redis", redis=server.address)
                else:
                    config = StoreConfig(root=Path(tmp))
                report["backends"][backend] = bench_backend(config, n_profiles, rho, n_clusters, baseline_rows,
                                                            reps, n_users, log)
            finally:
                if server is not None:
                    infra_redis.stop(server.pid)
    report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}")
