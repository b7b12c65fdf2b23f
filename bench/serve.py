"""`g2rec bench serve`: scoring, HTTP and hot-swap figures of the serving stack -> bench/results/serve.json.

1. batch_1000_ms: 1,000 users (histories of 3-50 items) scored by a randomly initialised G2Rec model
   of Beauty's size (12,101 items, 128-d, 2 layers, K=256, rho=4, B=4; timing does not depend on
   training) through the serving path (top-k graph, length-sorted chunks), beside the dense
   reference graph + numpy, and eager PyTorch;
2. http_*: a real `g2rec serve` on loopback, 16 concurrent keep-alive clients for a bounded time;
   single-user /recommend latency and requests/s, then /recommend/batch users/s;
3. swap_*: 3 swaps of the served run (`--watch DIR`, the `current` symlink flipped) under that
   load: failed responses, and mixed ones (a response whose items are not its named version's);
4. batch_*: `g2rec score --all` over a synthetic event log (users/s, peak RSS of the processes).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parent.parent
HARDWARE = "2 shared CPU cores (loaded machine, other agents' jobs running), no GPU"


class ServeProcess:
    """`g2rec serve ARGS` in a subprocess; its output collected; the port read from the
    "listening on" line."""

    def __init__(self, *args, env=None, timeout: float = 240):
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", "0", *map(str, args)],
                                     env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=REPO)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()
        deadline = time.time() + timeout  # the first start may export the ONNX graphs
        while not (m := re.search(r"listening on http://127.0.0.1:(\d+)", self.log)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log}")
            if time.time() > deadline:
                raise TimeoutError(f"server did not come up:\n{self.log}")
            time.sleep(0.1)
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        while True:
            try:
                self.get("/health")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        return self.request("POST", path, body)

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    failed: int = 0
    mixed: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    users: int = 0
    seconds: float = 0.0


def load(port: int, clients: int, seconds: float, body: dict, path: str = "/recommend",
         expected: dict[str, list] | None = None, stop: threading.Event | None = None) -> LoadResult:
    """`clients` threads, each on its own keep-alive connection, POST `body` to `path` until
    `seconds` pass (or `stop` is set). A non-200 answer is failed; with `expected` (version ->
    the items lists that version answers, one per user), an answer whose items are not its named
    version's, or whose users name different versions, is mixed."""
    out = LoadResult()
    lock = threading.Lock()
    payload = json.dumps(body)
    deadline = time.perf_counter() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = LoadResult()
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, payload, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException):
                mine.failed += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            mine.latencies_s.append(time.perf_counter() - t0)
            if r.status != 200:
                mine.failed += 1
                continue
            answer = json.loads(data)
            results = answer.get("results", [answer])
            names = {(x["model_version"], x["profile_version"]) for x in results}
            version = answer["model_version"]
            mine.versions[version] = mine.versions.get(version, 0) + 1
            mine.users += len(results)
            if expected is not None and (len(names) != 1 or names.pop()[0] != version
                                         or [x["items"] for x in results] != expected.get(version)):
                mine.mixed += 1
        conn.close()
        with lock:
            out.latencies_s += mine.latencies_s
            out.failed += mine.failed
            out.mixed += mine.mixed
            out.users += mine.users
            for v, n in mine.versions.items():
                out.versions[v] = out.versions.get(v, 0) + n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.seconds = time.perf_counter() - t0
    return out


def point(watch_dir: Path, run_dir: Path) -> None:
    """Promote `run_dir`: replace watch_dir/current atomically (the documented way)."""
    tmp = watch_dir / "current.new"
    tmp.unlink(missing_ok=True)
    os.symlink(Path(run_dir).resolve(), tmp)
    os.replace(tmp, watch_dir / "current")


def swap_under_load(server: ServeProcess, watch_dir: Path, runs: list[Path], versions: list[str], body: dict,
                    expected: dict[str, list], clients: int = 16, swaps: int = 3,
                    per_swap_s: float = 5.0) -> tuple[LoadResult, list[float]]:
    """Flips watch_dir/current through `runs` (runs[0] is served now) `swaps` times while
    `clients` clients load the server; each swap waits (at most per_swap_s) until the server
    answers with the new version. -> the load's result and each swap's seconds to take effect."""
    stop = threading.Event()
    result: list[LoadResult] = []
    loader = threading.Thread(target=lambda: result.append(
        load(server.port, clients, swaps * per_swap_s + 5, body, "/recommend/batch", expected, stop)))
    loader.start()
    took = []
    try:
        time.sleep(0.5)
        for i in range(1, swaps + 1):
            t0 = time.perf_counter()
            point(watch_dir, runs[i % len(runs)])
            want = versions[i % len(runs)]
            while server.get("/ready")[1].get("model_version") != want:
                if time.perf_counter() - t0 > per_swap_s:
                    raise TimeoutError(f"swap {i} to {want} not served within {per_swap_s}s:\n{server.log[-3000:]}")
                time.sleep(0.05)
            took.append(time.perf_counter() - t0)
            time.sleep(0.3)  # load on the new version before the next swap
    finally:
        stop.set()
        loader.join()
    return result[0], took
