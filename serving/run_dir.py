"""What serving reads from a run directory, and the one-time preparation that writes it.

Serving reads, without importing training:
  serving.json       the manifest: which model.pt (sha256) the ONNX graphs were exported from, each
                     graph's sha256, max_len and the profile version; written last, atomically
  model.onnx         the dense scoring graph (the reference path)
  model.topk.onnx    the served graph: the same scores by G2RecModel.score_probs (cached interest
                     tails, mixture in probability space), exclusion and top-k inside (the fast path);
                     the manifest's `topk_graph` names how it was built (TOPK_GRAPH)
  model_config.json  the model's config
  item_ids.npy       (N+1,) original item ids of the dense ids (int, or str as object dtype)
  item_counts.npy    (N+1,) training interaction counts per dense id: the popularity fallback

`prepare_run` exports (again) whenever the manifest is missing, names another model.pt than the
one in the directory or another top-k graph kind than TOPK_GRAPH, so a run retrained in place never keeps serving its stale graphs; `read_version`
checks each graph against the manifest's sha256 before anything loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g2rec.errors import DataError, NotFoundError
from serving.recommender import Recommender, load_item_counts
from serving.scorer import OnnxScorer, ScorerConfig

MANIFEST = "serving.json"
DENSE, TOPK = "model.onnx", "model.topk.onnx"
# How model.topk.onnx is built; a manifest naming another kind (or none: the log-space graph of
# before) is re-exported, so served runs pick up a cheaper graph without retraining.
TOPK_GRAPH = "probs-cached-tails-v1"


@dataclass(frozen=True)
class RunConfig:
    run_dir: Path
    threads: int = 1
    provider: str = "cpu"


@dataclass(frozen=True)
class ModelVersion:
    """One servable model: what a ModelSource hands to serving. `version` (the first 12 hex digits
    of model.pt's sha256: the trained weights, the same however often they are exported) and
    `profile_version` are what every response names."""

    run_dir: Path
    onnx_path: Path  # dense graph
    topk_path: Path  # fast graph
    onnx_sha256: str
    topk_sha256: str
    model_sha256: str  # of the model.pt both were exported from
    item_ids_path: Path
    item_counts_path: Path
    max_len: int
    profile_version: str | None

    @property
    def version(self) -> str:
        return self.model_sha256[:12]


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_manifest(run_dir: Path) -> dict | None:
    path = run_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e})", fix="delete it to have the run re-exported") from e


def prepare_run(run_dir: Path) -> None:
    """Exports the graphs and writes the manifest when they are missing or were exported from
    another model.pt; writes item_counts.npy from the run's dataset when missing (the only place
    serving imports training)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.pt").is_file():
        raise NotFoundError(f"{run_dir}: not a run directory (no model.pt)", fix="train one with `g2rec train`")
    manifest = read_manifest(run_dir)
    model_sha = sha256(run_dir / "model.pt")
    fresh = manifest is not None and manifest.get("model_sha256") == model_sha \
        and manifest.get("topk_graph") == TOPK_GRAPH
    if fresh and (run_dir / "item_counts.npy").is_file():
        return
    from training.pipeline import load_model, load_run

    try:
        model = load_model(run_dir / "model.pt")
    except (RuntimeError, EOFError, KeyError, ValueError) as e:  # e.g. a model.pt still being written
        raise DataError(f"{run_dir / 'model.pt'}: does not load ({e})") from e
    if not fresh:
        from training.export import export_onnx, export_topk

        # Export beside the live files, then rename: a server reading the directory sees the old
        # graphs or the new ones, and the manifest (written last) names the new ones only once
        # both are in place.
        tmp_dense, tmp_topk = run_dir / f".{DENSE}.{os.getpid()}.tmp", run_dir / f".{TOPK}.{os.getpid()}.tmp"
        tmp_probs = run_dir / f".model.probs.onnx.{os.getpid()}.tmp"
        export_onnx(model, tmp_dense)
        export_onnx(model, tmp_probs, probs=True)
        export_topk(tmp_probs, tmp_topk)
        tmp_probs.unlink()
        os.replace(tmp_dense, run_dir / DENSE)
        os.replace(tmp_topk, run_dir / TOPK)
        _write_atomic(run_dir / "model_config.json", json.dumps(model.cfg.to_dict()).encode())
        profiles = run_dir / "profiles.npz"
        profile_version = str(int(np.load(profiles)["version"])) if profiles.is_file() else None
        _write_atomic(run_dir / MANIFEST, json.dumps({
            "model_sha256": model_sha, "onnx": DENSE, "onnx_sha256": sha256(run_dir / DENSE),
            "topk_onnx": TOPK, "topk_onnx_sha256": sha256(run_dir / TOPK), "topk_graph": TOPK_GRAPH,
            "max_len": model.cfg.max_len,
            "profile_version": profile_version}, indent=2).encode())
    if not (run_dir / "item_counts.npy").is_file():
        from g2rec.metrics import loo_split

        try:
            data = load_run(run_dir)[0].data.load()
        except ValueError as e:
            raise DataError(f"{run_dir}: no item_counts.npy, and the run's dataset to count items from "
                            f"does not load ({e})", fix="make the dataset available or copy item_counts.npy "
                            "from the training machine") from e
        counts = np.bincount(loo_split(data).train.items, minlength=model.cfg.n_items + 1)
        if len(counts) != model.cfg.n_items + 1:
            raise DataError(f"{run_dir}: the run's dataset has {len(counts) - 1} items, the model {model.cfg.n_items}")
        np.save(run_dir / "item_counts.npy", counts.astype(np.int64))


def read_version(run_dir: Path) -> ModelVersion:
    """A prepared run directory -> its ModelVersion, each graph checked against the manifest."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise NotFoundError(f"{run_dir}: no {MANIFEST}", fix="serve it once with `g2rec serve` to export it")
    if not (run_dir / "item_ids.npy").is_file():
        raise NotFoundError(f"{run_dir}: no item_ids.npy", fix="re-run `g2rec train` to write it")
    for name, key in ((manifest["onnx"], "onnx_sha256"), (manifest["topk_onnx"], "topk_onnx_sha256")):
        if not (run_dir / name).is_file() or sha256(run_dir / name) != manifest[key]:
            raise DataError(f"{run_dir / name}: missing or not the graph {MANIFEST} names (sha256 mismatch)",
                            fix=f"delete {run_dir / MANIFEST} to have the run re-exported")
    return ModelVersion(run_dir, run_dir / manifest["onnx"], run_dir / manifest["topk_onnx"], manifest["onnx_sha256"],
                        manifest["topk_onnx_sha256"], manifest["model_sha256"], run_dir / "item_ids.npy",
                        run_dir / "item_counts.npy", int(manifest["max_len"]), manifest["profile_version"])


def open_version(v: ModelVersion, threads: int = 1, provider: str = "cpu") -> Recommender:
    """A ModelVersion -> the Recommender serving it (sessions loaded, not yet warmed)."""
    item_ids = np.load(v.item_ids_path, allow_pickle=True)
    scorer = OnnxScorer(ScorerConfig(str(v.onnx_path), str(v.topk_path), max_len=v.max_len, threads=threads,
                                     provider=provider), version=v.version)
    return Recommender(scorer, item_ids, load_item_counts(v.item_counts_path, len(item_ids) - 1), v.profile_version)


def open_run(cfg: RunConfig) -> Recommender:
    """A run directory (prepared here if needed) -> the Recommender serving it."""
    prepare_run(Path(cfg.run_dir))
    return open_version(read_version(Path(cfg.run_dir)), cfg.threads, cfg.provider)
