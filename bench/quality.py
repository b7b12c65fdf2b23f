"""`g2rec bench quality`: leave-one-out, full-ranking test metrics per model, over seeds.

Writes bench/results/quality-<dataset>.json. Hyperparameters come from training/presets.py
(chosen on validation); the test split is only read for the figures reported here.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from g2rec.metrics import METRIC_NAMES
from training.pipeline import run
from training.presets import preset

RESULTS = Path(__file__).parent / "results"
PROTOCOL = (
    "leave-one-out (last item test, second last validation), all items ranked, users with >= 3 "
    "interactions; top-level metrics exclude the user's input history from the ranking, 'unmasked' "
    "keeps it; early stopping on validation NDCG@10 (history excluded); history cap 50"
)


def hardware() -> str:
    import os

    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} CPU, {torch.get_num_threads()} threads"


def summarise(runs: list[dict]) -> dict:
    """Per-seed test metrics -> means (masked), 'unmasked' means, std of both."""
    def stat(variant: str, fn) -> dict:
        return {k: float(fn([r["test"][variant][k] for r in runs])) for k in METRIC_NAMES}

    return {
        **stat("masked", np.mean),
        "unmasked": stat("unmasked", np.mean),
        "std": {**stat("masked", np.std), "unmasked": stat("unmasked", np.std)},
        "valid_ndcg@10": float(np.mean([r["valid"]["masked"]["ndcg@10"] for r in runs])),
        "seeds": [r["seed"] for r in runs],
        "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
        "best_epochs": [r["best_epoch"] for r in runs],
        "params": runs[0]["params"],
    }


def quality(dataset: str, models: list[str], seeds: int, minutes: float | None, overrides: dict | None = None) -> dict:
    results, configs = {}, {}
    for model in models:
        cfg = preset(dataset, model)
        if overrides:
            cfg = replace(cfg, model={**cfg.model, **overrides.get("model", {})},
                          cluster={**cfg.cluster, **overrides.get("cluster", {})},
                          graph={**cfg.graph, **overrides.get("graph", {})})
        if minutes is not None:
            cfg = replace(cfg, train=replace(cfg.train, max_minutes=minutes))
        runs = []
        for seed in range(seeds):
            res = run(replace(cfg, train=replace(cfg.train, seed=seed)))
            m = res.metrics
            runs.append({"seed": seed, **{k: m[k] for k in ("test", "valid", "train_seconds", "best_epoch", "params")}})
            click.echo(f"{dataset} {model} seed {seed}: test NDCG@10 {m['test']['masked']['ndcg@10']:.4f} "
                       f"Recall@10 {m['test']['masked']['recall@10']:.4f} ({m['train_seconds']:.0f}s)")
        results[model] = summarise(runs)
        configs[model] = cfg.to_dict()
    return {"dataset": dataset, "protocol": PROTOCOL, "hardware": hardware(), "results": results, "configs": configs}


@click.command()
@click.option("--dataset", default="beauty", show_default=True)
@click.option("--models", default="items,g2rec", show_default=True, help="comma-separated: items, g2rec")
@click.option("--seeds", type=int, default=3, show_default=True)
@click.option("--minutes", type=float, default=None, help="override the per-run training time cap")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="default bench/results/quality-<dataset>.json")
def command(dataset, models, seeds, minutes, out):
    """Test metrics of each model over seeds, side by side in one run."""
    t0 = time.time()
    report = quality(dataset, [m.strip() for m in models.split(",") if m.strip()], seeds, minutes)
    report["wall_seconds"] = time.time() - t0
    path = Path(out) if out else RESULTS / f"quality-{dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    for model, r in report["results"].items():
        click.echo(f"{model:>8}: NDCG@10 {r['ndcg@10']:.4f}±{r['std']['ndcg@10']:.4f}  Recall@10 {r['recall@10']:.4f}  "
                   f"(unmasked {r['unmasked']['ndcg@10']:.4f} / {r['unmasked']['recall@10']:.4f})")
    click.echo(f"-> {path}")
