"""What serving reads from a run directory, and the one-time preparation that writes it.

Serving reads, without importing training:
  model.onnx         the scoring graph (exported from model.pt on first use)
  model_config.json  the model's config (max_len)
  item_ids.npy       (N+1,) original item ids of the dense ids (int, or str as object dtype)
  item_counts.npy    (N+1,) training interaction counts per dense id: the popularity fallback
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g2rec.errors import DataError, NotFoundError
from serving.recommender import Recommender, load_item_counts
from serving.scorer import OnnxScorer, ScorerConfig


@dataclass(frozen=True)
class RunConfig:
    run_dir: Path
    threads: int = 1
    provider: str = "cpu"


def prepare_run(run_dir: Path) -> None:
    """Writes model.onnx, model_config.json and item_counts.npy from model.pt and the run's
    dataset when they are missing (the only place serving imports training)."""
    have_model = (run_dir / "model.onnx").is_file() and (run_dir / "model_config.json").is_file()
    if have_model and (run_dir / "item_counts.npy").is_file():
        return
    if not (run_dir / "model.pt").is_file():
        raise NotFoundError(f"{run_dir}: not a run directory (no model.pt)", fix="train one with `g2rec train`")
    from training.pipeline import load_run

    cfg, model = load_run(run_dir)
    if not have_model:
        from training.export import export_onnx

        export_onnx(model, run_dir / "model.onnx")
        (run_dir / "model_config.json").write_text(json.dumps(model.cfg.to_dict()))
    if not (run_dir / "item_counts.npy").is_file():
        from g2rec.metrics import loo_split

        try:
            data = cfg.data.load()
        except ValueError as e:
            raise DataError(f"{run_dir}: no item_counts.npy, and the run's dataset to count items from "
                            f"does not load ({e})", fix="make the dataset available or copy item_counts.npy "
                            "from the training machine") from e
        counts = np.bincount(loo_split(data).train.items, minlength=model.cfg.n_items + 1)
        if len(counts) != model.cfg.n_items + 1:
            raise DataError(f"{run_dir}: the run's dataset has {len(counts) - 1} items, the model {model.cfg.n_items}")
        np.save(run_dir / "item_counts.npy", counts.astype(np.int64))


def open_run(cfg: RunConfig) -> Recommender:
    """A prepared run directory -> the Recommender serving it."""
    run_dir = Path(cfg.run_dir)
    prepare_run(run_dir)
    if not (run_dir / "item_ids.npy").is_file():
        raise NotFoundError(f"{run_dir}: no item_ids.npy", fix="re-run `g2rec train` to write it")
    model_cfg = json.loads((run_dir / "model_config.json").read_text())
    item_ids = np.load(run_dir / "item_ids.npy", allow_pickle=True)
    scorer = OnnxScorer(ScorerConfig(str(run_dir / "model.onnx"), max_len=model_cfg["max_len"],
                                     threads=cfg.threads, provider=cfg.provider))
    return Recommender(scorer, item_ids, load_item_counts(run_dir / "item_counts.npy", len(item_ids) - 1))
