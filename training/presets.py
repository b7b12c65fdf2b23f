"""Hyperparameters per (dataset, model), chosen on VALIDATION NDCG@10 (never on test).
See bench/README.md for the search and what won."""

from __future__ import annotations

from training.pipeline import DataSource, PipelineConfig
from g2rec.train import TrainConfig

_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "dropout": 0.3, "max_len": 50}
_TRAIN = {"epochs": 200, "batch_size": 256, "lr": 2e-3, "eval_every": 4, "patience": 5, "max_minutes": 18.0}
_GRAPH: dict = {}
_CLUSTER = {"n_clusters": 256, "rho": 4}

# Per-dataset overrides of the shared defaults above.
_OVERRIDES: dict[str, dict] = {}


def preset(dataset: str, model: str) -> PipelineConfig:
    o = _OVERRIDES.get(dataset, {})
    return PipelineConfig(
        data=DataSource(dataset),
        model={**_MODEL, **o.get("model", {}), "mode": model},
        train=TrainConfig(**{**_TRAIN, **o.get("train", {})}),
        graph={**_GRAPH, **o.get("graph", {})},
        cluster={**_CLUSTER, **o.get("cluster", {})},
    )
