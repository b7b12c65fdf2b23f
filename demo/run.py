"""`g2rec demo` (`make demo`): the streaming system end to end on embedded defaults.

Phases, each timed: start the Kafka-protocol broker and the Feast repo (SQLite) -> replay the first
slice of a timestamped dataset through Kafka -> the stream worker builds counts, recent histories
in Feast, the event log and an edge snapshot -> the training service runs one cycle (cluster,
publish, train, export, register, promote) -> the server starts on the champion -> a few users'
top-10 with their interests -> a live check (new events for a user on Kafka until that user's
recommendations change) -> the rest of the replay, a second snapshot, a second cycle and a hot
swap of the served model -> the report. Every process it starts is stopped at the end, also on
Ctrl-C. The demo only moves data between the real entry points (`g2rec stream`,
`g2rec train-service`, `g2rec serve`); it computes nothing itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from demo.report import InterestSummary, ProfileChange, ReportData, write_report
from g2rec.errors import G2RecError, UnavailableError
from infra.process import alive, free_port, launch
from infra.process import stop as stop_process


@dataclass(frozen=True)
class DemoConfig:
    """The demo.

    dataset: a timestamped dataset name (g2rec.data); when it cannot be loaded, the synthetic
             generator stands in (with a message saying so).
    first_share: share of the events (in time order) replayed before the first snapshot.
    train_minutes / finetune_minutes: the training budget of the first (full) and second cycle.
    """

    out: str = "runs/demo"
    dataset: str = "beauty-ts"
    data_root: str | None = None
    model: str = "g2rec"
    first_share: float = 0.8
    partitions: int = 2
    train_minutes: float = 4.0
    finetune_minutes: float = 1.5
    live_events: int = 3
    timeout_s: float = 600.0  # the longest wait for any one phase
    synthetic_events: int = 200_000
    max_events: int | None = None  # replay only the first events (time order)
    service: dict = field(default_factory=dict)  # overrides of the training service's config (JSON)


@dataclass
class DemoResult:
    phases: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    users: list[dict[str, Any]] = field(default_factory=list)
    live_update_s: float | None = None
    hot_swap_ok: bool = False
    swap: dict[str, Any] = field(default_factory=dict)
    processes_left: int = 0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"wall_s": round(sum(self.phases.values()), 1), "phases_s": {k: round(v, 1) for k, v in self.phases.items()},
                "live_update_s": self.live_update_s, "hot_swap_ok": self.hot_swap_ok, "swap": self.swap,
                "processes_left": self.processes_left, "source": self.source, "metrics": self.metrics}


class Processes:
    """Every process the demo starts: each leads its own session and is stopped, group and all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.pids: dict[str, int] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        log.close()
        self.pids[name] = proc.pid
        return proc

    def adopt(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def stop(self, name: str) -> None:
        pid = self.pids.pop(name, None)
        if pid is not None:
            stop_process(pid, timeout_s=15.0, group=True)

    def stop_all(self) -> int:
        """Stop everything, newest first; returns how many are still alive afterwards."""
        pids = dict(self.pids)
        for name in reversed(list(self.pids)):
            self.stop(name)
        return sum(alive(pid) for pid in pids.values())


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


@contextmanager
def _phase(result: DemoResult, name: str) -> Iterator[None]:
    _say(f"{name} ...")
    t0 = time.perf_counter()
    yield
    result.phases[name] = time.perf_counter() - t0
    _say(f"{name}: {result.phases[name]:.1f} s")


def _wait(what: str, ready: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(every_s)
    raise UnavailableError(f"the demo waited {timeout_s:.0f} s for {what}", fix="see the logs in the run folder")


def _http(url: str, body: dict | None = None, timeout_s: float = 10.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return json.loads(r.read())


def load_events(cfg: DemoConfig):
    """The dataset's events in time order (streaming.replay.EventLog), else the synthetic stand-in."""
    from g2rec.data import DatasetError, load_dataset
    from streaming.replay import event_log, synthetic_interactions

    try:
        return event_log(load_dataset(cfg.dataset, cfg.data_root))
    except DatasetError as e:
        _say(f"{e}\n[demo] -> the synthetic generator stands in ({cfg.synthetic_events} events)")
        return event_log(synthetic_interactions(cfg.synthetic_events, 0))


class Demo:
    """One demo run in cfg.out: the processes it started, the paths it shares between them."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.procs = Processes(self.out)
        self.result = DemoResult()
        self.topic = "g2rec-demo-events"
        self.stream_dir = self.out / "stream"
        self.store_url = f"sqlite:///{self.stream_dir / 'stream.sqlite'}"
        self.event_log = self.stream_dir / "eventlog"
        self.features_root = self.out / "features"
        self.tracking_url = f"sqlite:///{self.out / 'registry' / 'mlflow.db'}"
        self.bootstrap = ""
        self.server_url = ""
        self.sent = 0

    def env(self) -> dict[str, str]:
        """The environment of every child: the demo's feature store, the repo on the path."""
        repo = str(Path(__file__).resolve().parent.parent)
        return {**os.environ, "G2REC_FEATURES_ROOT": str(self.features_root), "G2REC_FEAST_ONLINE": "sqlite",
                "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}

    def g2rec(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cli.main", *args]

    # phases -------------------------------------------------------------------------------------
    def start_infra(self) -> None:
        from features.config import StoreConfig
        from features.store import FeatureRepo
        from infra import kafka

        broker = kafka.start(log_dir=self.out / "kafka")
        self.procs.adopt("kafka", broker.pid)
        self.bootstrap = broker.bootstrap
        kafka.create_topics(self.bootstrap, {self.topic: self.cfg.partitions})
        with FeatureRepo(StoreConfig(root=self.features_root, online="sqlite")) as repo:
            repo.apply()
        _say(f"broker on {self.bootstrap}, Feast repo in {self.features_root}")

    def start_worker(self) -> None:
        self.procs.start("stream", self.g2rec(
            "stream", "--bootstrap", self.bootstrap, "--topic", self.topic, "--data-dir", str(self.stream_dir),
            "--sink", "feast", "--checkpoint-interval", "0.5", "--snapshot-interval", "5", "--log-level", "warn"),
            self.env())

    def replay(self, events, start: int, end: int) -> None:
        """Produce events[start:end] (time order) to the events topic, keyed by user."""
        from streaming.replay import EventLog, ReplayConfig, replay

        part = EventLog(events.users[start:end], events.items[start:end], events.times[start:end], events.source)
        self.sent += replay(part, ReplayConfig(bootstrap=self.bootstrap, topic=self.topic), self.cfg.partitions,
                            progress=False, id_offset=start)

    def wait_for_snapshot(self) -> dict:
        """The snapshot that covers every event sent so far (the worker takes one every 5 s)."""
        from streaming.store import StateStore

        def covered():
            if not (self.stream_dir / "stream.sqlite").is_file():
                return None
            store = StateStore(self.store_url)
            try:
                snap = store.last_snapshot()
            finally:
                store.close()
            return snap if snap is not None and sum(snap["offsets"].values()) >= self.sent else None

        snap = _wait(f"a snapshot covering {self.sent} events", covered, self.cfg.timeout_s)
        _say(f"snapshot {snap['snapshot_id']}: {snap['n_items']} items, {snap['n_edges']} edges, {snap['n_events']} events")
        return snap

    def train_cycle(self, minutes: float) -> None:
        from g2rec.config import deep_merge

        budget = self.out / "service.json"
        budget.write_text(json.dumps(deep_merge({"pipeline": {"train": {"max_minutes": minutes, "clock": "wall"}},
                                                 "finetune": {"max_minutes": minutes, "clock": "wall"}}, self.cfg.service)))
        cmd = self.g2rec("train-service", "--once", "--dataset", self.cfg.dataset, "--model", self.cfg.model,
                         "--work-dir", str(self.out / "train-service"), "--event-log", str(self.event_log),
                         "--store-url", self.store_url, "--bootstrap", self.bootstrap, "--topic", self.topic,
                         "--tracking-url", self.tracking_url, "--artifacts", str(self.out / "registry" / "artifacts"),
                         "--config", str(budget))
        with open(self.out / "train-service.log", "ab") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), timeout=self.cfg.timeout_s)
        if done.returncode != 0:
            raise G2RecError(f"the training service failed (exit {done.returncode})",
                             fix=f"see {self.out / 'train-service.log'}")

    def start_server(self) -> None:
        """`g2rec serve --registry` on a free port, started by the launcher every server shares."""
        port = free_port()
        self.server_url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return bool(_http(f"{self.server_url}/ready", timeout_s=2.0))
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        cmd = self.g2rec("serve", "--registry", self.tracking_url, "--cache", str(self.out / "serving-cache"),
                         "--features", "--port", str(port), "--poll-seconds", "1")
        proc = launch(cmd, self.out / "serve.log", ready, f"{self.server_url}/ready", self.cfg.timeout_s,
                      UnavailableError, "g2rec serve", env=self.env())
        self.procs.adopt("serve", proc.pid)
        _say(f"serving the champion on {self.server_url}")

    @contextmanager
    def lookup(self):
        """A FeatureLookup on the demo's feature store."""
        from features.config import StoreConfig
        from features.lookup import FeatureLookup
        from features.store import FeatureRepo

        with FeatureRepo(StoreConfig(root=self.features_root, online="sqlite")) as repo:
            yield FeatureLookup(repo)

    def recommend(self, user: int) -> dict:
        return _http(f"{self.server_url}/recommend", {"user_id": int(user), "k": 10})

    def show_users(self, users: list[int]) -> None:
        """Each user's top-10 and the primary interests of their recent items and of the top-10."""
        with self.lookup() as lookup:
            for u in users:
                rec = self.recommend(u)
                recent = lookup.histories([u]).items[0][-5:].tolist()
                prof = lookup.profiles(recent + rec["items"])
                primary = dict(zip(prof.item_ids.tolist(), prof.primary.tolist()))
                row = {"user": u, "recent": recent, "recent_interests": [primary.get(i) for i in recent],
                       "top10": rec["items"], "top10_interests": [primary.get(i) for i in rec["items"]],
                       "model_version": rec.get("model_version")}
                self.result.users.append(row)
                _say(f"user {u}: recent {recent} (interests {row['recent_interests']})\n"
                     f"         top-10 {rec['items']} (interests {row['top10_interests']})")

    def live_check(self, events, user: int) -> float:
        """Produce new events for `user` and time how long until its recommendations change."""
        from kafka import KafkaProducer

        from streaming.models import encode_event

        before = self.recommend(user)["items"]
        seen = set(events.items[events.users == user].tolist()) | set(before)
        items, counts = np.unique(events.items, return_counts=True)
        popular = [i for i in items[np.argsort(-counts, kind="stable")].tolist() if i not in seen]
        new = popular[: self.cfg.live_events]
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        t0 = time.perf_counter()
        now = float(events.times.max()) + 1.0
        for k, item in enumerate(new):
            producer.send(self.topic, key=str(user).encode(),
                          value=encode_event(f"live-{user}-{k}", user, item, now + k))
        producer.flush()
        producer.close()
        self.sent += len(new)
        with self.lookup() as lookup:
            def changed() -> bool:  # by the new events: they are in the history the server reads
                seen_now = lookup.histories([user]).items[0][-len(new):].tolist()
                return seen_now == new and self.recommend(user)["items"] != before

            _wait(f"user {user}'s recommendations to change", changed, self.cfg.timeout_s, every_s=0.05)
        seconds = time.perf_counter() - t0
        _say(f"live: {len(new)} new events for user {user} changed its recommendations after {seconds:.2f} s")
        return seconds

    def served_version(self) -> str:
        return str(_http(f"{self.server_url}/ready").get("model_version"))


def stage_lines(log_path: Path) -> list[dict]:
    """The training service's JSON stage lines (training/observe.py) from its log."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []:
        if line.startswith("{") and '"stage"' in line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def collect_report(demo: Demo) -> ReportData:
    """The report from what the run left: registry versions, cycle folders, stage lines, timings."""
    from registry import ModelRegistry, RegistryConfig

    reg = ModelRegistry(RegistryConfig(tracking_url=demo.tracking_url))
    metrics, curves = {}, {}
    for v in reg.versions():
        m = v.metrics
        metrics[f"v{v.version} (held-out latest event)"] = m["gate"]
        if "champion_gate" in m:
            metrics[f"v{v.version}: champion before it"] = m["champion_gate"]
        curves[f"v{v.version}"] = m.get("curve", [])
    profiles = sorted((demo.out / "train-service").glob("**/profiles.npz"), key=lambda p: p.stat().st_mtime)
    sizes, interests, changes = [], [], []
    if profiles:
        with np.load(profiles[-1]) as z:
            primary, item_ids, k = z["clusters"][1:, 0], z["item_ids"][1:], int(z["n_clusters"])
        counts = np.bincount(primary, minlength=k)
        sizes = counts.tolist()
        interests = [InterestSummary(int(c), int(counts[c]), [str(i) for i in item_ids[primary == c][:6].tolist()])
                     for c in np.argsort(-counts, kind="stable")[:8]]
    lines = stage_lines(demo.out / "train-service.log")
    published = [line.get("version") for line in lines if line["stage"] == "publish" and line.get("ok")]
    reclustered = [line for line in lines if line["stage"] == "recluster" and line.get("ok")]
    for before, after, line in zip(published, published[1:], reclustered[1:]):
        changes.append(ProfileChange(before, after, float(line.get("changed_primary_share") or 0.0), int(line.get("items", 0))))
    return ReportData(
        title=f"g2rec demo: {demo.result.source}",
        metrics=metrics, curves=curves, cluster_sizes=sizes, interests=interests,
        changes=changes,
        live_update_s=demo.result.live_update_s, phases=demo.result.phases)


def print_metrics(data: ReportData) -> None:
    names = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
    head = f"{'model':<40}" + "".join(f"{n:>11}" for n in names)
    print(head + "\n" + "-" * len(head))
    for label, row in data.metrics.items():
        print(f"{label:<40}" + "".join(f"{row.get(n, float('nan')):>11.4f}" for n in names))


def run_demo(cfg: DemoConfig) -> DemoResult:
    """The whole demo (see the module docstring); stops every process it started, also on Ctrl-C."""
    demo = Demo(cfg)
    res = demo.result
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with _phase(res, "load data"):
            events = load_events(cfg)
            if cfg.max_events is not None:
                events = type(events)(events.users[:cfg.max_events], events.items[:cfg.max_events],
                                      events.times[:cfg.max_events], events.source)
            res.source = events.source
            first = int(len(events.users) * cfg.first_share)
            _say(f"{len(events.users)} events from {events.source}; {first} before the first snapshot")
        with _phase(res, "start broker and feature store"):
            demo.start_infra()
            demo.start_worker()
        with _phase(res, "replay, first slice"):
            demo.replay(events, 0, first)
        with _phase(res, "stream worker: counts and snapshot"):
            demo.wait_for_snapshot()
        with _phase(res, "training cycle 1 (cluster, publish, train, export, register, promote)"):
            demo.train_cycle(cfg.train_minutes)
        with _phase(res, "start the server on the champion"):
            demo.start_server()
            v1 = demo.served_version()
        with _phase(res, "top-10 of three users"):
            active = events.users[:first]
            users = list(dict.fromkeys(active[::-1].tolist()))[:3]
            demo.show_users(users)
        with _phase(res, "live update"):
            res.live_update_s = demo.live_check(events, users[0])
        with _phase(res, "replay, second slice"):
            demo.replay(events, first, len(events.users))
        with _phase(res, "stream worker: second snapshot"):
            demo.wait_for_snapshot()
        with _phase(res, "training cycle 2 (warm start, fine-tune)"):
            demo.train_cycle(cfg.finetune_minutes)
        with _phase(res, "hot swap"):
            try:
                _wait("the server to swap to the new champion", lambda: demo.served_version() != v1, 60.0)
                res.hot_swap_ok = True
            except UnavailableError:
                res.hot_swap_ok = False
            res.swap = {"from": v1, "to": demo.served_version()}
            _say(f"hot swap {'done' if res.hot_swap_ok else 'NOT seen'}: {res.swap}")
        with _phase(res, "report"):
            data = collect_report(demo)
            res.metrics = data.metrics
            print_metrics(data)
            _say(f"report: {write_report(data, demo.out / 'report.html')}")
    finally:
        res.processes_left = demo.procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
        (demo.out / "demo.json").write_text(json.dumps(res.to_dict(), indent=2))
    return res
