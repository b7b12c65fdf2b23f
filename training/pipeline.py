"""Offline training pipeline: dataset -> leave-one-out split -> (graph -> clusters -> profiles)
-> model -> validation-early-stopped training -> test metrics -> a run directory.

A run directory holds everything needed to evaluate, export or serve the model again:
  config.json   the full pipeline config (dataset, model, training, graph, clustering)
  model.pt      {"model_config", "state_dict"} (profiles live in the state dict as buffers)
  profiles.npz  item-interest profiles (g2rec mode)
  item_ids.npy, item_counts.npy  original item ids and training counts per dense id (N+1,)
  prototypes.npy  (K, d) membership-weighted mean item embedding per interest (g2rec mode)
  metrics.json  validation/test metrics, history excluded ("masked") and not ("unmasked")
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from g2rec.cluster import ClusterConfig
from g2rec.cluster import cluster as run_cluster
from g2rec.config import from_mapping, to_mapping
from g2rec.data import load_dataset, load_path
from g2rec.errors import ConfigError, NotFoundError
from g2rec.graph import GraphConfig, build_graph
from g2rec.metrics import LooSplit, loo_split
from g2rec.model import G2RecModel, ModelConfig
from g2rec.profiles import cluster_prototypes, cluster_sizes
from g2rec.train import FitResult, TrainConfig, evaluate, fit, mixture_search, searches_mixture
from g2rec.types import Interactions, InterestProfiles

log = logging.getLogger("g2rec.train")


@dataclass(frozen=True)
class DataSource:
    name: str = "beauty"  # a known dataset name, or a label when `path` is given
    path: str | None = None
    fmt: str | None = None
    root: str | None = None  # data root for named datasets (None: g2rec.data's default search)

    def load(self) -> Interactions:
        if self.path:
            if not self.fmt:
                raise ConfigError(f"dataset file {self.path}", "needs a format (s3rec, movielens or csv)")
            return load_path(self.path, self.fmt, name=self.name)
        return load_dataset(self.name, self.root)


@dataclass(frozen=True)
class PipelineConfig:
    """The offline pipeline. model.n_items, n_clusters and rho are filled from the data and the
    clustering; the graph and clustering seeds follow train.seed."""

    data: DataSource = field(default_factory=DataSource)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)  # g2rec mode
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # g2rec mode
    threads: int = 2

    def to_dict(self) -> dict:
        return to_mapping(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "pipeline config") -> "PipelineConfig":
        return from_mapping(cls, d, where)


@dataclass
class RunResult:
    model: G2RecModel
    split: LooSplit
    profiles: InterestProfiles | None
    metrics: dict


def build_profiles(train: Interactions, graph: GraphConfig, cluster: ClusterConfig) -> tuple[InterestProfiles, dict]:
    """Training interactions -> sampled co-engagement graph -> soft clusters -> profiles."""
    t0 = time.time()
    log.info("co-engagement graph over %d training interactions ...", train.n_interactions)
    snapshot = build_graph(train, graph)
    t1 = time.time()
    log.info("graph: %d edges in %.0f s; clustering %d items into %d interests ...", snapshot.n_edges, t1 - t0,
             snapshot.n_items, cluster.n_clusters)
    profiles, report = run_cluster(snapshot, cluster)
    log.info("clusters: modularity %.3f after %d iterations, %.0f s", report.modularity, report.iterations,
             time.time() - t1)
    info = {
        "graph_edges": int(snapshot.n_edges),
        "graph_seconds": t1 - t0,
        "cluster_seconds": time.time() - t1,
        "cluster_report": {k: (v if isinstance(v, (int, float, str, type(None), dict, list)) else str(v)) for k, v in asdict(report).items()},
        "cluster_sizes": cluster_sizes(profiles).astype(int).tolist(),  # items per primary interest
    }
    return profiles, info


def new_model(model_cfg: ModelConfig, n_items: int, profiles: InterestProfiles | None, seed: int) -> G2RecModel:
    """A freshly initialised model over items 1..n_items (g2rec mode: holding `profiles`)."""
    model_cfg = replace(model_cfg, n_items=n_items)
    if model_cfg.mode == "g2rec":
        model_cfg = replace(model_cfg, n_clusters=profiles.n_clusters, rho=profiles.rho)
    torch.manual_seed(seed)
    model = G2RecModel(model_cfg)
    if profiles is not None:
        model.set_profiles(profiles.clusters, profiles.weights)
    return model


@dataclass
class Trained:
    """What the train stage did: the fit (curve, best epoch, seconds), the training counts per item
    (N+1,) and, in g2rec mode, the search of the direct head's weight."""

    fit: FitResult
    item_counts: np.ndarray
    direct_weight_search: dict[str, float] | None


def train_model(model: G2RecModel, split: LooSplit, cfg: TrainConfig) -> Trained:
    """The train stage, shared by `g2rec train` and the training service: negatives follow the
    training counts, validation-early-stopped fit, then (g2rec mode) the direct head's weight."""
    item_counts = np.bincount(split.train.items, minlength=model.cfg.n_items + 1)  # (N+1,)
    model.set_item_counts(item_counts)
    result = fit(model, split, cfg)
    search = None
    if searches_mixture(model):
        search = choose_direct_weight(model, split)
    return Trained(result, item_counts, search)


def run(cfg: PipelineConfig, out: Path | None = None, data: Interactions | None = None,
        test: bool = True) -> RunResult:
    """The offline pipeline; test=False leaves the test split unread (tuning on validation)."""
    torch.set_num_threads(cfg.threads)
    data = data if data is not None else cfg.data.load()
    log.info("%s: %d users, %d items, %d interactions", data.name, data.n_users, data.n_items, data.n_interactions)
    split = loo_split(data)
    profiles, info = None, {}
    if cfg.model.mode == "g2rec":
        seed = cfg.train.seed
        profiles, info = build_profiles(split.train, replace(cfg.graph, seed=seed), replace(cfg.cluster, seed=seed))
    model = new_model(cfg.model, data.n_items, profiles, cfg.train.seed)
    trained = train_model(model, split, cfg.train)
    result = trained.fit
    if trained.direct_weight_search is not None:
        info["direct_weight_search"] = trained.direct_weight_search
    metrics = {
        "dataset": data.name,
        "users_evaluated": int(len(split.users)),
        "items": int(data.n_items),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.seconds,
        "train_cpu_seconds": result.cpu_seconds,
        "params": model.num_params(),
        "valid": evaluate(model, split, "valid"),
        "seconds_per_epoch": result.seconds / max(result.epochs_run, 1),
        **({"test": evaluate(model, split, "test")} if test else {}),
        "curve": result.curve,
        **info,
    }
    if out is not None:
        save_run(out, cfg, model, profiles, metrics, data.item_ids, trained.item_counts)
    return RunResult(model, split, profiles, metrics)


def choose_direct_weight(model: G2RecModel, split: LooSplit) -> dict[str, float]:
    """Pick the score mixture weight of the direct head on VALIDATION NDCG@10 (inference only:
    training does not depend on it). Leaves the model set to the winner; returns the search."""
    search = {str(w): m["ndcg@10"] for w, m in mixture_search(model, split).items()}
    best = max(search, key=search.get)
    model.cfg = replace(model.cfg, direct_weight=float(best))
    return search


def save_run(out: Path, cfg: PipelineConfig, model: G2RecModel, profiles: InterestProfiles | None, metrics: dict,
             item_ids: np.ndarray, item_counts: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "item_counts.npy", np.asarray(item_counts, dtype=np.int64))
    (out / "config.json").write_text(json.dumps(replace(cfg, model=model.cfg).to_dict(), indent=2))  # as built
    np.save(out / "item_ids.npy", item_ids, allow_pickle=item_ids.dtype == object)
    save_model(model, out / "model.pt")
    if profiles is not None:
        # Cluster prototypes for the feature store (`g2rec features publish-prototypes`).
        np.save(out / "prototypes.npy", cluster_prototypes(profiles, model.item_emb.weight.detach()).numpy())
        np.savez(out / "profiles.npz", clusters=profiles.clusters, weights=profiles.weights,
                 item_ids=profiles.item_ids, n_clusters=profiles.n_clusters, version=profiles.version)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def save_model(model: G2RecModel, path: Path) -> Path:
    """{"model_config", "state_dict"} to `path`, atomically (a temp file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model_config": model.cfg.to_dict(), "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)
    return path


def load_model(path: Path) -> G2RecModel:
    """The model `save_model` wrote, in eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = G2RecModel(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_run(run_dir: Path) -> tuple[PipelineConfig, G2RecModel]:
    run_dir = Path(run_dir)
    if not (run_dir / "model.pt").is_file():
        raise NotFoundError(f"{run_dir}: not a run directory (no model.pt)",
                            fix="name a directory that a finished training run wrote")
    cfg = PipelineConfig.from_dict(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    return cfg, load_model(run_dir / "model.pt")
