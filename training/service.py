"""`g2rec train-service`: one cycle per new edge snapshot (training/stages.py does the work).

Snapshots come from the `<topic>-snapshots` topic and, at start, from the stream state store's
snapshot table (so one announced while the service was down is not missed); the journal
(training/journal.py), keyed by (store_id, snapshot_id), makes sure none is handled twice. Of
several pending snapshots of one store only the newest is trained; the older ones are recorded
`superseded` (a newer snapshot covers their events).

Crash safety: each stage's effect is durable before the journal records it, and each stage can
be redone or recognised as done after a restart:
  recluster  pure; its profiles.npz is written atomically before the journal says `clustered`
  publish    the planned version is journalled first; after a restart, a feature store whose
             current version is the planned one means the switch happened (a stale publish lock
             is then completed), else the lock is released and the publish redone at current + 1
  train      pure; model files written atomically before `trained`
  export     pure; model.onnx + parity.json before `exported`
  register   an MLflow version is made only after its artifacts, and is found again by its cycle tag
  promote    the alias moves, then the version is tagged promoted; a tagged version is never
             promoted again (registry/)
The Feast pointer switch and the alias move are single-row writes, so the current profile
version and the champion are never half-written.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from features.config import StoreConfig
from g2rec.errors import DataError, G2RecError
from g2rec.train import TrainConfig
from training.journal import Cycle, Journal
from training.pipeline import PipelineConfig, load_model
from training import stages
from training.observe import ServiceMetrics, stage_log
from registry import ModelRegistry, RegistryConfig
from training.warm import can_grow, rekey

log = logging.getLogger("g2rec.train_service")
FAULT_STAGES = ("recluster", "publish", "train", "export", "register", "promote")
FULL_RETRAIN_REQUEST = "FULL_RETRAIN"  # a file of this name in work_dir asks for one full retrain


def finetune_config(train: TrainConfig, epochs: int = 4, minutes: float = 2.0) -> TrainConfig:
    """A fine-tune: the full retrain's optimiser settings (lr, weight average, batches, clock) on a
    short budget, validated from its start so that it never hands back a model worse on validation
    than the champion it grew from (bench/README.md, Training service)."""
    return replace(train, epochs=epochs, eval_every=1, patience=2, max_minutes=minutes, progress=False,
                   validate_start=True)


@dataclass(frozen=True)
class ServiceConfig:
    """The training service.

    work_dir: cycle folders, the journal (unless journal_url) and FULL_RETRAIN requests.
    event_log: the stream worker's Parquet event log; store_url: its state store (snapshot table;
    None: learn of snapshots from Kafka only); bootstrap/topic: the events topic (announcements on
    `<topic>-snapshots`; bootstrap "" disables Kafka).
    pipeline: model, full-retrain budget (pipeline.train), clustering; finetune: the fine-tune budget.
    full_retrain_every: every Nth trained cycle is a full retrain (0: only the first); fine-tunes keep
    their champion's interest vocabulary, so this bounds its age (bench/README.md, Training service).
    promote_tolerance: promote when gate NDCG@10 >= the champion's minus this.
    eval_users / parity_users: users of the gate slice / of the parity check.
    parity_atol, parity_top10: the export must match eager within atol with identical top-10 for
    at least this share of users.
    fault_stage: test-only fault injection: SIGKILL this process in the middle of that stage.
    """

    work_dir: str = "runs/train-service"
    event_log: str = "data/eventlog"
    store_url: str | None = None
    bootstrap: str = "127.0.0.1:9092"
    topic: str = "g2rec-events"
    journal_url: str | None = None
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    features: StoreConfig = field(default_factory=StoreConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    finetune: TrainConfig = field(default_factory=lambda: finetune_config(TrainConfig()))
    full_retrain_every: int = 4
    promote_tolerance: float = 0.002
    eval_users: int = 2000
    parity_users: int = 512
    parity_atol: float = 1e-4
    parity_top10: float = 0.99
    poll_s: float = 1.0
    metrics_port: int | None = None
    fault_stage: str = ""

    def __post_init__(self) -> None:
        if self.fault_stage and self.fault_stage not in FAULT_STAGES:
            raise ValueError(f"fault_stage={self.fault_stage!r}: expected one of {', '.join(FAULT_STAGES)}")
        if self.full_retrain_every < 0 or self.eval_users < 1 or self.parity_users < 1:
            raise ValueError("full_retrain_every must be >= 0, eval_users and parity_users >= 1")

    @property
    def snapshots_topic(self) -> str:
        return f"{self.topic}-snapshots"


class TrainService:
    def __init__(self, cfg: ServiceConfig):
        from features.lookup import FeatureLookup
        from features.store import FeatureRepo

        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(cfg.journal_url or f"sqlite:///{(self.work / 'journal.db').resolve()}")
        self.registry = ModelRegistry(cfg.registry)
        self.repo = FeatureRepo(cfg.features)
        self.lookup = FeatureLookup(self.repo)
        self.metrics = ServiceMetrics()
        self._consumer = None

    # ---- discovering snapshots ------------------------------------------------------------------
    def note(self, store_id: str, snapshot_id: int, path: str, offsets: dict) -> bool:
        """Record a snapshot (from the store table or an announcement); False if known."""
        return self.journal.add(store_id, int(snapshot_id), path,
                                json.dumps({str(k): int(v) for k, v in sorted(offsets.items())}))

    def scan_store(self) -> int:
        """Record every snapshot of the stream state store's table; returns how many were new."""
        if not self.cfg.store_url:
            return 0
        from streaming.store import StateStore

        store = StateStore(self.cfg.store_url)
        store_id = store.store_id
        return sum(self.note(store_id, r["snapshot_id"], r["path"], r["offsets"]) for r in store.snapshots())

    def poll_kafka(self, timeout_s: float) -> int:
        """Record announcements from the snapshots topic (read from the start: the journal drops
        the ones already known); returns how many were new. Sleeps timeout_s without Kafka."""
        if not self.cfg.bootstrap:
            time.sleep(timeout_s)
            return 0
        from kafka import KafkaConsumer, TopicPartition

        from streaming.models import SnapshotAnnouncement

        if self._consumer is None:
            from infra.kafka import create_topics

            create_topics(self.cfg.bootstrap, {self.cfg.snapshots_topic: 1}, exact=False)
            self._consumer = KafkaConsumer(bootstrap_servers=self.cfg.bootstrap, group_id=None,
                                           enable_auto_commit=False, auto_offset_reset="earliest")
            tp = TopicPartition(self.cfg.snapshots_topic, 0)
            self._consumer.assign([tp])
            self._consumer.seek_to_beginning(tp)
        new = 0
        for records in self._consumer.poll(timeout_ms=int(timeout_s * 1000)).values():
            for r in records:
                try:
                    a = SnapshotAnnouncement(**json.loads(r.value))
                except (ValueError, TypeError) as e:
                    log.error(json.dumps({"event": "bad_announcement", "offset": r.offset, "error": str(e)}))
                    continue
                new += self.note(a.store_id, a.snapshot_id, a.path, a.partition_offsets())
        return new

    # ---- the loop -------------------------------------------------------------------------------
    def run_forever(self, stop=lambda: False) -> None:
        if self.cfg.metrics_port is not None:
            self.metrics.serve(self.cfg.metrics_port)
        self.scan_store()
        while not stop():
            self.run_pending()
            self.poll_kafka(self.cfg.poll_s)

    def run_pending(self) -> list[Cycle]:
        """Supersede all but the newest unfinished snapshot of each store, then run or resume it."""
        done = []
        newest: dict[str, Cycle] = {}
        for c in self.journal.unfinished():
            older = newest.get(c.store_id)
            if older is not None and older.stage == "pending":
                self.journal.finish(older, "superseded", f"snapshot {c.snapshot_id} is newer")
            if older is None or older.stage == "pending":
                newest[c.store_id] = c
        for c in newest.values():
            done.append(self.run_cycle(c))
        return done

    def run_cycle(self, c: Cycle) -> Cycle:
        """Run (or resume) one cycle; bad input is logged and skips it, leaving the champion and
        the published profiles as they were."""
        t0 = time.time()
        self.journal.advance(c, c.stage, attempts=c.attempts + 1)
        try:
            c = self._cycle(c)
        except G2RecError as e:
            c = self.journal.finish(c, "skipped", str(e))
            self.metrics.failure("skipped")
            log.error(json.dumps({"event": "cycle_skipped", "cycle": c.key, "reason": str(e)}))
        except Exception as e:  # a bug or a lost server: recorded, the service keeps serving
            c = self.journal.finish(c, "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            self.metrics.failure("failed")
            log.error(json.dumps({"event": "cycle_failed", "cycle": c.key, "error": f"{type(e).__name__}: {e}"}))
        self.metrics.cycle(c.outcome or "unknown", time.time() - t0)
        if c.outcome == "promoted":
            self.metrics.promoted(self.registry.champion())
        return c

    def _fault(self, stage: str) -> None:
        if self.cfg.fault_stage == stage:
            log.warning(json.dumps({"event": "fault_injection", "stage": stage}))
            os.kill(os.getpid(), signal.SIGKILL)

    def _folder(self, c: Cycle) -> Path:
        folder = self.work / "cycles" / f"{c.store_id}-{c.snapshot_id:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _cycle(self, c: Cycle) -> Cycle:
        folder = self._folder(c)
        offsets = {int(p): int(o) for p, o in json.loads(c.offsets).items()}
        cfg = self.cfg
        champion = self.registry.champion()
        if c.stage == "pending":
            with stage_log(self.metrics, "recluster", c.key) as info:
                snap = stages.load_snapshot(c.path, c.snapshot_id)
                data = stages.load_histories(cfg.event_log, offsets)
                if champion is not None:
                    common = stages.common_items(snap, data, champion.item_ids())
                    if common == 0:
                        raise DataError(f"snapshot {c.key} shares no item with champion version "
                                               f"{champion.version}; not training on it")
                warm = stages.feast_profiles(self.lookup, snap.item_ids, cfg.pipeline.cluster.n_clusters)
                last = self.journal.last_done("promoted")
                ccfg = cfg.pipeline.cluster
                if warm is not None and last is not None and last.resolution is not None:
                    ccfg = replace(ccfg, resolution=last.resolution, auto_resolution=False)
                rec = stages.recluster(snap, ccfg, warm)
                self._fault("recluster")
                stages.save_profiles(rec.profiles, folder / "profiles.npz")
                info.update(warm=rec.warm, iterations=rec.report.iterations, seconds=rec.report.seconds,
                            modularity=rec.report.modularity, changed_primary_share=rec.changed_share,
                            items=int(snap.n_items))
            c = self.journal.advance(c, "clustered", resolution=rec.report.resolution)
        if c.stage == "clustered":
            with stage_log(self.metrics, "publish", c.key) as info:
                c = self._publish(c, folder, info)
        if c.stage == "published":
            with stage_log(self.metrics, "train", c.key) as info:
                plan = self._plan(champion)
                data = stages.load_histories(cfg.event_log, offsets)
                profiles = stages.load_profiles(folder / "profiles.npz")
                champ = (load_model(champion.model_path), champion.item_ids()) if champion is not None else None
                if champ is not None and not can_grow(champ[0], profiles):
                    plan = stages.TrainPlan(True, cfg.pipeline.train)
                out = stages.train_cycle(data, profiles, champ, plan, cfg.pipeline.model, cfg.pipeline.train.seed,
                                         cfg.eval_users)
                self._fault("train")
                # the profile version the model's interest tokens stand for (a fine-tune keeps its champion's)
                out.metrics["profile_version"] = champion.profile_version \
                    if out.metrics["vocabulary"] == "champion" else c.profile_version
                stages.save_trained(out, folder, {"service": cfg, "profile_version": out.metrics["profile_version"]})
                info.update(full_retrain=plan.full, gate=out.metrics["gate"][stages.GATE_METRIC],
                            train_seconds=out.metrics["train_seconds"], epochs=out.metrics["epochs_run"])
            self._consume_full_request(plan)
            c = self.journal.advance(c, "trained", full_retrain=int(plan.full))
        if c.stage == "trained":
            with stage_log(self.metrics, "export", c.key) as info:
                model = load_model(folder / "model.pt")
                data = rekey(stages.load_histories(cfg.event_log, offsets),
                                    np.load(folder / "item_ids.npy"))
                split = stages.gate_split(data, cfg.eval_users, cfg.pipeline.train.seed)
                parity = stages.export_checked(model, split, folder, cfg.parity_users)
                self._fault("export")
                info.update(max_abs_diff=parity.max_abs_diff, top10_share=parity.top10_share, users=parity.users)
            if not parity.ok(cfg.parity_atol, cfg.parity_top10):
                return self.journal.finish(c, "kept", f"ONNX parity failed: {parity}; not registered")
            c = self.journal.advance(c, "exported")
        if c.stage == "exported":
            with stage_log(self.metrics, "register", c.key) as info:
                mv = self.registry.by_cycle(c.key)
                if mv is None:
                    metrics = json.loads((folder / "metrics.json").read_text())
                    parity = stages.load_parity(folder)
                    flat = {f"gate_{k}": v for k, v in metrics["gate"].items()}
                    flat.update({f"champion_gate_{k}": v for k, v in metrics.get("champion_gate", {}).items()})
                    flat.update(train_seconds=metrics["train_seconds"], parity_max_abs_diff=parity.max_abs_diff,
                                parity_top10_share=parity.top10_share)
                    version = metrics.get("profile_version", c.profile_version)
                    mv = self.registry.register(folder, c.key, c.snapshot_id, version,
                                                {"full_retrain": metrics["full_retrain"], "items": metrics["items"]},
                                                flat)
                self._fault("register")
                info.update(version=mv.version, sha256=mv.onnx_sha256[:12])
            c = self.journal.advance(c, "registered", model_version=mv.version)
        if c.stage == "registered":
            with stage_log(self.metrics, "promote", c.key) as info:
                metrics = json.loads((folder / "metrics.json").read_text())
                ok, why = stages.gate(metrics, cfg.promote_tolerance)
                self.registry.decide(c.model_version, why)
                if ok:
                    self.registry.promote(c.model_version)
                self._fault("promote")
                info.update(version=c.model_version, promoted=ok, reason=why)
            c = self.journal.finish(c, "promoted" if ok else "kept", why)
        return c

    def _publish(self, c: Cycle, folder: Path, info: dict) -> Cycle:
        from features.publish import PROFILES, publish_profiles

        current = self.lookup.current_version()
        versions = self.repo.versions
        if c.profile_version is not None and current == c.profile_version:
            # The switch happened before a crash; finish the version log's record if it was cut short.
            if versions.lock_holder(PROFILES) == c.profile_version:
                versions.complete(PROFILES, c.profile_version, float("nan"))
            info.update(version=c.profile_version, resumed=True)
            return self.journal.advance(c, "published")
        if versions.lock_holder(PROFILES) is not None:
            # Only this service publishes profiles: a lock left behind is its own dead publish.
            versions.unlock(PROFILES)
        version = current + 1 if current is not None else 0
        c = self.journal.advance(c, "clustered", profile_version=version)
        profiles = replace(stages.load_profiles(folder / "profiles.npz"), version=version)
        result = publish_profiles(self.repo, profiles)
        self._fault("publish")
        info.update(version=version, rows=result.rows, switch_seconds=result.seconds)
        return self.journal.advance(c, "published")

    def _plan(self, champion) -> stages.TrainPlan:
        cfg = self.cfg
        trained = [x for x in self.journal.all() if x.outcome in ("promoted", "kept") and x.full_retrain is not None]
        requested = (self.work / FULL_RETRAIN_REQUEST).exists()
        due = cfg.full_retrain_every > 0 and len(trained) % cfg.full_retrain_every == 0
        if champion is None or requested or due:
            return stages.TrainPlan(True, cfg.pipeline.train)
        return stages.TrainPlan(False, cfg.finetune)

    def _consume_full_request(self, plan: stages.TrainPlan) -> None:
        if plan.full:
            (self.work / FULL_RETRAIN_REQUEST).unlink(missing_ok=True)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self.lookup.close()
        self.repo.close()
        self.journal.close()
