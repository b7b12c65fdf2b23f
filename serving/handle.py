"""The served model, swapped atomically.

A request reads `handle.get()` once and answers wholly from that Recommender, so a request that
started before a swap finishes on the old model and names the old version; one that starts after
names the new one. `Watcher` polls a ModelSource and swaps only once the new sessions are loaded
and have answered a warm-up request; a version that fails to load or warm is logged and the old
one keeps serving (the next change is tried again).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from g2rec.errors import DataError, G2RecError
from serving.recommender import Recommender
from serving.run_dir import ModelVersion, open_version
from serving.source import ModelSource

log = logging.getLogger("g2rec.serving")


class ModelHandle:
    def __init__(self, recommender: Recommender):
        self._rec = recommender
        self._listeners: list[Callable[[Recommender], None]] = []

    def get(self) -> Recommender:
        return self._rec  # one attribute read: atomic under the GIL

    def on_swap(self, listener: Callable[[Recommender], None]) -> None:
        self._listeners.append(listener)

    def swap(self, new: Recommender) -> None:
        old = self._rec
        if new.item_type is not old.item_type:
            raise DataError(f"model {new.version}: {new.item_type.__name__} item ids, the server takes "
                            f"{old.item_type.__name__} ids", fix="restart the server to change the id type")
        self._rec = new
        for listener in self._listeners:
            listener(new)


def warm(rec: Recommender) -> None:
    """One request through both paths, so the first real request pays no lazy initialisation."""
    rec.recommend([rec.item_ids[1:2].tolist()], k=10)
    rec.scorer.scores([rec.dense(rec.item_ids[1:2].tolist())])


@dataclass(frozen=True)
class WatchConfig:
    poll_s: float = 2.0  # <= 0: never poll
    threads: int = 1
    provider: str = "cpu"
    precision: str = "auto"  # serving.run_dir.PRECISIONS


class Watcher:
    """Polls `source` every poll_s seconds in a daemon thread and swaps `handle` to each new version."""

    def __init__(self, source: ModelSource, handle: ModelHandle, served: ModelVersion, cfg: WatchConfig):
        self.source, self.handle, self.cfg = source, handle, cfg
        self.served = served
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> "Watcher":
        if self.cfg.poll_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> bool:
        """Checks the source once; True when it swapped."""
        v = self.source.current()
        if (v.onnx_sha256, v.item_ids_path, v.profile_version) == \
                (self.served.onnx_sha256, self.served.item_ids_path, self.served.profile_version):
            return False
        rec = open_version(v, self.cfg.threads, self.cfg.provider, self.cfg.precision)
        warm(rec)
        self.handle.swap(rec)
        log.info("swapped to model %s (profiles %s) from %s", v.version, v.profile_version, v.run_dir)
        self.served = v
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            try:
                self.poll()
            except (G2RecError, OSError) as e:  # a half-written run; retried at the next poll
                log.warning("model source: %s; still serving %s", e, self.served.version)
