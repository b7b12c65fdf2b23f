"""`g2rec bench train-service`: the training service's cycles on timestamped ML-100K.

The events are cut by time into slices (cumulative: slice k holds everything up to its end).
Each slice goes through the stream worker's processor (state store, Parquet event log), becomes
an edge snapshot announced on a real Tansu broker (bench/stream_driver.py), and the service
(training/service.py, in this process) runs one cycle for it. Per cycle: snapshot -> promoted
latency and its stage split; warm recluster (what the service did) against a cold one on the same
snapshot at the same resolution; the share of items whose primary interest changed; the fine-tuned
model's gate NDCG@10 and training seconds against a full retrain on the same data and split;
ONNX parity. Writes bench/results/train-service.json.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parent.parent


class _StageLines(logging.Handler):
    """Collects the service's JSON stage lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("{"):
            self.lines.append(json.loads(msg))


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


@click.command()
@click.option("--slices", default="0.55,0.7,0.85,1.0", show_default=True, help="cumulative shares of the time span")
@click.option("--full-minutes", type=float, default=3.0, show_default=True, help="cap on a full retrain")
@click.option("--finetune-epochs", type=int, default=2, show_default=True, help="epochs of a fine-tune")
@click.option("--finetune-minutes", type=float, default=1.0, show_default=True, help="cap on a fine-tune")
@click.option("--finetune-ema", type=float, default=None, help="weight-average decay of a fine-tune (default: the preset's)")
@click.option("--finetune-lr", type=float, default=None, help="learning rate of a fine-tune (default: the preset's)")
@click.option("--out", type=click.Path(dir_okay=False), default=str(REPO / "bench" / "results" / "train-service.json"),
              show_default=True)
@click.option("--hardware", default="2-core CPU dev machine (no GPU), shared (the loadavg keys record the load)",
              show_default=True)
def command(slices: str, full_minutes: float, finetune_epochs: int, finetune_minutes: float,
            finetune_ema: float | None, finetune_lr: float | None, out: str, hardware: str) -> None:
    """Benchmark the training service's cycles; writes bench/results/train-service.json."""
    import torch

    from bench.stream_driver import StreamDriver
    from cli.context import data_root
    from features.config import StoreConfig
    from features.store import FeatureRepo
    from g2rec.cluster import cluster
    from g2rec.data import load_dataset
    from infra import kafka
    from training import stages
    from training.presets import preset
    from registry import RegistryConfig
    from training.service import ServiceConfig, TrainService, finetune_config

    torch.set_num_threads(2)
    logging.basicConfig(level=logging.WARNING)
    handler = _StageLines()
    logging.getLogger("g2rec.train_service").addHandler(handler)
    logging.getLogger("g2rec.train_service").setLevel(logging.INFO)
    data = load_dataset("ml-100k", data_root())
    users = np.repeat(data.user_ids, data.lengths()).astype(np.int64)
    items = data.item_ids[data.items].astype(np.int64)
    times = data.times.astype(np.int64)
    order = np.lexsort((users, times))
    users, items, times = users[order], items[order], times[order]
    cuts = [float(s) for s in slices.split(",")]
    work = Path(tempfile.mkdtemp(prefix="g2rec-bench-train-"))
    broker = kafka.start(log_dir=work)
    pipe = preset("ml-100k", "g2rec", data_root())
    pipe = replace(pipe, threads=2, train=replace(pipe.train, epochs=60, eval_every=2, patience=3,
                                                  max_minutes=full_minutes, progress=False))
    # The fine-tune's budget is counted in epochs, so the load of the shared machine does not change
    # what is trained (2 epochs; bench/README.md has the figures behind it).
    finetune = replace(finetune_config(pipe.train, finetune_epochs, finetune_minutes),
                       ema=pipe.train.ema if finetune_ema is None else finetune_ema,
                       lr=pipe.train.lr if finetune_lr is None else finetune_lr)
    result: dict = {"hardware": hardware, "cpus": os.cpu_count(), "python": platform.python_version(),
                    "dataset": "ml-100k", "events": int(len(users)), "slices": cuts,
                    "budgets": {"full_retrain_minutes": full_minutes, "finetune_epochs": finetune_epochs,
                                "finetune_minutes_cap": finetune_minutes, "finetune_ema": finetune.ema, "finetune_lr": finetune.lr},
                    "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "cycles": []}
    driver = StreamDriver(work / "stream", topic="bench-events", partitions=4, r=10, window=50,
                          bootstrap=broker.bootstrap)
    features = StoreConfig(root=work / "features", project="bench")
    repo = FeatureRepo(features)
    repo.apply()
    repo.close()
    cfg = ServiceConfig(work_dir=str(work / "service"), event_log=str(driver.event_log), store_url=driver.cfg.store,
                        bootstrap=broker.bootstrap, topic="bench-events",
                        registry=RegistryConfig(f"sqlite:///{work / 'mlflow.db'}", str(work / "artifacts")),
                        features=features, pipeline=pipe, finetune=finetune, eval_users=943, parity_users=943)
    service = TrainService(cfg)
    try:
        lo = 0
        prev_profiles, prev_folder = None, None
        for k, share in enumerate(cuts, start=1):
            hi = int(share * len(users))
            driver.feed(users[lo:hi], items[lo:hi], times[lo:hi])
            lo = hi
            info = driver.snapshot()
            handler.lines.clear()
            while service.poll_kafka(2.0) == 0:
                pass
            [cycle] = service.run_pending()
            promoted_at = time.time()
            row: dict = {"cycle": k, "events": hi, "snapshot_items": info.n_items, "snapshot_edges": info.n_edges,
                         "outcome": cycle.outcome, "reason": cycle.reason,
                         "snapshot_to_promoted_s": round(promoted_at - info.created_at, 2),
                         "stages_s": {x["stage"]: x["seconds"] for x in handler.lines if x.get("event") == "stage"}}
            stage = {x["stage"]: x for x in handler.lines if x.get("event") == "stage"}
            folder = Path(cfg.work_dir) / "cycles" / f"{cycle.store_id}-{cycle.snapshot_id:08d}"
            metrics = json.loads((folder / "metrics.json").read_text())
            row["parity"] = {k2: stage["export"][k2] for k2 in ("max_abs_diff", "top10_share", "users")}
            row["service_recluster"] = {k2: stage["recluster"][k2] for k2 in ("warm", "iterations", "seconds", "modularity")}
            row["changed_primary_share"] = stage["recluster"]["changed_primary_share"]
            row["gate_ndcg10"] = metrics["gate"]["ndcg@10"]
            row["full_retrain"] = metrics["full_retrain"]
            row["train_seconds"] = round(metrics["train_seconds"], 2)
            row["new_items"] = metrics["new_items"]
            row["gate_valid_ndcg10"] = metrics["valid"]["ndcg@10"]
            if "champion_valid" in metrics:
                row["champion_valid_ndcg10"] = metrics["champion_valid"]["ndcg@10"]
            if prev_profiles is not None:
                # Warm and cold side by side on the same snapshot, resolution and warm profiles (the
                # previous cycle's, as published), twice each alternating, the faster run kept: the
                # machine is shared, so one run's seconds swing several-fold.
                snap = stages.load_snapshot(cycle.path, cycle.snapshot_id)
                ccfg = replace(pipe.cluster, resolution=cycle.resolution, auto_resolution=False)
                warm_in = stages.load_profiles(prev_folder / "profiles.npz")
                runs = {"warm": [], "cold": []}
                for _ in range(2):
                    runs["warm"].append(cluster(snap, ccfg, warm=warm_in)[1])
                    runs["cold"].append(cluster(snap, ccfg)[1])
                for kind, reports in runs.items():
                    r = min(reports, key=lambda x: x.seconds)
                    row[f"{kind}_recluster"] = {"iterations": r.iterations, "seconds": round(r.seconds, 3),
                                                "modularity": r.modularity, "runs_s": [round(x.seconds, 3) for x in reports]}
                row["warm_recluster"]["changed_primary_share"] = runs["warm"][0].changed_primary / max(
                    int(np.isin(snap.item_ids[1:], warm_in.item_ids[1:]).sum()), 1)
                offsets = {int(p): int(o) for p, o in json.loads(cycle.offsets).items()}
                history = stages.load_histories(cfg.event_log, offsets)
                profiles = stages.load_profiles(folder / "profiles.npz")
                full = stages.train_cycle(history, profiles, None, stages.TrainPlan(True, pipe.train), pipe.model,
                                          pipe.train.seed, cfg.eval_users)
                row["full_retrain_comparison"] = {"gate_ndcg10": full.metrics["gate"]["ndcg@10"],
                                                  "valid_ndcg10": full.metrics["valid"]["ndcg@10"],
                                                  "train_seconds": round(full.metrics["train_seconds"], 2)}
            prev_profiles, prev_folder = cycle.profile_version, folder
            result["cycles"].append(row)
            click.echo(json.dumps(row))
        later = [c for c in result["cycles"] if "cold_recluster" in c]
        result["summary"] = {
            "warm_over_cold_seconds": _ratio(sum(c["warm_recluster"]["seconds"] for c in later),
                                             sum(c["cold_recluster"]["seconds"] for c in later)),
            "warm_over_cold_modularity": _ratio(np.mean([c["warm_recluster"]["modularity"] for c in later]),
                                                np.mean([c["cold_recluster"]["modularity"] for c in later])),
            # validation NDCG@10 (each user's second-latest event), the figure budgets were chosen on;
            # the gate (latest event) ratio is reported beside it, never tuned on.
            "finetune_over_retrain_ndcg": _ratio(np.mean([c["gate_valid_ndcg10"] for c in later]),
                                                 np.mean([c["full_retrain_comparison"]["valid_ndcg10"] for c in later])),
            "finetune_over_retrain_gate_ndcg": _ratio(np.mean([c["gate_ndcg10"] for c in later]),
                                                      np.mean([c["full_retrain_comparison"]["gate_ndcg10"] for c in later])),
            "finetune_over_retrain_seconds": _ratio(sum(c["train_seconds"] for c in later),
                                                    sum(c["full_retrain_comparison"]["train_seconds"] for c in later)),
            "snapshot_to_promoted_s_max": max(c["snapshot_to_promoted_s"] for c in result["cycles"]),
        }
        result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=float))
        click.echo(json.dumps(result["summary"]))
    finally:
        service.close()
        driver.close()
        kafka.stop(broker.pid)
        shutil.rmtree(work, ignore_errors=True)
