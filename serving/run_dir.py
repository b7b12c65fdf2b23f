"""What serving reads from a run directory, and the one-time preparation that writes it.

Serving reads, without importing training:
  serving.json       the manifest: which model.pt (sha256) the ONNX graphs were exported from, each
                     graph's sha256, max_len and the profile version; written last, atomically
  model.onnx         the dense scoring graph (the reference path)
  model.topk.onnx    the served graph: the same scores by G2RecModel.score_probs (cached interest
                     tails, mixture in probability space), exclusion and top-k inside (the fast path);
                     the manifest's `topk_graph` names how it was built (TOPK_GRAPH)
  model.topk.int8.onnx  the same graph with int8 weights (training.export.quantize_int8), kept only
                     when its top-10 sets equal the float graph's for >= INT8_MIN_SAME_SET of
                     validation histories of the run's dataset; the manifest's `int8` records the
                     figures, or why there is none. Served on the CPU by default (`precision`)
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

from g2rec.errors import ConfigError, DataError, NotFoundError
from serving.recommender import Recommender, load_item_counts
from serving.scorer import OnnxScorer, ScorerConfig

MANIFEST = "serving.json"
DENSE, TOPK = "model.onnx", "model.topk.onnx"
# How model.topk.onnx is built; a manifest naming another kind (or none: the log-space graph of
# before) is re-exported, so served runs pick up a cheaper graph without retraining.
TOPK_GRAPH = "probs-cached-tails-v1+int8"
INT8 = "model.topk.int8.onnx"
INT8_MIN_SAME_SET = 0.95  # share of validation histories whose top-10 set the int8 graph must keep
INT8_PARITY_USERS = 2000  # validation histories sampled for that check
PRECISIONS = ("auto", "float", "int8")  # auto: int8 on the CPU when the run has one, else float


@dataclass(frozen=True)
class RunConfig:
    run_dir: Path
    threads: int = 1
    provider: str = "cpu"
    precision: str = "auto"


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
    int8_path: Path | None = None  # the int8 top-k graph, when it passed its parity check
    int8_note: str = ""  # its parity figures, or why there is none

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
        int8 = _quantized(run_dir, model, tmp_topk)
        os.replace(tmp_dense, run_dir / DENSE)
        os.replace(tmp_topk, run_dir / TOPK)
        _write_atomic(run_dir / "model_config.json", json.dumps(model.cfg.to_dict()).encode())
        profiles = run_dir / "profiles.npz"
        profile_version = str(int(np.load(profiles)["version"])) if profiles.is_file() else None
        _write_atomic(run_dir / MANIFEST, json.dumps({
            "model_sha256": model_sha, "onnx": DENSE, "onnx_sha256": sha256(run_dir / DENSE),
            "topk_onnx": TOPK, "topk_onnx_sha256": sha256(run_dir / TOPK), "topk_graph": TOPK_GRAPH,
            "max_len": model.cfg.input_len, "int8": int8,
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


def validation_histories(run_dir: Path, n_items: int) -> list[np.ndarray]:
    """Up to INT8_PARITY_USERS validation histories (dense ids: each user's training items) of the
    run's dataset, sampled with a fixed seed."""
    from g2rec.metrics import loo_split
    from training.pipeline import load_run

    data = load_run(run_dir)[0].data.load()
    if data.n_items != n_items:
        raise DataError(f"the run's dataset has {data.n_items} items, the model {n_items}")
    split = loo_split(data)
    ptr = split.train.user_ptr
    users = np.random.default_rng(0).permutation(split.users)[:INT8_PARITY_USERS]
    return [split.train.items[ptr[u]:ptr[u + 1]].astype(np.int64) for u in users]


def _quantized(run_dir: Path, model, topk: Path) -> dict:
    """Writes run_dir/INT8 from the top-k graph at `topk` when it keeps the float graph's top-10
    sets for >= INT8_MIN_SAME_SET of validation histories -> the manifest's `int8` entry."""
    from g2rec.errors import G2RecError
    from training.export import quantize_int8, topk_agreement

    try:
        histories = validation_histories(run_dir, model.cfg.n_items)
    except (OSError, ValueError, G2RecError) as e:  # no dataset here (a registry copy, a synthetic run)
        return {"onnx": None, "reason": f"no validation histories to check it on ({e})"}
    tmp = run_dir / f".{INT8}.{os.getpid()}.tmp"
    quantize_int8(topk, tmp)
    agreement = topk_agreement(topk, tmp, histories, model.cfg.input_len)
    figures = {"users": agreement.users, "same_top10_set": agreement.same_set, "mean_overlap10": agreement.overlap,
               "min_same_top10_set": INT8_MIN_SAME_SET}
    if agreement.same_set < INT8_MIN_SAME_SET:
        tmp.unlink()
        return {"onnx": None, "reason": "top-10 sets kept for too few validation histories", **figures}
    os.replace(tmp, run_dir / INT8)
    return {"onnx": INT8, "sha256": sha256(run_dir / INT8), **figures}


def read_version(run_dir: Path) -> ModelVersion:
    """A prepared run directory -> its ModelVersion, each graph checked against the manifest."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise NotFoundError(f"{run_dir}: no {MANIFEST}", fix="serve it once with `g2rec serve` to export it")
    if not (run_dir / "item_ids.npy").is_file():
        raise NotFoundError(f"{run_dir}: no item_ids.npy", fix="re-run `g2rec train` to write it")
    int8 = manifest.get("int8") or {}
    graphs = [(manifest["onnx"], manifest["onnx_sha256"]), (manifest["topk_onnx"], manifest["topk_onnx_sha256"])]
    for name, digest in graphs + ([(int8["onnx"], int8["sha256"])] if int8.get("onnx") else []):
        if not (run_dir / name).is_file() or sha256(run_dir / name) != digest:
            raise DataError(f"{run_dir / name}: missing or not the graph {MANIFEST} names (sha256 mismatch)",
                            fix=f"delete {run_dir / MANIFEST} to have the run re-exported")
    note = int8.get("reason") or (f"top-10 set kept for {int8['same_top10_set']:.1%} of {int8['users']} validation "
                                  f"histories" if int8 else "not exported")
    return ModelVersion(run_dir, run_dir / manifest["onnx"], run_dir / manifest["topk_onnx"], manifest["onnx_sha256"],
                        manifest["topk_onnx_sha256"], manifest["model_sha256"], run_dir / "item_ids.npy",
                        run_dir / "item_counts.npy", int(manifest["max_len"]), manifest["profile_version"],
                        run_dir / int8["onnx"] if int8.get("onnx") else None, note)


def served_graph(v: ModelVersion, precision: str = "auto", provider: str = "cpu") -> Path:
    """The top-k graph to serve: int8 when asked for (an error when the run has none), or on "auto"
    when the run has one and the provider is the CPU; else the float graph."""
    if precision not in PRECISIONS:
        raise ConfigError("serving.precision", f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "int8" and v.int8_path is None:
        raise DataError(f"{v.run_dir}: no int8 graph ({v.int8_note})", fix="serve it with --precision float or auto")
    use_int8 = precision == "int8" or (precision == "auto" and provider == "cpu" and v.int8_path is not None)
    return v.int8_path if use_int8 else v.topk_path


def open_version(v: ModelVersion, threads: int = 1, provider: str = "cpu", precision: str = "auto") -> Recommender:
    """A ModelVersion -> the Recommender serving it (sessions loaded, not yet warmed)."""
    item_ids = np.load(v.item_ids_path, allow_pickle=True)
    scorer = OnnxScorer(ScorerConfig(str(v.onnx_path), str(served_graph(v, precision, provider)), max_len=v.max_len,
                                     threads=threads, provider=provider), version=v.version)
    return Recommender(scorer, item_ids, load_item_counts(v.item_counts_path, len(item_ids) - 1), v.profile_version)


def open_run(cfg: RunConfig) -> Recommender:
    """A run directory (prepared here if needed) -> the Recommender serving it."""
    prepare_run(Path(cfg.run_dir))
    return open_version(read_version(Path(cfg.run_dir)), cfg.threads, cfg.provider, cfg.precision)
