"""`g2rec bench serve`: scoring, HTTP and hot-swap figures of the serving stack -> bench/results/serve.json.

1. batch_1000_ms: 1,000 users (histories of 3-50 items) scored by a G2Rec model of Beauty's size
   (12,101 items, 128-d, 2 layers, K=256, rho=4, B=4): a trained run (`--run`; its int8 graph is
   served when it passed its parity check on the run's validation histories) or a randomly
   initialised one (no validation histories: the float graph), through the serving path (top-k
   graph, length-sorted chunks), interleaved in the same process with the float top-k graph (when
   int8 is served) and the previous top-k graph (log-space, second pass over the whole history);
   beside the dense reference graph + numpy, and eager PyTorch;
2. http_*: a real `g2rec serve` on loopback, 16 concurrent keep-alive clients for a bounded time;
   single-user /recommend latency and requests/s, then /recommend/batch users/s;
3. swap_*: 3 swaps of the served run (`--watch DIR`, the `current` symlink flipped) under that
   load: failed responses, and mixed ones (a response whose items are not its named version's);
4. batch_*: `g2rec score --all` over a synthetic event log (users/s, peak RSS of the processes);
5. freshness_*: an event produced on Kafka -> POST /recommend {"user_id"} reflects it, through
   `g2rec stream --sink feast` and `g2rec serve --features` (bench/serve_freshness.py).
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import numpy as np

from bench.serve_freshness import FreshnessConfig, measure_freshness

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


def beauty_sized_run(out: Path, seed: int, **model: object) -> Path:
    """A randomly initialised G2Rec model of Beauty's size with a synthetic profile table, saved as
    a run directory and prepared for serving (exported); `model`: ModelConfig fields to change."""
    import torch

    from g2rec.model import G2RecModel
    from serving.run_dir import prepare_run
    from training.presets import preset
    from training.pipeline import DataSource, PipelineConfig, save_run

    n, k, rho = 12_101, 256, 4
    torch.manual_seed(seed)
    # The served architecture: Beauty's G2Rec preset (layout, width, depth, context), sized here.
    cfg = replace(preset("beauty", "g2rec").model, n_items=n, n_clusters=k, rho=rho, direct_weight=0.98, **model)
    model = G2RecModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(n + 1, rho, generator=g), 1)
    weights[0] = 0
    model.set_profiles(torch.randint(0, k, (n + 1, rho), generator=g), weights)
    counts = np.random.default_rng(seed).zipf(1.5, n + 1).clip(max=10**6)
    counts[0] = 0
    save_run(out, PipelineConfig(data=DataSource("synth")), model, None, {}, np.arange(n + 1), counts)
    prepare_run(out)
    return out


def interleaved_run(tmp: Path) -> Path:
    """beauty_sized_run in the interleaved layout: what the scoring figures time beside the preset."""
    return beauty_sized_run(tmp / "run-i", 0, layout="interleaved", context_len=0)


def _preset_line() -> str:
    from training.presets import preset

    m = preset("beauty", "g2rec").model
    return (f"layout {m.layout}, d {m.d_model}, {m.n_layers} layers, max_len {m.max_len}, "
            f"context {m.context_len} items as {m.context_tokens} tokens")


def histories(n: int, n_items: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, n_items + 1, size=rng.integers(3, 51)).tolist() for _ in range(n)]


def _side_by_side_ms(fs: dict, reps: int) -> dict[str, list[float]]:
    """Each callable once to warm, then `reps` rounds, each calling all of them in a rotated order
    (none always first on a machine whose load drifts) -> name -> milliseconds per round."""
    names = list(fs)
    for f in fs.values():
        f()
    out = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fs[n]()
            out[n].append(1000 * (time.perf_counter() - t0))
    return out


def _best_ms(f, reps: int) -> float:
    f()  # warm
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def scoring_figures(run_dir: Path, threads: int, reps: int, interleaved: Path | None = None) -> dict:
    """In-process scoring figures of the run; `interleaved`: a run of the same size in the
    interleaved layout, timed in the same rounds (batch_1000_ms_interleaved_layout)."""
    import torch

    from g2rec.ranking import pad_left
    from serving.run_dir import (
        INT8,
        MANIFEST,
        RunConfig,
        open_run,
        validation_histories,
    )
    from training.pipeline import load_run

    rec = open_run(RunConfig(run_dir, threads=threads))
    previous = previous_graph(run_dir, rec, threads)
    users = histories(1000, rec.n_items)
    one = users[:1]
    other = 2 if threads == 1 else 1
    rec_other = open_run(RunConfig(run_dir, threads=other))
    graphs = {"served": rec, "previous": previous, f"served_{other}_threads": rec_other}
    int8 = rec.scorer.cfg.topk_path.endswith(INT8)
    if int8:  # the float top-k graph of the same run, side by side
        graphs["float"] = open_run(RunConfig(run_dir, threads=threads, precision="float"))
    if interleaved is not None:
        graphs["interleaved_layout"] = open_run(RunConfig(interleaved, threads=threads))
    batch = _side_by_side_ms({n: (lambda r=r: r.recommend(users, 10)) for n, r in graphs.items()}, reps)
    single_users = histories(300, rec.n_items, seed=1)
    singles = {n: [] for n in ("served", "previous")}
    for h in single_users:  # one user at a time, the two graphs alternating
        for n, r in (("served", rec), ("previous", previous)):
            t0 = time.perf_counter()
            r.recommend([h], 10)
            singles[n].append(1000 * (time.perf_counter() - t0))
    _, model = load_run(run_dir)
    torch.set_num_threads(threads)
    padded = torch.from_numpy(pad_left([np.asarray(h) for h in users], 50))
    manifest = json.loads((Path(run_dir) / MANIFEST).read_text())["int8"]
    extra = {}
    if manifest.get("users"):  # the run's dataset loads: 1,000 of its validation histories too (shorter)
        valid = [rec.item_ids[h].tolist() for h in validation_histories(Path(run_dir), rec.n_items)[:1000]]
        times = _side_by_side_ms({n: (lambda r=graphs[n]: r.recommend(valid, 10)) for n in ("served", "float")
                                  if n in graphs}, reps)
        extra = {f"batch_1000_ms_validation_histories{'' if n == 'served' else '_float'}": float(np.median(t))
                 for n, t in times.items()}
        extra["validation_history_mean_length"] = float(np.mean([len(h) for h in valid]))
    return {
        **extra,
        "served_graph": Path(rec.scorer.cfg.topk_path).name,
        "int8": manifest,
        "batch_1000_ms": float(np.median(batch["served"])),
        **({"batch_1000_ms_float": float(np.median(batch["float"]))} if int8 else {}),
        **({"batch_1000_ms_interleaved_layout": float(np.median(batch["interleaved_layout"]))} if interleaved else {}),
        "batch_1000_ms_previous_graph": float(np.median(batch["previous"])),
        f"batch_1000_ms_{other}_threads": float(np.median(batch[f"served_{other}_threads"])),
        "batch_1000_ms_rounds": batch,
        "batch_1000_ms_dense_reference": _best_ms(lambda: rec.recommend_reference(users, 10), 1),
        "batch_1000_ms_eager": _best_ms(lambda: model.score(padded), 1),
        "single_user_p50_ms": float(np.percentile(singles["served"], 50)),
        "single_user_p99_ms": float(np.percentile(singles["served"], 99)),
        "single_user_p50_ms_previous_graph": float(np.percentile(singles["previous"], 50)),
        "single_user_p99_ms_previous_graph": float(np.percentile(singles["previous"], 99)),
        "single_user_ms_reference": _best_ms(lambda: rec.recommend_reference(one, 10), reps),
    }


def previous_graph(run_dir: Path, rec, threads: int):
    """The same run served by the previous top-k graph (the dense log-space graph + exclusion and
    top-k: a second pass over the whole history for the interest tails, logsumexp over (B, Bk, N+1))."""
    from serving.recommender import Recommender
    from serving.scorer import OnnxScorer, ScorerConfig
    from training.export import export_topk

    path = export_topk(run_dir / "model.onnx", run_dir / "model.topk.previous.onnx", probs=False)
    scorer = OnnxScorer(ScorerConfig(str(run_dir / "model.onnx"), str(path), max_len=rec.max_len, threads=threads),
                        version=rec.version)
    return Recommender(scorer, rec.item_ids, np.load(run_dir / "item_counts.npy"))


def batch_job(run_dir: Path, scratch: Path, n_users: int, workers: int) -> dict:
    """`g2rec score --all` over a synthetic Parquet event log of n_users users (3-50 events each)."""
    import resource

    import pyarrow as pa
    import pyarrow.parquet as pq

    log = scratch / "events"
    log.mkdir()
    rng = np.random.default_rng(0)
    for start in range(0, n_users, 100_000):  # written in slices: the generator's memory stays flat too
        users = np.arange(start, min(n_users, start + 100_000))
        sizes = rng.integers(3, 51, size=len(users))
        u = np.repeat(users, sizes)
        pq.write_table(pa.table({"user": u, "item": rng.integers(1, 12_102, size=len(u)),
                                 "timestamp": rng.integers(0, 10**9, size=len(u))}), log / f"{start:09d}.parquet")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", "score", str(run_dir), "--all", str(log), "--out",
                    str(scratch / "recs"), "--workers", str(workers)], check=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    return {"batch_users": n_users, "batch_workers": workers, "batch_seconds": seconds,
            "batch_users_per_s": n_users / seconds,
            "batch_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


@click.command()
@click.option("--threads", type=int, default=1, show_default=True,
              help="onnxruntime / torch threads (1: the serving default, fastest on the shared 2-core machine)")
@click.option("--reps", type=int, default=5, show_default=True)
@click.option("--seconds", type=float, default=15.0, show_default=True, help="each HTTP load phase")
@click.option("--clients", type=int, default=16, show_default=True)
@click.option("--batch-users", type=int, default=10_000, show_default=True, help="users of the --all job")
@click.option("--workers", type=int, default=2, show_default=True, help="processes of the --all job")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=REPO / "bench/results/serve.json")
@click.option("--scoring-only", is_flag=True,
              help="rerun only the in-process scoring figures (1.) and keep the other keys of --out")
@click.option("--freshness-only", is_flag=True, help="rerun only the freshness figures (5.) and keep the other keys")
@click.option("--fresh-users", type=int, default=FreshnessConfig.users, show_default=True, help="watched users")
@click.option("--fresh-rate", type=float, default=FreshnessConfig.rate, show_default=True,
              help="events/s produced during the freshness phase (watched + background users)")
@click.option("--fresh-seconds", type=float, default=FreshnessConfig.seconds, show_default=True)
@click.option("--run", "trained", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="a trained Beauty run to benchmark instead of the random-init model (its int8 graph is checked "
                   "on its validation histories at export and served when it passes)")
def command(threads, reps, seconds, clients, batch_users, workers, out, scoring_only, freshness_only, fresh_users,
            fresh_rate, fresh_seconds, trained):
    """Scoring, HTTP, hot-swap, batch-scoring and freshness figures of the serving stack -> bench/results/serve.json."""
    import tempfile

    from serving.run_dir import RunConfig, open_run, read_version

    fresh = FreshnessConfig(users=fresh_users, rate=fresh_rate, seconds=fresh_seconds)
    with tempfile.TemporaryDirectory(prefix="g2rec-bench-serve-") as tmp:
        tmp = Path(tmp)
        if scoring_only or freshness_only:
            result = json.loads(out.read_text())
            run = trained or beauty_sized_run(tmp / "run-a", 0)
            if scoring_only:  # drop every earlier scoring key: a figure this run does not take must not linger
                result = {k: v for k, v in result.items() if not k.startswith(("batch_1000_ms", "single_user_"))}
                result.update(scoring_figures(run, threads, reps, None if trained else interleaved_run(tmp)))
                result["scoring_model"] = (f"trained run {trained}" if trained else
                                           f"random init, Beauty-sized, Beauty's G2Rec preset ({_preset_line()}); "
                                           "batch_1000_ms_interleaved_layout: the same size in the interleaved layout")
                result["scoring_loadavg_1m_at_start"] = os.getloadavg()[0]
                result["scoring_threads"] = threads
            if freshness_only:
                result.update(measure_freshness(run, tmp / "fresh", fresh))
            result.pop("freshness", None)  # an older run's "not measured"
            rerun = [n for n, on in (("scoring", scoring_only), ("freshness", freshness_only)) if on]
            result["rerun"] = f"{' and '.join(rerun)} figures only; the other keys are an earlier run's"
            out.write_text(json.dumps(result, indent=2) + "\n")
            click.echo(json.dumps(result, indent=2))
            return
        runs = [trained or beauty_sized_run(tmp / "run-a", 0), beauty_sized_run(tmp / "run-b", 1)]
        result = {"hardware": HARDWARE, "machine": platform.machine(), "cpus": os.cpu_count(),
                  "loadavg_1m_at_start": os.getloadavg()[0],
                  "model": f"G2Rec, {f'trained run {trained}' if trained else 'random init'}, Beauty-sized: 12,101 "
                           f"items, Beauty's G2Rec preset ({_preset_line()}), K 256, rho 4, B 4; histories of 3-50 items (uniform); "
                           "the swaps alternate it with a random-init model (seed 1)", "threads": threads}
        result.update(batch_job(runs[0], tmp, batch_users, workers))
        click.echo(json.dumps(result), err=True)
        result.update(scoring_figures(runs[0], threads, reps, None if trained else interleaved_run(tmp)))
        click.echo(json.dumps(result), err=True)
        versions = [read_version(r).version for r in runs]
        probe = [{"history": h} for h in histories(4, 12_101, seed=2)]
        expected = {v: [r.items for r in open_run(RunConfig(d)).recommend([u["history"] for u in probe], 10)]
                    for v, d in zip(versions, runs)}
        point(tmp, runs[0])
        server = ServeProcess("--watch", tmp, "--poll-seconds", "0.5", "--threads", threads)
        try:
            single = load(server.port, clients, seconds, {"history": probe[0]["history"], "k": 10})
            lat = np.array(single.latencies_s) * 1000
            batch = load(server.port, clients, seconds, {"users": probe * 25, "k": 10}, "/recommend/batch")
            swapped, took = swap_under_load(server, tmp, runs, versions, {"users": probe, "k": 10}, expected,
                                            clients=clients, swaps=3, per_swap_s=30.0)
        finally:
            server.stop()
        result.update({
            "http_clients": clients, "http_seconds": single.seconds, "http_requests": len(lat),
            "http_failed": single.failed, "http_p50_ms": float(np.percentile(lat, 50)),
            "http_p99_ms": float(np.percentile(lat, 99)), "http_rps": len(lat) / single.seconds,
            "http_batch_users_per_request": 100, "http_batch_users_per_s": batch.users / batch.seconds,
            "http_batch_failed": batch.failed,
            "swap_count": len(took), "swap_seconds_to_serve": took, "swap_requests": len(swapped.latencies_s),
            "swap_failed_responses": swapped.failed, "swap_mixed_responses": swapped.mixed,
        })
        click.echo(json.dumps(result), err=True)
        result.update(measure_freshness(runs[0], tmp / "fresh", fresh))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result, indent=2))
