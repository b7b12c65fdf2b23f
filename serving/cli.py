"""`g2rec score` (batch scoring from a file) and `g2rec serve` (HTTP recommendations): the entry
points, the only serving code that reads the environment."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import click

from g2rec.errors import DataError, UnavailableError
from serving.batch import FORMATS, BatchConfig, score_lines
from serving.run_dir import PRECISIONS, RunConfig, open_run, prepare_run

PROVIDER = click.Choice(["cpu", "cuda", "auto"])
PRECISION = click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                         help="top-k graph: int8 (kept at export only when it passes its parity check on "
                              "validation histories), float, or auto: int8 on the CPU when the run has one")
TOKEN_ENV = "G2REC_SERVE_TOKEN"


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@click.option("--registry", "registry_url", default=None,
              help="serve the champion of this MLflow registry (its SQLAlchemy URL) instead of a run directory")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/serving-cache"),
              show_default=True, help="--registry: where the champion's files are copied")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help='JSON lines: {"user": ..., "history": [item ids], "exclude": [...]}')
@click.option("--all", "event_log", type=click.Path(exists=True, path_type=Path), default=None,
              help="instead of --input: every user of this event log (Parquet or CSV file or directory with "
                   "user, item, timestamp); --out is then a directory of part-*.parquet files")
@click.option("--events-format", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True)
@click.option("--since", type=int, default=None, help="--all: events with timestamp >= SINCE")
@click.option("--until", type=int, default=None, help="--all: events with timestamp < UNTIL")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="--all: processes scoring hash partitions of the users side by side")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="recommendations file (directory with --all)")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="parquet", show_default=True)
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="bad input lines as JSON lines {line, reason}  [default: OUT.errors.jsonl]")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--provider", type=PROVIDER, default="cpu", show_default=True)
@PRECISION
def score(run_dir, registry_url, cache_dir, input_path, event_log, events_format, since, until, workers, out, fmt, errors_path, top_k,
          batch_size, threads, provider, precision):
    """Batch scoring: users from a JSON-lines file (or every user of an event log, --all) to ranked
    rows (user, rank, item, score, ..., model_version), by the serving rule. Bad lines go to the
    errors file and the run carries on; the exit status is then 2. Scores RUN_DIR, or the
    champion of --registry."""
    from tqdm import tqdm

    source = _one_source(run_dir, registry_url, cache_dir, None)
    run_dir = source.run_dir() if registry_url else run_dir

    if event_log is not None:
        from serving.event_log import EventLogConfig, score_event_log

        log_cfg = EventLogConfig(event_log, events_format, since, until, workers=workers)
        bars = {"events": tqdm(unit=" events", desc="partition", disable=None),
                "users": tqdm(unit=" users", desc="score", disable=None)}
        prepare_run(run_dir)  # export once here, not in every worker
        with bars["events"], bars["users"]:
            summary = score_event_log(RunConfig(run_dir, threads, provider, precision), log_cfg, out,
                                      BatchConfig(top_k, batch_size, "parquet"), lambda phase, n: bars[phase].update(n))
        click.echo(f"{summary.users} users -> {summary.rows} rows in {out}/part-*.parquet ({summary.fallbacks} by "
                   f"popularity, {summary.unknown_items} unknown items ignored)", err=True)
        return
    rec = open_run(RunConfig(run_dir, threads, provider, precision))
    errors_path = errors_path or out.with_name(out.name + ".errors.jsonl")
    source = click.open_file(input_path, "r")
    size = Path(input_path).stat().st_size if input_path != "-" else None
    with source, open(errors_path, "w") as errors, tqdm(total=size, unit="B", unit_scale=True, desc="score",
                                                        disable=None) as bar:
        def lines():
            for line in source:
                bar.update(len(line))
                yield line

        summary = score_lines(rec, lines(), out, errors, BatchConfig(top_k, batch_size, fmt))
    click.echo(f"{summary.users} users -> {summary.rows} rows in {out} ({summary.fallbacks} by popularity, "
               f"{summary.unknown_items} unknown items ignored, model {rec.version})", err=True)
    if summary.bad_lines:
        raise DataError(f"{input_path}: {summary.bad_lines} bad input lines, skipped; listed in {errors_path}")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False)
@click.option("--watch", "watch_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="serve the run directory that WATCH/current names (a symlink, or a file holding its path), "
                   "swapping when it changes")
@click.option("--registry", "registry_url", default=None,
              help="serve the champion of this MLflow registry (its SQLAlchemy URL) instead of a run directory")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/serving-cache"),
              show_default=True, help="--registry: where the champion's files are copied")
@click.option("--poll-seconds", type=float, default=2.0, show_default=True,
              help="how often the model source is checked for a new version (retrained model.pt, new "
                   "pointer); 0: never")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8600, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--provider", type=PROVIDER, default="cpu", show_default=True,
              help="onnxruntime provider; auto: CUDA when its libraries load, else CPU")
@PRECISION
@click.option("--features/--no-features", default=False, show_default=True,
              help="answer user_id requests from the feature store named by the G2REC_* environment")
@click.option("--max-batch", type=click.IntRange(min=1), default=100, show_default=True, help="users per batch request")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True)
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="seconds a request body may take to arrive")
def serve(run_dir, watch_dir, registry_url, cache_dir, poll_seconds, host, port, threads, provider, precision, features,
          max_batch, max_body_bytes, body_timeout):
    """HTTP recommendations: POST /recommend {"history": [item ids]} or {"user_id": 7}, "k": 10;
    POST /recommend/batch; OpenAPI at /docs. Serves RUN_DIR, the run WATCH/current names, or the
    champion of --registry; each is polled and a new model swapped in without dropping a request. Set G2REC_SERVE_TOKEN to
    require a bearer token."""
    import uvicorn

    from serving.handle import ModelHandle, Watcher, WatchConfig, warm
    from serving.http import HttpConfig, feature_store_histories, make_app
    from serving.run_dir import open_version
    from serving.schemas import Limits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = _one_source(run_dir, registry_url, cache_dir, watch_dir)
    served = source.current()
    rec = open_version(served, threads, provider, precision)
    warm(rec)
    handle = ModelHandle(rec)
    watcher = Watcher(source, handle, served, WatchConfig(poll_seconds, threads, provider, precision))
    histories = None
    if features:
        from features.config import StoreConfig

        store = StoreConfig.from_env()
        if store.history_len < rec.max_len:
            logging.getLogger("g2rec.serving").warning(
                "the feature store keeps %d events per user and model %s reads up to %d: users looked up by "
                "id are scored on less history than in training (set G2REC_HISTORY_LEN=%d for the stream "
                "worker and this server)", store.history_len, rec.version, rec.max_len, rec.max_len)
        histories = feature_store_histories(store)
    config = HttpConfig(Limits(max_batch=max_batch), max_body_bytes, body_timeout, os.environ.get(TOKEN_ENV) or None)
    app = make_app(handle, histories, config)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise UnavailableError(f"{host}:{port}: cannot listen ({e.strerror})", fix="pick another port") from e
    bound = sock.getsockname()[1]
    logging.getLogger("g2rec.serving").info(
        "listening on http://%s:%d (model %s from %s, %d items, graph %s, providers %s, auth %s, polling every %gs)",
        host, bound, rec.version, served.run_dir, rec.n_items, Path(rec.scorer.cfg.topk_path).name,
        ",".join(rec.scorer.providers),
        "bearer token" if config.token else "off", poll_seconds)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=True, timeout_keep_alive=5))
    watcher.start()
    try:
        server.run(sockets=[sock])
    finally:
        watcher.stop()


def _one_source(run_dir: Path | None, registry_url: str | None, cache_dir: Path, watch_dir: Path | None):
    """The ModelSource the flags name: exactly one of RUN_DIR, --watch DIR, --registry URL."""
    from serving.source import PointerSource, RegistrySource, RunDirSource

    given = [name for name, v in (("RUN_DIR", run_dir), ("--watch", watch_dir), ("--registry", registry_url)) if v]
    if len(given) != 1:
        raise click.UsageError(f"name one model source: RUN_DIR, --registry URL or (serve) --watch DIR; "
                               f"got {', '.join(given) or 'none'}")
    if registry_url:
        from registry import ModelRegistry, RegistryConfig

        return RegistrySource(ModelRegistry(RegistryConfig(tracking_url=registry_url)), cache_dir)
    return RunDirSource(run_dir) if run_dir is not None else PointerSource(watch_dir)
