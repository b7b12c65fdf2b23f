"""`g2rec score` (batch scoring from a file) and `g2rec serve` (HTTP recommendations)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np


def _load_scorer(run_dir: Path, threads: int):
    """A run directory -> (scorer, item_ids): exports model.onnx on first use."""
    from serving.scorer import OnnxScorer, ScorerConfig

    onnx_path = run_dir / "model.onnx"
    cfg = json.loads((run_dir / "model_config.json").read_text()) if (run_dir / "model_config.json").is_file() else None
    if not onnx_path.is_file() or cfg is None:
        from training.export import export_onnx
        from training.pipeline import load_run

        _, model = load_run(run_dir)
        export_onnx(model, onnx_path)
        cfg = model.cfg.to_dict()
        (run_dir / "model_config.json").write_text(json.dumps(cfg))
    item_ids = np.load(run_dir / "item_ids.npy", allow_pickle=True) if (run_dir / "item_ids.npy").is_file() else None
    return OnnxScorer(ScorerConfig(str(onnx_path), max_len=cfg["max_len"], threads=threads)), item_ids


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--input", "input_path", type=click.File("r"), default="-", help="JSON lines: {\"user\": ..., \"history\": [item ids]}")
@click.option("--output", type=click.File("w"), default="-")
@click.option("-k", "--top-k", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
def score(run_dir, input_path, output, top_k, batch_size, threads):
    """Batch scoring: one JSON line in (user, history of original item ids), one JSON line out."""
    scorer, item_ids = _load_scorer(Path(run_dir), threads)
    if item_ids is None:
        raise click.ClickException(f"{run_dir}: no item_ids.npy (re-run `g2rec train`)")
    index = {v: i for i, v in enumerate(item_ids.tolist()) if i > 0}

    def flush(rows):
        recs = scorer.recommend([r[1] for r in rows], top_k)
        for (user, _), rec in zip(rows, recs):
            output.write(json.dumps({"user": user, "items": item_ids[rec.items].tolist(), "scores": rec.scores.round(5).tolist()}) + "\n")

    rows = []
    for lineno, line in enumerate(input_path, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            hist = [index[i] for i in rec["history"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise click.ClickException(f"{input_path.name}:{lineno}: bad input line ({type(e).__name__}: {e})")
        if not hist:
            raise click.ClickException(f"{input_path.name}:{lineno}: empty history")
        rows.append((rec.get("user"), np.array(hist)))
        if len(rows) == batch_size:
            flush(rows)
            rows = []
    if rows:
        flush(rows)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8600, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--features/--no-features", default=False, show_default=True,
              help="answer user_id requests from the feature store named by the G2REC_* environment")
def serve(run_dir, host, port, threads, features):
    """HTTP recommendations: POST /recommend {"history": [item ids]} or {"user_id": 7}, "k": 10."""
    import uvicorn

    from serving.http import feature_store_histories, make_app

    scorer, item_ids = _load_scorer(Path(run_dir), threads)
    histories = None
    if features:
        from features.config import StoreConfig

        histories = feature_store_histories(StoreConfig.from_env())
    uvicorn.run(make_app(scorer, item_ids, histories), host=host, port=port, log_level="warning")
