"""`g2rec bench quality`: leave-one-out, full-ranking test metrics per model, over seeds.

Writes bench/results/quality-<dataset>.json. Hyperparameters come from training/presets.py
(chosen on validation); the test split is only read for the figures reported here.
"""

from __future__ import annotations

import fcntl
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from cli.context import data_root
from g2rec.metrics import METRIC_NAMES
from training.pipeline import run
from training.presets import preset

RESULTS = Path(__file__).parent / "results"
PROTOCOL = (
    "leave-one-out (last item test, second last validation), all items ranked, users with >= 3 "
    "interactions; top-level metrics exclude the user's input history from the ranking, 'unmasked' "
    "keeps it; early stopping on validation NDCG@10 (history excluded); item window 50 (G2Rec's preset also "
    "reads up to 200 items before it, as interest tokens)"
)


def hardware(threads: int) -> str:
    """The machine a benchmark trained on; the presets train on CUDA when there is one (device auto)."""
    import os

    import torch

    where = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} {where}, {threads} threads"


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
        **{k: float(np.mean([r[k] for r in runs])) for k in ("train_cpu_seconds", "seconds_per_epoch") if all(k in r for r in runs)},
        "best_epochs": [r["best_epoch"] for r in runs],
        "params": runs[0]["params"],
        "runs": runs,
    }


def merge_runs(old: dict, new: dict) -> dict:
    """Two result entries of one model -> one summary over the union of their seeds (the new
    entry wins a seed both ran); lets seeds run in separate processes."""
    runs = {r["seed"]: r for r in old.get("runs", [])} | {r["seed"]: r for r in new["runs"]}
    return summarise([runs[s] for s in sorted(runs)])


def update_json(path: Path, change) -> None:
    """Rewrite the JSON at `path` as change(old contents, or None) under an exclusive lock, so
    processes splitting seeds or variants over one file take turns."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.is_file() else None
        path.write_text(json.dumps(change(old), indent=2))


def _cap(minutes: float | None, clock: str | None) -> dict:
    """TrainConfig overrides of the training cap (none given: the presets')."""
    return {**({"max_minutes": minutes} if minutes is not None else {}), **({"clock": clock} if clock else {})}


def quality(dataset: str, models: list[str], seeds: list[int], minutes: float | None, threads: int,
            on_seed=None, clock: str | None = None, keep: Path | None = None) -> dict:
    """Runs every model over `seeds`; `on_seed(partial report)` after each seed, so a long run
    leaves its finished seeds behind. Every model gets the same cap (`minutes` of `clock`, else
    the presets', which are equal) and the same early-stopping rule (g2rec.train.fit). keep: save
    each run directory as KEEP/<model>-<seed>."""
    results, configs = {}, {}
    report = {"dataset": dataset, "protocol": PROTOCOL, "hardware": hardware(threads), "results": results, "configs": configs}
    for model in models:
        cfg = replace(preset(dataset, model, data_root()), threads=threads)
        cfg = replace(cfg, train=replace(cfg.train, **_cap(minutes, clock)))
        report["cap"] = {**report.get("cap", {}), model: {"minutes": cfg.train.max_minutes, "clock": cfg.train.clock}}
        runs = []
        for seed in seeds:
            res = run(replace(cfg, train=replace(cfg.train, seed=seed)), keep / f"{model}-{seed}" if keep else None)
            m = res.metrics
            runs.append({"seed": seed, **{k: m[k] for k in ("test", "valid", "train_seconds", "train_cpu_seconds", "seconds_per_epoch",
                                                           "best_epoch", "epochs_run", "params", "curve")},
                         "extra": {k: m[k] for k in ("direct_weight_search", "cluster_report", "graph_edges") if k in m}})
            click.echo(f"{dataset} {model} seed {seed}: test NDCG@10 {m['test']['masked']['ndcg@10']:.4f} "
                       f"Recall@10 {m['test']['masked']['recall@10']:.4f} ({m['train_seconds']:.0f}s)")
            results[model] = summarise(runs)
            configs[model] = cfg.to_dict()
            if on_seed is not None:
                on_seed(report)
    return report


@click.command()
@click.option("--dataset", default="beauty", show_default=True)
@click.option("--models", default="items,g2rec", show_default=True, help="comma-separated: items, g2rec")
@click.option("--seeds", type=int, default=3, show_default=True)
@click.option("--first-seed", type=int, default=0, show_default=True,
              help="run seeds first-seed .. first-seed+seeds-1 (split seeds over processes; one file collects them)")
@click.option("--minutes", type=float, default=None, help="override the per-run training cap (the same for every model)")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default=None,
              help="what the cap measures: wall-clock or the run's CPU time (default: the presets')")
@click.option("--threads", type=int, default=2, show_default=True, help="torch threads (1 on a busy machine)")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="default bench/results/quality-<dataset>.json")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="also save each run directory as KEEP/<model>-<seed> (for `g2rec export`, `bench serve`)")
def command(dataset, models, seeds, first_seed, minutes, clock, threads, out, keep):
    """Test metrics of each model over seeds, side by side in one run."""
    t0 = time.time()
    path = Path(out) if out else RESULTS / f"quality-{dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(report: dict) -> None:
        report = {**report, "wall_seconds": time.time() - t0}

        def merged(old: dict | None) -> dict:  # models and seeds benchmarked in separate runs land in one file
            if old is None or old.get("dataset") != dataset:
                return report
            results = dict(old.get("results", {}))
            for model, entry in report["results"].items():
                same = old.get("configs", {}).get(model) == report["configs"][model]
                results[model] = merge_runs(results[model], entry) if same and model in results else entry
            return {**report, "results": results, "configs": {**old.get("configs", {}), **report["configs"]},
                    "cap": {**old.get("cap", {}), **report.get("cap", {})}}

        update_json(path, merged)

    seed_list = list(range(first_seed, first_seed + seeds))
    report = quality(dataset, [m.strip() for m in models.split(",") if m.strip()], seed_list, minutes, threads, write, clock,
                     Path(keep) if keep else None)
    for model, r in report["results"].items():
        click.echo(f"{model:>8}: NDCG@10 {r['ndcg@10']:.4f}±{r['std']['ndcg@10']:.4f}  Recall@10 {r['recall@10']:.4f}  "
                   f"(unmasked {r['unmasked']['ndcg@10']:.4f} / {r['unmasked']['recall@10']:.4f})")
    click.echo(f"-> {path}")


# (label, preset -> overrides) for the G2Rec ablation: the preset's alternatives; "B" varies
# inference only, on the base model.
ABLATIONS = [
    ("base", lambda c: {}),
    ("interest loss 0.2", lambda c: {"model": {"interest_loss_weight": 0.2}}),  # the head also fits the next item's profile
    ("lr 2e-3", lambda c: {"train": {"lr": 2e-3}}),
    ("no context", lambda c: {"model": {"context_len": 0}}),
    ("semantic items", lambda c: {"model": {"semantic_items": True}}),
    ("rho=1", lambda c: {"cluster": {"rho": 1}}),
    ("rho=2", lambda c: {"cluster": {"rho": 2}}),
    ("K/2", lambda c: {"cluster": {"n_clusters": c.cluster.n_clusters // 2}}),
    ("2K", lambda c: {"cluster": {"n_clusters": c.cluster.n_clusters * 2}}),
    ("hard tokens", lambda c: {"model": {"hard_tokens": True}}),
    ("c=0.5", lambda c: {"graph": {"c": 0.5}}),
    ("c=2", lambda c: {"graph": {"c": 2.0}}),
]
TOP_B = (1, 2, 4, 8)


def summarise_variant(runs: list[dict]) -> dict:
    """Per-seed ablation entries of one variant -> mean and std of validation and test NDCG@10 and
    Recall@10 (history excluded), and the runs."""
    def stat(fn, get) -> float:
        return float(fn([get(r) for r in runs]))

    figures = {"valid_ndcg@10": lambda r: r["valid_ndcg@10"], "test_ndcg@10": lambda r: r["test"]["ndcg@10"],
               "test_recall@10": lambda r: r["test"]["recall@10"]}
    return {**{k: stat(np.mean, g) for k, g in figures.items()}, "std": {k: stat(np.std, g) for k, g in figures.items()},
            "seeds": [r["seed"] for r in runs], "overrides": runs[0]["overrides"], "runs": runs}


def add_ablation_run(old: dict | None, header: dict, label: str, entry: dict) -> dict:
    """The ablation file `old` with one seed's `entry` of variant `label` added: a variant's seeds
    are summarised together while its overrides stay the same (the newer run wins a seed)."""
    variants = dict((old or {}).get("variants", {}))
    previous = variants.get(label, {})
    kept = previous.get("runs", []) if previous.get("overrides") == entry["overrides"] else []
    runs = {r["seed"]: r for r in kept} | {entry["seed"]: entry}
    variants[label] = summarise_variant([runs[k] for k in sorted(runs)])
    return {**(old or {}), **header, "variants": variants}


@click.command("ablation")
@click.option("--dataset", default="beauty", show_default=True)
@click.option("--minutes", type=float, default=6.0, show_default=True, help="training cap per variant")
@click.option("--epochs", type=int, default=None,
              help="train every variant for exactly this many epochs (a fair cap on a loaded machine; the time cap still applies)")
@click.option("--only", default=None, help="comma-separated labels to run (default: all)")
@click.option("--seeds", type=int, default=1, show_default=True)
@click.option("--first-seed", type=int, default=0, show_default=True, help="split seeds over processes; one file collects them")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="default bench/results/ablation-<dataset>.json")
def ablation(dataset, minutes, epochs, only, seeds, first_seed, threads, out):
    """G2Rec variants (interest loss, lr, context, semantic items, rho, K, hard tokens, sampling
    constant c, B) over seeds, side by side."""
    from g2rec.config import deep_merge, override
    from g2rec.train import evaluate_mixtures

    path = Path(out) if out else RESULTS / f"ablation-{dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"dataset": dataset, "protocol": PROTOCOL, "hardware": hardware(threads), "minutes_per_variant": minutes,
              "epochs_per_variant": epochs, "note": "capped training; compare variants with each other, not with quality-*.json"}
    wanted = set(only.split(",")) if only else None
    base = preset(dataset, "g2rec", data_root())
    for label, alternative in ABLATIONS:
        if wanted and label not in wanted:
            continue
        over = alternative(base)
        for seed in range(first_seed, first_seed + seeds):
            budget = {"max_minutes": minutes, "seed": seed, **({"epochs": epochs, "patience": epochs} if epochs is not None else {})}
            cfg = override(base, deep_merge(over, {"train": budget, "threads": threads}), label)
            res = run(cfg)
            m = res.metrics
            entry = {"seed": seed, "valid_ndcg@10": m["valid"]["masked"]["ndcg@10"], "test": m["test"]["masked"],
                     "test_unmasked": m["test"]["unmasked"], "train_seconds": m["train_seconds"], "best_epoch": m["best_epoch"],
                     "epochs_run": m["epochs_run"], "curve": m["curve"], "direct_weight_search": m.get("direct_weight_search"),
                     "cluster_report": m.get("cluster_report"), "overrides": over}
            if label == "base":
                # B changes inference only: re-score the trained base model, with the pure interest path
                # (direct weight 0) and with the direct weight chosen on validation.
                chosen = res.model.cfg.direct_weight
                entry["by_top_b"] = {}
                for b in TOP_B:
                    res.model.cfg = replace(res.model.cfg, top_b=b)
                    v, t = (evaluate_mixtures(res.model, res.split, stage, [0.0, chosen]) for stage in ("valid", "test"))
                    entry["by_top_b"][str(b)] = {f"direct_weight={w}": {"valid_ndcg@10": v[w]["masked"]["ndcg@10"], "test": t[w]["masked"]}
                                                 for w in (0.0, chosen)}
            update_json(path, lambda old, label=label, entry=entry: add_ablation_run(old, header, label, entry))
            click.echo(f"{label} seed {seed}: valid NDCG@10 {entry['valid_ndcg@10']:.4f} test NDCG@10 {entry['test']['ndcg@10']:.4f}")
    click.echo(f"-> {path}")


@click.command("tune")
@click.option("--dataset", default="beauty", show_default=True)
@click.option("--variant", "variants", multiple=True, required=True,
              help="LABEL=MODEL or LABEL=MODEL:JSON overrides of that model's preset, e.g. "
                   "'fused=g2rec:{\"model\": {\"layout\": \"fused\"}}'; repeat for several")
@click.option("--minutes", type=float, default=None, help="the same training cap for every variant (default: the presets')")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default=None,
              help="what --minutes caps: wall-clock or this process's CPU time (default: the presets')")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="also save each variant's run directory under KEEP/LABEL (for `g2rec export`, `bench serve`)")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="default bench/results/tune-<dataset>.json")
def tune(dataset, variants, minutes, clock, seed, threads, keep, out):
    """Variants on VALIDATION only (the test split is never read): validation metrics at the chosen
    mixture weight, the weight search, seconds per epoch; to bench/results/tune-<dataset>.json."""
    from g2rec.config import deep_merge, override

    path = Path(out) if out else RESULTS / f"tune-{dataset}.json"
    header = {"dataset": dataset, "protocol": PROTOCOL.replace("last item test, ", "") + "; validation only",
              "hardware": hardware(threads)}
    for spec in variants:
        label, _, rest = spec.partition("=")
        model, _, over = rest.partition(":")
        over = json.loads(over) if over else {}
        budget = {"train": {"seed": seed, **_cap(minutes, clock)}, "threads": threads}
        cfg = override(preset(dataset, model, data_root()), deep_merge(over, budget), label)
        m = run(cfg, Path(keep) / label if keep else None, test=False).metrics
        entry = {"model": model, "overrides": over, "seed": seed, "max_minutes": cfg.train.max_minutes, "clock": cfg.train.clock,
                 "valid": m["valid"]["masked"], "direct_weight_search": m.get("direct_weight_search"),
                 **{k: m[k] for k in ("train_seconds", "train_cpu_seconds", "seconds_per_epoch", "best_epoch",
                                      "epochs_run", "params", "curve")}}
        update_json(path, lambda old: {**(old or {}), **header, "variants": {**(old or {}).get("variants", {}), label: entry}})
        click.echo(f"{dataset} {label}: valid NDCG@10 {entry['valid']['ndcg@10']:.4f} Recall@10 "
                   f"{entry['valid']['recall@10']:.4f}, {entry['seconds_per_epoch']:.1f} s/epoch, best epoch "
                   f"{entry['best_epoch']}/{entry['epochs_run']}")
    click.echo(f"-> {path}")
