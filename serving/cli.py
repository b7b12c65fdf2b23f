"""`g2rec score` (batch scoring from a file) and `g2rec serve` (HTTP recommendations): the entry
points, the only serving code that reads the environment."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import click

from g2rec.errors import DataError, UnavailableError
from serving.run_dir import RunConfig, open_run

PROVIDER = click.Choice(["cpu", "cuda", "auto"])
TOKEN_ENV = "G2REC_SERVE_TOKEN"


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--input", "input_path", type=click.File("r"), default="-", help="JSON lines: {\"user\": ..., \"history\": [item ids]}")
@click.option("--output", type=click.File("w"), default="-")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--provider", type=PROVIDER, default="cpu", show_default=True)
def score(run_dir, input_path, output, top_k, batch_size, threads, provider):
    """Batch scoring: one JSON line in (user, history of original item ids), one JSON line out,
    by the serving rule (unknown items ignored and counted, popularity fallback)."""
    rec = open_run(RunConfig(run_dir, threads, provider))

    def flush(rows):
        for (user, _), r in zip(rows, rec.recommend([h for _, h in rows], top_k)):
            output.write(json.dumps({"user": user, "items": r.items, "scores": [round(s, 5) for s in r.scores],
                                     "used_items": r.used_items, "unknown_items": r.unknown_items,
                                     "fallback": r.fallback, "model_version": rec.version}) + "\n")

    rows = []
    for lineno, line in enumerate(input_path, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            hist = row["history"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{input_path.name}:{lineno}: bad input line ({type(e).__name__}: {e})") from e
        if not isinstance(hist, list):
            raise DataError(f"{input_path.name}:{lineno}: history must be a list of item ids")
        rows.append((row.get("user"), hist))
        if len(rows) == batch_size:
            flush(rows)
            rows = []
    if rows:
        flush(rows)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8600, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--provider", type=PROVIDER, default="cpu", show_default=True,
              help="onnxruntime provider; auto: CUDA when its libraries load, else CPU")
@click.option("--features/--no-features", default=False, show_default=True,
              help="answer user_id requests from the feature store named by the G2REC_* environment")
@click.option("--max-batch", type=click.IntRange(min=1), default=100, show_default=True, help="users per batch request")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True)
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="seconds a request body may take to arrive")
def serve(run_dir, host, port, threads, provider, features, max_batch, max_body_bytes, body_timeout):
    """HTTP recommendations: POST /recommend {"history": [item ids]} or {"user_id": 7}, "k": 10;
    POST /recommend/batch; OpenAPI at /docs. Set G2REC_SERVE_TOKEN to require a bearer token."""
    import uvicorn

    from serving.http import HttpConfig, feature_store_histories, make_app
    from serving.schemas import Limits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rec = open_run(RunConfig(run_dir, threads, provider))
    histories = None
    if features:
        from features.config import StoreConfig

        histories = feature_store_histories(StoreConfig.from_env())
    config = HttpConfig(Limits(max_batch=max_batch), max_body_bytes, body_timeout, os.environ.get(TOKEN_ENV) or None)
    app = make_app(rec, histories, config)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise UnavailableError(f"{host}:{port}: cannot listen ({e.strerror})", fix="pick another port") from e
    bound = sock.getsockname()[1]
    logging.getLogger("g2rec.serving").info(
        "listening on http://%s:%d (model %s, %d items, providers %s, auth %s)", host, bound, rec.version,
        rec.n_items, ",".join(rec.scorer.providers), "bearer token" if config.token else "off")
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=True, timeout_keep_alive=5))
    server.run(sockets=[sock])
