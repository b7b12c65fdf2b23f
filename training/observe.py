"""What the training service tells operators: Prometheus metrics and one JSON log line per stage.

Metrics (all prefixed g2rec_train_): stage_seconds{stage} (histogram), cycles_total{outcome},
failures_total{kind}, last_success_timestamp_seconds, champion_version, champion_gate_ndcg10,
cycle_seconds (histogram). Log lines: {"event": "stage", "stage", "cycle", "seconds", "ok", ...}.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("g2rec.train_service")
_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram("g2rec_train_stage_seconds", "Seconds per cycle stage", ["stage"],
                                       buckets=_BUCKETS, registry=r)
        self.cycle_seconds = Histogram("g2rec_train_cycle_seconds", "Seconds per cycle (this process)",
                                       buckets=_BUCKETS, registry=r)
        self.cycles = Counter("g2rec_train_cycles_total", "Finished cycles by outcome", ["outcome"], registry=r)
        self.failures = Counter("g2rec_train_failures_total", "Cycles skipped or failed", ["kind"], registry=r)
        self.last_success = Gauge("g2rec_train_last_success_timestamp_seconds", "Unix time of the last promotion",
                                  registry=r)
        self.champion_version = Gauge("g2rec_train_champion_version", "Registry version of the champion", registry=r)
        self.champion_ndcg = Gauge("g2rec_train_champion_gate_ndcg10", "Champion's gate NDCG@10 when promoted",
                                   registry=r)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def failure(self, kind: str) -> None:
        self.failures.labels(kind).inc()

    def cycle(self, outcome: str, seconds: float) -> None:
        self.cycles.labels(outcome).inc()
        self.cycle_seconds.observe(seconds)

    def promoted(self, champion) -> None:
        self.last_success.set(time.time())
        if champion is not None:
            self.champion_version.set(champion.version)
            self.champion_ndcg.set(champion.metrics["gate"]["ndcg@10"])


@contextmanager
def stage_log(metrics: ServiceMetrics, stage: str, cycle: str):
    """Time a stage; yields a dict the stage fills with its figures; logs one JSON line at the end
    (ok false and the error when it raised)."""
    info: dict = {}
    t0 = time.perf_counter()
    ok, error = False, None
    try:
        yield info
        ok = True
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        seconds = time.perf_counter() - t0
        metrics.stage_seconds.labels(stage).observe(seconds)
        line = {"event": "stage", "stage": stage, "cycle": cycle, "seconds": round(seconds, 3), "ok": ok, **info}
        if error:
            line["error"] = error
        (log.info if ok else log.error)(json.dumps(line, default=str))
