"""`g2rec replay` (produce events) and `g2rec stream` (run the stream worker)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import click

from streaming.config import StreamConfig

DEFAULT_BOOTSTRAP = os.environ.get("G2REC_KAFKA", "127.0.0.1:9092")
_D = StreamConfig()  # the defaults the help shows


def load_source(source: str, events: int | None, seed: int):
    """Interactions for a replay source: 'synthetic' or a dataset name of g2rec.data."""
    if source == "synthetic":
        from streaming.replay import synthetic_interactions

        return synthetic_interactions(events or 100_000, seed)
    from cli.context import data_root
    from g2rec.data import load_dataset

    return load_dataset(source, data_root())


@click.command()
@click.option("--bootstrap", default=DEFAULT_BOOTSTRAP, show_default=True, help="Kafka bootstrap (host:port); $G2REC_KAFKA.")
@click.option("--topic", default="g2rec-events", show_default=True)
@click.option("--partitions", type=int, default=None,
              help="Partitions to create the topic with (default 4); an existing topic must match.")
@click.option("--source", default="beauty-ts", show_default=True,
              help="'synthetic' or a dataset name: beauty-ts (timestamped Beauty), ml-100k, ml-latest-small, ...")
@click.option("--events", type=int, default=None, help="synthetic: about how many events to generate.")
@click.option("--limit", type=int, default=None, help="Send only the first N events (in time order).")
@click.option("--rate", type=float, default=None, help="Target events/s (default: as fast as possible).")
@click.option("--processes", type=int, default=1, show_default=True, help="Producer processes (split by partition).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic generator seed.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def replay(bootstrap: str, topic: str, partitions: int | None, source: str, events: int | None, limit: int | None,
           rate: float | None, processes: int, seed: int, progress: bool) -> None:
    """Replay a dataset or the synthetic generator into the events topic, keyed by user."""
    from infra.kafka import create_topics
    from streaming.replay import EventLog, ReplayConfig, event_log
    from streaming.replay import replay as run_replay

    cfg = ReplayConfig(bootstrap=bootstrap, topic=topic, rate=rate, processes=processes)
    log = event_log(load_source(source, events, seed))
    if limit is not None:
        log = EventLog(log.users[:limit], log.items[:limit], log.times[:limit], log.source)
    n_partitions = create_topics(bootstrap, {topic: partitions or 4}, exact=partitions is not None)[topic]
    sent = run_replay(log, cfg, n_partitions, progress=progress)
    click.echo(f"replayed {sent} events from {log.source} to {topic} ({n_partitions} partitions)")


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--sink-option")
        out[key] = value
    return out


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON StreamConfig (nested 'topics' and 'graph'); flags below override it.")
@click.option("--bootstrap", default=None, help=f"Kafka bootstrap (default {DEFAULT_BOOTSTRAP}; $G2REC_KAFKA).")
@click.option("--topic", default=None, help=f"Events topic [default: {_D.topics.events}].")
@click.option("--partitions", type=int, default=None,
              help=f"Events topic partitions, when creating it; final [default: {_D.topics.partitions}].")
@click.option("--group-id", default=None, help=f"Kafka consumer group of the workers [default: {_D.group_id}].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Local state: SQLite store, snapshots, event log [default: {_D.data_dir}].")
@click.option("--store-url", default=None, help="SQLAlchemy URL of the state store (default SQLite in data dir).")
@click.option("--r", "r", type=int, default=None, help=f"Co-engagement partners sampled per event [default: {_D.graph.r}].")
@click.option("--window", type=int, default=None,
              help=f"Recent items per user to sample partners from [default: {_D.graph.window}].")
@click.option("--seed", type=int, default=None, help=f"Seed of the partner sampler [default: {_D.graph.seed}].")
@click.option("--half-life", "half_life_s", type=float, default=None,
              help="Count decay half-life in seconds of event time [default: no decay].")
@click.option("--checkpoint-interval", "checkpoint_interval_s", type=float, default=None,
              help=f"Longest seconds processed events wait to be committed [default: {_D.checkpoint_interval_s}].")
@click.option("--snapshot-interval", "snapshot_interval_s", type=float, default=None,
              help=f"Seconds between edge snapshots [default: {_D.snapshot_interval_s}].")
@click.option("--eager-checkpoints/--no-eager-checkpoints", default=None,
              help="Commit as soon as the worker has caught up [default: on].")
@click.option("--compact-interval", "compact_interval_s", type=float, default=None,
              help=f"Seconds between foldings of the window logs into per-user rows [default: {_D.compact_interval_s}].")
@click.option("--user-ttl", "user_ttl_s", type=float, default=None,
              help="Evict users idle this many seconds from memory (reloaded from the store) [default: never].")
@click.option("--session-timeout", "session_timeout_s", type=float, default=None,
              help=f"Kafka group session timeout, seconds [default: {_D.session_timeout_s}].")
@click.option("--max-batch", type=int, default=None, help=f"Records fetched and processed together [default: {_D.max_batch}].")
@click.option("--sink", default=None,
              help=f"Recent-history sink: none, memory, jsonl, feast, or package.module:factory [default: {_D.sink}].")
@click.option("--sink-option", "sink_options", multiple=True, help="KEY=VALUE passed to the sink factory.")
@click.option("--metrics-path", type=click.Path(dir_okay=False), default=None,
              help="Append per-checkpoint timings here as JSON lines [default: none].")
@click.option("--event-log-dir", type=click.Path(file_okay=False), default=None,
              help="Parquet event log folder (default DATA_DIR/eventlog; Feast reads FEATURES_ROOT/data/eventlog).")
@click.option("--event-log-retention-days", type=float, default=None, help="Drop log days older than this.")
@click.option("--event-log-retention-bytes", type=int, default=None, help="Drop the oldest log days beyond this size.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["crit", "error", "warn", "info", "debug"]))
def stream(config_path: str | None, log_level: str, sink_options: tuple[str, ...], **flags) -> None:
    """Run the stream worker: events -> co-engagement counts -> periodic edge snapshots."""
    import faust

    from infra.kafka import create_topics
    from streaming.app import create_app
    from streaming.config import StreamConfig, load_stream_config

    cfg = load_stream_config(config_path) if config_path else StreamConfig(bootstrap=DEFAULT_BOOTSTRAP)
    topic_over: dict[str, Any] = {k: v for k, v in (("events", flags.pop("topic")), ("partitions", flags.pop("partitions")))
                  if v is not None}
    old = cfg.topics
    if "events" in topic_over:  # derived names follow the events topic; explicit ones stay
        if old.dead_letters == f"{old.events}-dlq":
            topic_over["dead_letters"] = ""
        if old.snapshots == f"{old.events}-snapshots":
            topic_over["snapshots"] = ""
    graph_over = {k: flags.pop(k) for k in ("r", "window", "seed")}
    graph_over = {k: v for k, v in graph_over.items() if v is not None}
    over = {k: v for k, v in flags.items() if v is not None}
    if sink_options:
        over["sink_options"] = _parse_options(sink_options)
    cfg = dataclasses.replace(
        cfg, topics=dataclasses.replace(cfg.topics, **topic_over),
        graph=dataclasses.replace(cfg.graph, **graph_over), **over)
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    t = cfg.topics
    create_topics(cfg.bootstrap, {t.events: t.partitions}, exact="partitions" in topic_over)
    create_topics(cfg.bootstrap, {t.dead_letters: 1, t.snapshots: 1}, exact=False)
    app = create_app(cfg)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker = faust.Worker(app, loglevel=log_level, quiet=True)
    worker.execute_from_commandline()
