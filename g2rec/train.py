"""Training loop and evaluation for G2RecModel: pure torch, no I/O beyond a progress bar."""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from g2rec.cluster import pick_device
from g2rec.errors import ConfigError
from g2rec.metrics import KS, LooSplit, metrics_from_ranks, target_ranks
from g2rec.model import G2RecModel, mix_probs
from g2rec.ranking import exclude_seen, pad_left
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
    max_minutes: float = 18.0  # cap on training, in minutes of `clock`
    # "wall": wall-clock time; "cpu": this process's CPU time (all its threads), a cap that other
    # jobs on a shared machine cannot eat into, so two models capped alike got equal compute.
    clock: str = "wall"
    seed: int = 0
    progress: bool = True
    ema: float = 0.0  # > 0: validate, early-stop and keep an exponential moving average of the weights at this decay per step
    # also validate the starting weights (a fine-tune: never hand back weights worse on validation
    # than the ones it started from)
    validate_start: bool = False
    target_weighting: bool = False  # scale each batch's mean loss by its share of targets, so every target weighs the same
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda[:n]"; the trained model is handed back on the CPU
    # CUDA only (CPU trains in fp32): "auto" = bf16 autocast where supported, else fp16 autocast with
    # a GradScaler; "bf16", "fp16" force one; "fp32" turns mixed precision off.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must lie in [0, 1), got {self.ema}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device={self.device!r} must be 'auto', 'cpu' or 'cuda[:n]'")
        if self.clock not in ("wall", "cpu"):
            raise ConfigError(f"clock={self.clock!r} must be 'wall' or 'cpu'")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"precision={self.precision!r} must be 'auto', 'bf16', 'fp16' or 'fp32'")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    seconds: float  # wall clock
    epochs_run: int
    curve: list[dict] = field(default_factory=list)
    cpu_seconds: float = 0.0  # CPU time of this process over the fit (all threads)


# Direct-head weights the g2rec score mixture is chosen from, on validation (0 = interest path only).
DIRECT_WEIGHTS = (0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98, 0.99)


def searches_mixture(model: G2RecModel) -> bool:
    """Whether the model has a direct head whose share of the score is chosen on validation."""
    return model.cfg.mode == "g2rec" and (model.fused or model.cfg.direct_weight > 0)


def mixture_search(model: G2RecModel, split: LooSplit) -> dict[float, dict[str, float]]:
    """Validation metrics (history excluded) at each of DIRECT_WEIGHTS and the configured weight."""
    weights = sorted({*DIRECT_WEIGHTS, model.cfg.direct_weight})
    return {w: m["masked"] for w, m in evaluate_mixtures(model, split, "valid", weights, unmasked=False).items()}


def validate(model: G2RecModel, split: LooSplit) -> tuple[dict[str, float], float | None]:
    """Validation metrics (history excluded) at the direct-head weight that would be chosen now
    (the best of mixture_search on NDCG@10), and that weight; None when the model has no mixture
    to choose. Early stopping and the final choice (training.pipeline) use the same rule."""
    if not searches_mixture(model):
        return evaluate(model, split, "valid", unmasked=False)["masked"], None
    by_weight = mixture_search(model, split)
    best = max(by_weight, key=lambda w: by_weight[w]["ndcg@10"])
    return by_weight[best], best


def training_sequences(train: Interactions, max_len: int, context_len: int = 0) -> list[np.ndarray]:
    """Cut each user's training history into windows of max_len+1 items, newest first, so every
    transition is a target exactly once (consecutive windows overlap by one input item); each
    window is preceded by up to context_len older items (the model's context)."""
    out = []
    for u in range(train.n_users):
        h = train.history(u)
        end = len(h)
        while end >= 2:
            start = max(0, end - max_len - 1)
            out.append(h[max(0, start - context_len) : end])
            end -= max_len
    return out


def mean_targets(seqs: list[np.ndarray], max_len: int, batch_size: int) -> float:
    """Training targets per batch over an epoch of `seqs` (each window's items but its first; the
    context before it is input only): the scale batch_loss's target weighting divides by."""
    return sum(min(len(s), max_len + 1) - 1 for s in seqs) / -(-len(seqs) // batch_size)


def length_batches(seqs: list[np.ndarray], batch_size: int, rng: np.random.Generator, window: int | None = None):
    """Shuffled batches of similar length (little padding), each (B, T+1). window: sort by the
    last `window` items only (the transformer's tokens; older context is summarised cheaply)."""
    order = np.argsort([min(len(s), window or len(s)) + rng.random() for s in seqs], kind="stable")
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
    window = batch[:, -model.cfg.max_len - 1 :]  # the targets; items before it are context only
    return loss * ((window[:, :-1] > 0).sum() / mean_targets)


def world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _BatchLoss(nn.Module):
    """batch_loss as a module's forward, so DistributedDataParallel can wrap it (DDP hooks the
    gradients of what its module's forward computes; model.loss is not the model's forward)."""

    def __init__(self, model: G2RecModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor, mean_targets: float | None) -> torch.Tensor:
        return batch_loss(self.model, batch, mean_targets)


def data_parallel(model: G2RecModel) -> nn.Module:
    """The module a training step calls: inside a torch.distributed group of more than one process,
    DistributedDataParallel (gradients averaged over the ranks in backward), else the plain loss."""
    step = _BatchLoss(model)
    if world()[1] == 1:
        return step
    from torch.nn.parallel import DistributedDataParallel

    dev = model.item_emb.weight.device
    # Unused: sampled negatives and the interest head leave some parameters without a gradient in a step.
    return DistributedDataParallel(step, device_ids=[dev] if dev.type == "cuda" else None, find_unused_parameters=True)


def amp_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of training on `device` (None: fp32). Mixed precision is CUDA only."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def train_epoch(step: nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor], mean_targets: float | None,
                dtype: torch.dtype | None = None, scaler=None, on_step=None) -> list[float]:
    """One pass over `batches`, one optimiser step per batch on each rank: in a group of W
    processes rank r takes batches r, r+W, ... (cut to a multiple of W, so every rank steps equally
    often) and DDP averages their gradients. Returns this rank's batch losses."""
    rank, size = world()
    batches = batches[: len(batches) // size * size][rank::size]
    dev = next(step.parameters()).device
    losses = []
    for batch in batches:
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = step(batch.to(dev, non_blocking=True), mean_targets)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if on_step is not None:
            on_step()
        losses.append(loss.item())
    return losses


def _any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is on any (stopping decisions must agree, or a rank hangs)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@torch.no_grad()
def evaluate(model: G2RecModel, split: LooSplit, stage: str, batch_size: int = 256,
             unmasked: bool = True) -> dict[str, dict[str, float]]:
    """Full-ranking metrics on `stage`: {"masked": history excluded, "unmasked": not excluded
    (left out when unmasked=False)}."""
    return _evaluate(model, split, stage, batch_size, [None], unmasked)[None]


@torch.no_grad()
def evaluate_mixtures(model: G2RecModel, split: LooSplit, stage: str, weights: list[float],
                      batch_size: int = 256, unmasked: bool = True) -> dict[float, dict[str, dict[str, float]]]:
    """g2rec mode: `evaluate` for each direct-head weight in one pass (the model encodes once)."""
    if model.cfg.mode != "g2rec":
        raise ValueError(f"mixture weights need a g2rec-mode model, got mode {model.cfg.mode!r}")
    return _evaluate(model, split, stage, batch_size, list(weights), unmasked)


def _evaluate(model: G2RecModel, split: LooSplit, stage: str, batch_size: int, weights: list, unmasked: bool) -> dict:
    """weights: [None] ranks by model.score_probs; else mixes model.prob_parts at each weight.
    Probabilities rank as `score` does (the served graph's numbers, at a fraction of the cost; an
    item whose probability underflows float32 ties at 0, far below any top-k)."""
    was_training = model.training
    model.eval()
    dev = model.item_emb.weight.device
    inputs, targets = split.inputs(stage), split.targets(stage)
    order = np.argsort([len(h) for h in inputs], kind="stable")
    table = model.tilt_exp() if model.fused and weights != [None] else None
    ranks = {w: (np.empty(len(inputs)), np.empty(len(inputs))) for w in weights}  # (masked, unmasked)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        hist = [inputs[j] for j in idx]
        x = torch.from_numpy(pad_left(hist, min(model.cfg.input_len, max(len(h) for h in hist)))).to(dev)
        t = torch.as_tensor(targets[idx])
        parts = [p.float().cpu() for p in (model.prob_parts(x, table) if weights != [None] else [model.score_probs(x)])]

        def batch_ranks() -> dict:
            if weights == [None]:
                return {None: target_ranks(parts[0], t, None)}
            return mixture_ranks(*parts, t, weights)

        if unmasked:
            for w, r in batch_ranks().items():
                ranks[w][1][idx] = r.numpy()
        # The history once per batch, not once per weight: an excluded item is -inf in every part,
        # so in every positive mixture of them.
        for p in parts:
            exclude_seen(p, hist)
        for w, r in batch_ranks().items():
            ranks[w][0][idx] = r.numpy()
    model.train(was_training)
    return {w: {"masked": metrics_from_ranks(m), **({"unmasked": metrics_from_ranks(u)} if unmasked else {})}
            for w, (m, u) in ranks.items()}


def mixture_ranks(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, weights: list[float],
                  cap: int = max(KS)) -> dict[float, torch.Tensor]:
    """For each w, the ranks target_ranks(mix_probs(a, b, w), targets, None) gives where they are
    below `cap`, and a rank of at least `cap` where they are not (metrics_from_ranks reads no
    deeper than KS's largest k). a, b: (B, N+1) probabilities. An item ahead of the target in both
    a and b is ahead of it in every mixture, so a row with `cap` such items is out of every top-cap
    and only the other rows are mixed, once per weight (validation mixes 8 weights).

    >>> a, b, t = torch.rand(4, 50), torch.rand(4, 50), torch.tensor([3, 7, 1, 9])
    >>> fast, ref = mixture_ranks(a, b, t, [0.0, 0.9], cap=10), {w: target_ranks(mix_probs(a, b, w), t, None) for w in (0.0, 0.9)}
    >>> all(torch.equal(fast[w] < 10, ref[w] < 10) and torch.equal(fast[w][ref[w] < 10], ref[w][ref[w] < 10]) for w in ref)
    True
    """
    n_items = a.shape[1] - 1
    ta, tb = a.gather(1, targets.view(-1, 1)), b.gather(1, targets.view(-1, 1))  # (B, 1)
    surely = ((a > ta) & (b > tb)).sum(1)  # (B,) ahead in every mixture: a lower bound of each rank
    todo = (surely < cap).nonzero().squeeze(1)
    a, b, targets = a[todo], b[todo], targets[todo]
    out = {}
    for w in weights:
        r = torch.where(torch.isinf(mix_probs(ta, tb, w)).squeeze(1), n_items, surely)
        r[todo] = target_ranks(mix_probs(a, b, w), targets, None)
        out[w] = r
    return out


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
    """Adam on all next-item targets; early stopping on validation NDCG@10 (history excluded; in
    g2rec mode at the mixture weight that would be chosen, `validate`), scored with the moving average of the weights when cfg.ema > 0 (it smooths the step-to-step
    noise that otherwise makes validation swing). Leaves the model holding its best-validation
    weights, on the CPU. Trains on cfg.device (mixed precision on CUDA, see TrainConfig); inside a
    torch.distributed group each rank trains on its share of the batches (train_epoch) and every
    rank validates the whole split, so all stop together."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = pick_device(cfg.device)
    model.to(dev)
    dtype = amp_dtype(dev, cfg.precision)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    seqs = training_sequences(split.train, model.cfg.max_len, model.cfg.context_len)
    per_batch = mean_targets(seqs, model.cfg.max_len, cfg.batch_size)
    step = data_parallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    avg = [p.detach().clone() for p in params] if cfg.ema > 0 else None
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    curve: list[dict] = []
    start, cpu_start = time.time(), time.process_time()
    epoch = 0
    if cfg.validate_start:
        model.eval()
        valid, weight = validate(model, split)
        best, best_state, best_valid = valid["ndcg@10"], copy.deepcopy(model.state_dict()), valid
        curve.append({"epoch": 0, "loss": None, "valid_ndcg@10": valid["ndcg@10"],
                      **({"direct_weight": weight} if weight is not None else {}), "seconds": time.time() - start})
        log.info("start: valid ndcg@10 %.4f recall@10 %.4f", valid["ndcg@10"], valid["recall@10"])
    bar = tqdm(total=cfg.epochs, disable=not cfg.progress, desc=f"train {model.cfg.mode}", unit="ep")
    for epoch in range(1, cfg.epochs + 1):
        model.train()

        def average() -> None:
            with torch.no_grad():
                torch._foreach_lerp_(avg, params, 1.0 - cfg.ema)

        losses = train_epoch(step, opt, list(length_batches(seqs, cfg.batch_size, rng, model.cfg.max_len + 1)),
                             per_batch if cfg.target_weighting else None, dtype, scaler,
                             average if avg is not None else None)
        bar.update(1)
        used = time.time() - start if cfg.clock == "wall" else time.process_time() - cpu_start
        out_of_time = _any_rank(used > cfg.max_minutes * 60)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_time:
            with _weights(model, avg):
                valid, weight = validate(model, split)
                state = copy.deepcopy(model.state_dict()) if valid["ndcg@10"] > best else None
            curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "valid_ndcg@10": valid["ndcg@10"],
                          **({"direct_weight": weight} if weight is not None else {}),
                          "seconds": time.time() - start})
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
    model.to("cpu")
    return FitResult(best_epoch, best_valid, time.time() - start, epoch, curve, time.process_time() - cpu_start)
