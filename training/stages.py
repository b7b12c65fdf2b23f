"""The stages of a training-service cycle, as functions of their inputs (no journal, no loop):
inputs -> recluster -> publish -> train + evaluate -> export + parity -> (register, promote in
registry/). `g2rec train` shares the train stage (training/pipeline.train_model).

A cycle's folder holds what each stage leaves for the next, each file written atomically:
    profiles.npz     the reclustered profiles (version set when published)
    model.pt, item_ids.npy, config.json, metrics.json, curve.png   the trained model
    model.onnx, parity.json                                          the export
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from g2rec.cluster import ClusterConfig, ClusterReport, cluster
from g2rec.errors import DataError, NotFoundError
from g2rec.metrics import LooSplit, loo_split
from g2rec.model import G2RecModel
from g2rec.train import TrainConfig, evaluate
from g2rec.types import EdgeSnapshot, Interactions, InterestProfiles
from training.export import Parity, check_parity, export_onnx
from training.pipeline import new_model, save_model, train_model
from training.warm import catalogue, grow, grow_items, model_profiles, profile_table, rekey

GATE_METRIC = "ndcg@10"


# ---- inputs -------------------------------------------------------------------------------------
def load_snapshot(path: str, snapshot_id: int) -> EdgeSnapshot:
    """The edge snapshot at `path`; DataError when it is missing, unreadable or empty."""
    from streaming.snapshots import read_snapshot

    try:
        snap = read_snapshot(path, snapshot_id)
    except FileNotFoundError as e:
        raise DataError(f"snapshot {snapshot_id} at {path}: {e}") from e
    except (OSError, ValueError, KeyError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on a corrupt file
        raise DataError(f"snapshot {snapshot_id} at {path} cannot be read: {type(e).__name__}: {e}") from e
    if snap.n_items < 2 or snap.n_edges == 0:
        raise DataError(f"snapshot {snapshot_id} at {path} is empty ({snap.n_items} items, {snap.n_edges} edges)")
    return snap


def load_histories(event_log: str, offsets: dict[int, int]) -> Interactions:
    """Every logged event the snapshot covers (offsets: events partition -> next offset), as
    per-user sequences; DataError when there is none."""
    from streaming.eventlog import read_histories

    try:
        return read_histories(event_log, committed=offsets or None)
    except DataError as e:  # from_events refuses an empty log
        raise DataError(f"event log {event_log}: no events up to the snapshot's offsets ({e})") from e


def common_items(snapshot: EdgeSnapshot, data: Interactions, item_ids: np.ndarray) -> int:
    """How many items of the snapshot or the event log are in `item_ids` (a champion's catalogue)."""
    ours = np.union1d(np.asarray(snapshot.item_ids)[1:], np.asarray(data.item_ids)[1:])
    return int(np.isin(ours, np.asarray(item_ids)[1:]).sum())


# ---- recluster ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reclustered:
    profiles: InterestProfiles
    report: ClusterReport
    warm: bool
    changed_share: float | None  # items in both versions whose primary interest changed / items in both


def recluster(snapshot: EdgeSnapshot, cfg: ClusterConfig, warm: InterestProfiles | None) -> Reclustered:
    """Soft clustering of the snapshot, warm-started from `warm` when given (cluster ids stay those
    of `warm`; items matched by original id, so new and vanished items are handled there)."""
    profiles, report = cluster(snapshot, cfg, warm=warm)
    share = None
    if warm is not None:
        both = np.isin(np.asarray(snapshot.item_ids)[1:], np.asarray(warm.item_ids)[1:]).sum()
        share = (report.changed_primary or 0) / both if both else None
    return Reclustered(profiles, report, warm is not None, share)


def save_profiles(profiles: InterestProfiles, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, clusters=profiles.clusters, weights=profiles.weights, item_ids=profiles.item_ids,
             n_clusters=profiles.n_clusters, version=profiles.version)
    tmp.replace(path)


def load_profiles(path: Path) -> InterestProfiles:
    with np.load(path) as f:
        return InterestProfiles(f["clusters"], f["weights"], f["item_ids"], int(f["n_clusters"]), int(f["version"]))


def feast_profiles(lookup, item_ids: np.ndarray, n_clusters: int) -> InterestProfiles | None:
    """The current profile version in the feature store, for the items of `item_ids` it holds
    (row 0 of item_ids is padding); None when none is published or none of them is in it."""
    version = lookup.current_version()
    if version is None:
        return None
    got = lookup.profiles(np.asarray(item_ids, dtype=np.int64)[1:], version)
    if not got.found.any():
        return None
    rho = got.clusters.shape[1]
    clusters = np.concatenate([np.zeros((1, rho), np.int64), got.clusters[got.found]])
    weights = np.concatenate([np.zeros((1, rho), np.float32), got.weights[got.found]])
    ids = np.concatenate([[-1], got.item_ids[got.found]])
    return InterestProfiles(clusters, weights, ids, n_clusters, version)


# ---- train + evaluate ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainPlan:
    """full: train from scratch (else fine-tune the champion); cfg: the training budget."""

    full: bool
    cfg: TrainConfig


def gate_split(data: Interactions, max_users: int, seed: int) -> LooSplit:
    """Leave-one-out over the event log: early stopping on each user's second-latest event, the
    gate on the latest ("test" stage: held out from training and from early stopping), both over
    at most `max_users` sampled users."""
    split = loo_split(data)
    if len(split.users) == 0:
        raise DataError(f"event log: no user has the 3 events a validation slice needs ({data.n_users} users)")
    if len(split.users) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(split.users), max_users, replace=False))
        split = replace(split, users=split.users[keep], valid=split.valid[keep], test=split.test[keep])
    return split


@dataclass
class TrainOutcome:
    model: G2RecModel
    item_ids: np.ndarray  # (N+1,) the catalogue
    split: LooSplit
    metrics: dict
    curve: list[dict]


def train_cycle(data: Interactions, profiles: InterestProfiles | None, champion: tuple[G2RecModel, np.ndarray] | None,
                plan: TrainPlan, model_cfg, seed: int, eval_users: int) -> TrainOutcome:
    """Fine-tune the champion (or train afresh) on the event log over the union catalogue, then
    evaluate it and the champion (carried to the same catalogue, untrained) on the gate slice.

    The profile table is the model's vocabulary of interest tokens: a full retrain takes the new
    `profiles`; a fine-tune keeps the champion's table and takes `profiles` only for items new to
    it (like a tokenizer kept while fine-tuning: switching a trained model to a re-clustered table
    costs more validation NDCG@10 than its short budget wins back; bench/README.md, Training
    service). metrics["vocabulary"] says which ("new" or "champion")."""
    ids = [data.item_ids] + ([profiles.item_ids] if profiles is not None else [])
    if champion is not None:
        ids.append(champion[1])
    cat = catalogue(*ids)
    data = rekey(data, cat)
    split = gate_split(data, eval_users, seed)
    champ_profiles = model_profiles(*champion) if champion is not None else None
    table = None
    keep = not plan.full and champ_profiles is not None
    if model_cfg.mode == "g2rec" and profiles is not None:
        table = profile_table(cat, champ_profiles, [profiles]) if keep else \
            profile_table(cat, profiles, [champ_profiles] if champ_profiles else [])
    if plan.full or champion is None:
        model = new_model(model_cfg, len(cat) - 1, table, seed)
    else:
        model = grow(champion[0], champion[1], table) if table is not None else grow_items(*champion, cat)
    trained = train_model(model, split, plan.cfg)
    metrics = {"gate": evaluate(model, split, "test")["masked"], "valid": evaluate(model, split, "valid")["masked"],
               "full_retrain": plan.full, "vocabulary": "champion" if keep and table is not None else "new",
               "train_seconds": trained.fit.seconds, "epochs_run": trained.fit.epochs_run,
               "best_epoch": trained.fit.best_epoch, "items": int(len(cat) - 1), "new_items": 0,
               "users_evaluated": int(len(split.users)), "interactions": int(data.n_interactions)}
    if champion is not None:
        metrics["new_items"] = int((np.isin(cat[1:], np.asarray(champion[1])[1:], invert=True)).sum())
        own = table if keep else profile_table(cat, champ_profiles, [profiles]) if champ_profiles is not None else None
        champ = grow(champion[0], champion[1], own) if own is not None else grow_items(*champion, cat)
        metrics["champion_gate"] = evaluate(champ, split, "test")["masked"]
        metrics["champion_valid"] = evaluate(champ, split, "valid")["masked"]
    if trained.direct_weight_search is not None:
        metrics["direct_weight"] = model.cfg.direct_weight
    return TrainOutcome(model.eval(), cat, split, metrics, trained.fit.curve)


def save_trained(out: TrainOutcome, folder: Path, config: dict) -> None:
    """model.pt, item_ids.npy, item_counts.npy, config.json, metrics.json and curve.png into `folder`."""
    save_model(out.model, folder / "model.pt")
    _write(folder / "item_ids.npy", lambda p: np.save(p, out.item_ids))
    counts = np.bincount(out.split.train.items, minlength=len(out.item_ids))  # (N+1,)
    _write(folder / "item_counts.npy", lambda p: np.save(p, counts.astype(np.int64)))
    _write(folder / "config.json", lambda p: p.write_text(json.dumps({**config, "model": out.model.cfg.to_dict()},
                                                                         indent=2, default=str)))
    _write(folder / "curve.png", lambda p: plot_curve(out.curve, p))
    _write(folder / "metrics.json", lambda p: p.write_text(json.dumps({**out.metrics, "curve": out.curve}, indent=2)))


def plot_curve(curve: list[dict], path: Path) -> None:
    """Training loss and validation NDCG@10 per evaluated epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    epochs = [c["epoch"] for c in curve]
    trained = [c for c in curve if c["loss"] is not None]  # a fine-tune's epoch 0 has no loss
    ax.plot([c["epoch"] for c in trained], [c["loss"] for c in trained], "o-", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    twin = ax.twinx()
    twin.plot(epochs, [c["valid_ndcg@10"] for c in curve], "s-", color="tab:orange")
    twin.set_ylabel("validation NDCG@10", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _write(path: Path, write) -> None:
    tmp = path.with_name(f".tmp.{path.name}")
    write(tmp)
    tmp.replace(path)


# ---- export -------------------------------------------------------------------------------------
def export_checked(model: G2RecModel, split: LooSplit, folder: Path, max_users: int) -> Parity:
    """model.onnx (dynamic batch and length) and its parity against eager on the gate slice's
    histories (parity.json)."""
    tmp = folder / ".tmp.model.onnx"
    export_onnx(model, tmp)
    tmp.replace(folder / "model.onnx")
    histories = split.inputs("test")[:max_users]
    parity = check_parity(model, folder / "model.onnx", histories)
    _write(folder / "parity.json", lambda p: p.write_text(json.dumps(asdict(parity))))
    return parity


def load_parity(folder: Path) -> Parity:
    path = folder / "parity.json"
    if not path.is_file():
        raise NotFoundError(f"{path}: no parity record")
    return Parity(**json.loads(path.read_text()))


# ---- promote ------------------------------------------------------------------------------------
def gate(metrics: dict, tolerance: float) -> tuple[bool, str]:
    """Promote when the new version's gate NDCG@10 >= the champion's minus `tolerance`."""
    new = metrics["gate"][GATE_METRIC]
    if "champion_gate" not in metrics:
        return True, f"no champion yet; {GATE_METRIC} {new:.4f}"
    old = metrics["champion_gate"][GATE_METRIC]
    verdict = "promoted" if new >= old - tolerance else "kept the champion"
    return new >= old - tolerance, f"{verdict}: {GATE_METRIC} {new:.4f} vs champion {old:.4f} (tolerance {tolerance})"


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
