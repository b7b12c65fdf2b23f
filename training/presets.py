"""Hyperparameters per (dataset, model), chosen on VALIDATION NDCG@10 (never on test).
See bench/README.md for the search and what won."""

from __future__ import annotations

from g2rec.config import deep_merge, from_mapping
from g2rec.errors import ConfigError
from training.pipeline import PipelineConfig

# d_model 128 for both modes: with the weight average, items mode peaks at validation NDCG@10 0.0614
# at 128 against 0.0607 at 64 (without it, 128 overfitted: 0.0557 against 0.0579), and G2Rec learned
# best at 128 (0.0529 against 0.0494 at 64 after 9 epochs).
_MODEL = {
    "d_model": 128, "n_layers": 2, "n_heads": 2, "dropout": 0.5, "max_len": 50, "positions": "start",
    # Sampled softmax: 2048 shared negatives ~ count^0.75 with logQ correction (see bench/README.md).
    "n_negatives": 2048, "neg_power": 0.75,
}
# g2rec mode only. direct_weight: the direct next-item head's share of the score, re-chosen on
# validation at every evaluation (early stopping) and after training (g2rec.train.validate).
# layout "fused": one token per item, trained on the top-B mixture it is scored with (the interleaved
# layout lost 21% on ML-100K validation).
# interest_loss_weight 0: the interest head learns only through the top-B mixture's marginal
# likelihood, as inference uses it, not also toward the next item's own profile; with lr 1e-3 it won
# a 16-variant validation sweep on the GPU by the geometric mean of the ratio to items-only over
# Beauty, LastFM and ML-100K (tune-*-gpu.json; bench/README.md has the figures).
# context_len / context_tokens: up to 200 items before the 50-item window as 2 interest tokens
# (ML-100K and LastFM users are long): +4.6% on ML-100K validation over 3 seeds, level on LastFM
# (bench/README.md).
_G2REC = {"direct_weight": 0.9, "top_b": 4, "interest_loss_weight": 0.0, "layout": "fused",
          "context_len": 200, "context_tokens": 2}
# ema: validate and keep an average of the weights (decay 0.998 per step, about 6 epochs on Beauty);
# validation NDCG@10 0.0607 against 0.0586 for the raw weights, and it no longer swings ±0.002
# between evaluations (bench/README.md).
# target_weighting: every training target weighs the same, whatever the length of its batch (the
# batches are length-sorted): validation NDCG@10 0.0670 against 0.0611 (bench/README.md).
# max_minutes / clock: the same cap for both models, in CPU minutes of the training process, so a
# shared machine's other jobs do not change what a model gets; both stop on patience well before it
# on ML-100K and LastFM.
# lr 1e-3 for both modes: items-only validation 0.0689 against 0.0670 at 2e-3 once targets weigh the
# same; G2Rec's sweep above.
_TRAIN = {"epochs": 300, "batch_size": 256, "lr": 1e-3, "eval_every": 3, "patience": 4, "max_minutes": 30.0, "clock": "cpu",
          "ema": 0.998, "target_weighting": True}
_GRAPH: dict = {}
# auto_resolution: search the modularity resolution that yields about K interests (Beauty's
# optimum at resolution 1 has only ~13 communities; see bench/README.md).
# warm_rounds / warm_iters (the training service's warm recluster): local moves from the previous
# partition, no Adam steps. ML-100K, 55% -> 70% of the span, same resolution, min of 2 runs on the
# loaded 2-core machine: moves only 0.41 s at hard modularity 0.1487; moves + 30 Adam steps 0.1450;
# Adam alone from the old profiles (tol 1e-3) 0.1490 in 80 steps, 7.9 s; cold 0.1508 in 11 s. The
# Adam steps optimise the soft objective at resolution ~3.8 and lower the resolution-1 hard modularity
# of a partition the moves have already refined.
_CLUSTER = {"n_clusters": 256, "rho": 4, "auto_resolution": True, "warm_rounds": 30, "warm_iters": 0}

# Per-dataset overrides of the shared defaults above.
# Small catalogues get fewer interests (about one per 25-60 items, as on Beauty).
# The weight average's decay is per step: these keep Beauty's horizon of about 6 epochs (500 steps
# at 88 steps per epoch) at their 9.4 and 6.7 steps per epoch.
_OVERRIDES: dict[str, dict] = {
    "ml-100k": {"cluster": {"n_clusters": 64}, "train": {"ema": 0.981}},
    "lastfm": {"cluster": {"n_clusters": 64}, "train": {"ema": 0.974}},
}


_MODES: dict[str, dict] = {
    "items": {"model": {"mode": "items"}},
    "g2rec": {"model": {**_G2REC, "mode": "g2rec"}},
}


def preset(dataset: str, model: str, data_root: str | None = None) -> PipelineConfig:
    """The committed hyperparameters for (dataset, model): shared defaults, then the mode's, then
    the dataset's overrides, merged by g2rec.config.deep_merge."""
    if model not in _MODES:
        raise ConfigError(f"model {model!r}", f"expected one of {', '.join(_MODES)}")
    layers = [{"model": _MODEL, "train": _TRAIN, "graph": _GRAPH, "cluster": _CLUSTER}, _MODES[model],
              _OVERRIDES.get(dataset, {}), {"data": {"name": dataset, "root": data_root}}]
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    return from_mapping(PipelineConfig, merged, f"preset {dataset}/{model}")
