"""Training loop and evaluation for G2RecModel: pure torch, no I/O beyond a progress bar."""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from g2rec.errors import ConfigError
from g2rec.metrics import LooSplit, metrics_from_ranks, target_ranks
from g2rec.model import G2RecModel, mix
from g2rec.ranking import pad_left
from g2rec.types import Interactions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 2  # epochs between validation runs
    patience: int = 8  # validation runs without improvement before stopping
    max_minutes: float = 18.0  # wall-clock cap on training
    seed: int = 0
    progress: bool = True
    ema: float = 0.0  # > 0: validate, early-stop and keep an exponential moving average of the weights at this decay per step
    target_weighting: bool = False  # scale each batch's mean loss by its share of targets, so every target weighs the same

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must lie in [0, 1), got {self.ema}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    seconds: float
    epochs_run: int
    curve: list[dict] = field(default_factory=list)


def training_sequences(train: Interactions, max_len: int) -> list[np.ndarray]:
    """Cut each user's training history into windows of max_len+1 items, newest first, so every
    transition is a target exactly once (consecutive windows overlap by one input item)."""
    out = []
    for u in range(train.n_users):
        h = train.history(u)
        end = len(h)
        while end >= 2:
            out.append(h[max(0, end - max_len - 1) : end])
            end -= max_len
    return out


def length_batches(seqs: list[np.ndarray], batch_size: int, rng: np.random.Generator):
    """Shuffled batches of similar length (little padding), each (B, T+1)."""
    order = np.argsort([len(s) + rng.random() for s in seqs], kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for c in rng.permutation(len(chunks)):
        yield torch.from_numpy(pad_left([seqs[i] for i in chunks[c]]))


def batch_loss(model: G2RecModel, batch: torch.Tensor, mean_targets: float | None) -> torch.Tensor:
    """The model's mean loss on one (B, T+1) batch; with mean_targets (targets per batch over the
    epoch) scaled by the batch's share of targets, so that every target weighs the same. Batches are
    length-sorted, so their target counts differ up to 25-fold: a plain mean weighs a short
    history's transitions that much more than a long one's."""
    loss, _ = model.loss(batch)
    if mean_targets is None:
        return loss
    return loss * ((batch[:, :-1] > 0).sum() / mean_targets)


@torch.no_grad()
def evaluate(model: G2RecModel, split: LooSplit, stage: str, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Full-ranking metrics on `stage`: {"masked": history excluded, "unmasked": not excluded}."""
    return _evaluate(model, split, stage, batch_size, [None])[None]


@torch.no_grad()
def evaluate_mixtures(model: G2RecModel, split: LooSplit, stage: str, weights: list[float],
                      batch_size: int = 256) -> dict[float, dict[str, dict[str, float]]]:
    """g2rec mode: `evaluate` for each direct-head weight in one pass (the model encodes once)."""
    if model.cfg.mode != "g2rec":
        raise ValueError(f"mixture weights need a g2rec-mode model, got mode {model.cfg.mode!r}")
    return _evaluate(model, split, stage, batch_size, list(weights))


def _evaluate(model: G2RecModel, split: LooSplit, stage: str, batch_size: int, weights: list) -> dict:
    """weights: [None] scores with model.score; else mixes model.score_parts with each weight."""
    was_training = model.training
    model.eval()
    inputs, targets = split.inputs(stage), split.targets(stage)
    order = np.argsort([len(h) for h in inputs], kind="stable")
    ranks = {w: (np.empty(len(inputs)), np.empty(len(inputs))) for w in weights}  # (masked, unmasked)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        hist = [inputs[j] for j in idx]
        x = torch.from_numpy(pad_left(hist, min(model.cfg.max_len, max(len(h) for h in hist))))
        t = torch.as_tensor(targets[idx])
        parts = model.score_parts(x) if weights != [None] else None
        for w, (masked, unmasked) in ranks.items():
            scores = model.score(x) if w is None else mix(*parts, w)
            masked[idx] = target_ranks(scores, t, hist).numpy()
            unmasked[idx] = target_ranks(scores, t, None).numpy()
    model.train(was_training)
    return {w: {"masked": metrics_from_ranks(m), "unmasked": metrics_from_ranks(u)} for w, (m, u) in ranks.items()}


@contextmanager
def _weights(model: G2RecModel, avg: list[torch.Tensor] | None):
    """Run the block with the parameters replaced by `avg` (None: unchanged), then restore them."""
    if avg is None:
        yield
        return
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(params, avg)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)


def fit(model: G2RecModel, split: LooSplit, cfg: TrainConfig) -> FitResult:
    """Adam on all next-item targets; early stopping on validation NDCG@10 (history excluded),
    scored with the moving average of the weights when cfg.ema > 0 (it smooths the step-to-step
    noise that otherwise makes validation swing). Leaves the model holding its best-validation weights."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    seqs = training_sequences(split.train, model.cfg.max_len)
    mean_targets = sum(len(s) - 1 for s in seqs) / -(-len(seqs) // cfg.batch_size)  # per batch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    avg = [p.detach().clone() for p in params] if cfg.ema > 0 else None
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    curve: list[dict] = []
    start = time.time()
    epoch = 0
    bar = tqdm(total=cfg.epochs, disable=not cfg.progress, desc=f"train {model.cfg.mode}", unit="ep")
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for batch in length_batches(seqs, cfg.batch_size, rng):
            loss = batch_loss(model, batch, mean_targets if cfg.target_weighting else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if avg is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(avg, params, 1.0 - cfg.ema)
            losses.append(loss.item())
        bar.update(1)
        out_of_time = time.time() - start > cfg.max_minutes * 60
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_time:
            with _weights(model, avg):
                valid = evaluate(model, split, "valid")["masked"]
                state = copy.deepcopy(model.state_dict()) if valid["ndcg@10"] > best else None
            curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "valid_ndcg@10": valid["ndcg@10"]})
            log.info("epoch %d loss %.4f valid ndcg@10 %.4f recall@10 %.4f (%.0fs)", epoch, np.mean(losses),
                     valid["ndcg@10"], valid["recall@10"], time.time() - start)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", ndcg10=f"{valid['ndcg@10']:.4f}", best=f"{max(best, valid['ndcg@10']):.4f}")
            if valid["ndcg@10"] > best:
                best, best_state, best_epoch, bad, best_valid = valid["ndcg@10"], state, epoch, 0, valid
            else:
                bad += 1
            if bad >= cfg.patience or out_of_time:
                break
    bar.close()
    model.load_state_dict(best_state)
    return FitResult(best_epoch, best_valid, time.time() - start, epoch, curve)
