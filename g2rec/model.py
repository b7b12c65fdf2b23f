"""Generative sequential recommender: a causal transformer over items, or over items with their
interests (G2Rec). One model; `mode="items"` is the SASRec-style ablation.

G2Rec has two token layouts. "interleaved" (the specification's): alternating interest and item
tokens, and an item head conditioned on an interest token. "fused": one token per item, the item's
interest profile added to its embedding (so a sequence is as long as items mode's), and the item
head conditioned on an interest k by an additive tilt t_k of the query:
P(item | h, k) = softmax_item((h + t_k) . e_item). The fused layout is trained as it is used:
besides the direct head and the interest head, its loss is the negative log of the top-B mixture
sum_k P(k | h) P(next item | h, k) that inference ranks with (bench/README.md has the comparison).

Training (`loss`): items mode predicts the next item at every position (full or sampled softmax).
G2Rec mode, interleaved layout, on P(i_1), i_1, ..., P(i_T), i_T, P(i_T+1): at an interest token the target is its item
(item head), at an item token the target is the next item's interest profile (interest head) and,
when direct_weight > 0, also the next item itself (direct head); each term is its own mean.
Inference (`score`): P(item | h) = sum over the top-B interests k of P(k | h) * P(item | h, k),
mixed with the direct head's P(item | h) at weight direct_weight.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from g2rec.errors import ConfigError
from g2rec.tokenize import INTEREST, ITEM, N_TOKEN_KINDS, PAD, TokenBatch, append_interests, interleave

MODES = ("items", "g2rec")
LAYOUTS = ("interleaved", "fused")


@dataclass(frozen=True)
class ModelConfig:
    n_items: int = 0  # N; the pipeline sets it from the data (a model needs N >= 1)
    max_len: int = 50  # items of history
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.3
    mode: str = "items"
    n_clusters: int = 0  # K (g2rec mode); the pipeline sets it from the clustering
    rho: int = 1  # profile sparsity (g2rec mode); likewise
    top_b: int = 4  # interests marginalised at inference
    interest_loss_weight: float = 1.0
    hard_tokens: bool = False  # embed interest tokens by their primary cluster only
    input_norm: bool = True  # LayerNorm on the summed input embeddings (as SASRec does)
    positions: str = "end"  # pair index counted from the most recent ("end") or the oldest ("start") token
    direct_weight: float = 0.0  # g2rec: weight of the direct next-item head (trained at item tokens) in the score mixture
    layout: str = "interleaved"  # g2rec: "interleaved" interest/item tokens, or "fused" (one token per item)
    mixture_loss_weight: float = 1.0  # g2rec fused: weight of the top-B mixture's loss
    mixture_positions: int = 2048  # g2rec fused: positions per batch (sampled) that train the mixture
    mixture_negatives: int = 0  # g2rec fused, sampled softmax: the mixture's own negatives, the first of the batch's (0: all)
    # g2rec fused: up to context_len items older than the max_len window, summarised as
    # context_tokens interest tokens (the top interests of their mean profile) before the window.
    context_len: int = 0
    context_tokens: int = 1
    semantic_items: bool = False  # g2rec: an item's vector adds its profile-weighted cluster embeddings (input and output)
    n_negatives: int = 0  # 0: full softmax; else sampled softmax with this many shared negatives
    # Label smoothing of the next-item loss (items mode, and the fused layout's direct head): this
    # share of the target moves to the catalogue ("items", uniform) or to the items of the target's
    # interests ("interests", g2rec: membership-weighted).
    label_smoothing: float = 0.0
    smooth_to: str = "items"
    neg_power: float = 0.0  # negatives ~ count^neg_power (0: uniform), with logQ correction

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.positions not in ("end", "start"):
            raise ConfigError(f"positions must be 'end' or 'start', got {self.positions!r}")
        if not 0.0 <= self.direct_weight < 1.0:
            raise ConfigError(f"direct_weight must lie in [0, 1), got {self.direct_weight}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.context_len and (self.mode, self.layout) != ("g2rec", "fused"):
            raise ConfigError(f"context_len={self.context_len} needs mode='g2rec' with layout='fused'")
        if self.semantic_items and self.mode != "g2rec":
            raise ConfigError("semantic_items needs mode='g2rec' (items mode has no interest profiles)")
        if not 0.0 <= self.label_smoothing < 1.0 or self.smooth_to not in ("items", "interests"):
            raise ConfigError(f"label_smoothing must lie in [0, 1) and smooth_to be 'items' or 'interests', "
                              f"got {self.label_smoothing}, {self.smooth_to!r}")
        if self.label_smoothing and self.smooth_to == "interests" and self.mode != "g2rec":
            raise ConfigError("smooth_to='interests' needs mode='g2rec' (items mode has no interest profiles)")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def input_len(self) -> int:
        """The longest history the model reads: the window and the context before it."""
        return self.max_len + self.context_len


def mix(via_interest: torch.Tensor, direct: torch.Tensor, direct_weight: float) -> torch.Tensor:
    """log((1 - w) P_interest + w P_direct) from the two log-probabilities; w = 0 is the pure
    interest-marginalised score."""
    if direct_weight <= 0:
        return via_interest
    return torch.logaddexp(via_interest + math.log(1 - direct_weight), direct + math.log(direct_weight))


def mix_probs(via_interest: torch.Tensor, direct: torch.Tensor, direct_weight: float) -> torch.Tensor:
    """(1 - w) P_interest + w P_direct: `mix` in probability space, as serving and validation rank."""
    if direct_weight <= 0:
        return via_interest
    return (1 - direct_weight) * via_interest + direct_weight * direct


def pair_dots(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """a (P, S), b (K, S), idx (P, J) -> (P, J): a[p] . b[idx[p, j]], as a sampled dense-dense
    matmul that computes those P*J dot products only (a CSR pattern of J sorted columns per row).

    >>> a, b, idx = torch.randn(3, 5), torch.randn(4, 5), torch.tensor([[2, 0], [1, 3], [3, 0]])
    >>> torch.allclose(pair_dots(a, b, idx), (a.unsqueeze(1) * b[idx]).sum(-1), atol=1e-6)
    True
    """
    P, J = idx.shape
    cols, order = idx.sort(1)
    rows = torch.arange(0, P * J + 1, J, device=idx.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta", once per process
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(rows, cols.reshape(-1), a.new_zeros(P * J), (P, b.shape[0]),
                                          check_invariants=False)
    dots = torch.sparse.sampled_addmm(pattern, a, b.t()).values().view(P, J)
    return torch.empty_like(dots).scatter_(1, order, dots)


def pair_weights(c: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """c (P, J) weights of the rows idx (P, J) of a (k, S) table -> the sparse (P, k) matrix W
    with W[p, idx[p, j]] += c[p, j]: W @ table = sum_j c[p, j] table[idx[p, j]] without the
    (P, J, S) gather, and W.t() @ x scatters back into the table's rows.

    >>> c, idx, table = torch.rand(3, 2), torch.tensor([[2, 0], [1, 3], [3, 0]]), torch.randn(4, 5)
    >>> ref = (c.unsqueeze(-1) * table[idx]).sum(1)
    >>> torch.allclose(torch.sparse.mm(pair_weights(c, idx, 4), table), ref, atol=1e-6)
    True
    """
    P, J = idx.shape
    rows = torch.arange(P, device=idx.device).repeat_interleave(J)
    return torch.sparse_coo_tensor(torch.stack([rows, idx.reshape(-1)]), c.reshape(-1), (P, k), check_invariants=False).coalesce()


class LogMatmulExpAt(torch.autograd.Function):
    """log sum_s exp(a[p, s] + b[idx[p, j], s]), a (P, S), b (K, S), idx (P, J) -> (P, J): for
    each row of a, a logsumexp with J chosen rows of b, as dot products of exp(a - row max) and
    exp(b - row max). Forward and backward touch the J chosen pairs only (pair_dots, then two
    sparse products with pair_weights), so they cost P*J*S, not the P*K*S of a dense matmul and
    its two gradient matmuls (bench/README.md). Computed in float32; a sum underflows only where
    both rows spread over more than ~87 nats (the floor keeps it finite).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with torch.autocast(a.device.type, enabled=False):
            ma, mb = a.detach().float().amax(1, keepdim=True), b.detach().float().amax(1, keepdim=True)
            ea, eb = (a.float() - ma).exp(), (b.float() - mb).exp()  # (P, S), (K, S)
            s = pair_dots(ea, eb, idx).clamp_min(torch.finfo(torch.float32).tiny)  # (P, J)
        ctx.save_for_backward(ea, eb, idx, s)
        ctx.dtypes = (a.dtype, b.dtype)
        return s.log() + ma + mb.squeeze(1)[idx]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # d out[p, j] / d a[p, s] = ea[p, s] eb[k, s] / s[p, j] with k = idx[p, j]; likewise for b.
        ea, eb, idx, s = ctx.saved_tensors
        w = pair_weights(grad.float() / s, idx, eb.shape[0])  # (P, K), J per row
        ga = (ea * torch.sparse.mm(w, eb)).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gb = (eb * torch.sparse.mm(w.t().coalesce(), ea)).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return ga, gb, None


def log_matmul_exp_at(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log sum_s exp(a[p, s] + b[idx[p, j], s]) -> (P, J); see LogMatmulExpAt.

    >>> a, b, idx = torch.randn(3, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64), torch.tensor([[0, 2], [1, 3], [3, 0]])
    >>> ref = (a.unsqueeze(1) + b[idx]).logsumexp(-1)
    >>> torch.allclose(log_matmul_exp_at(a, b, idx).double(), ref, atol=1e-5)
    True
    """
    return LogMatmulExpAt.apply(a, b, idx)


def tilted_mixture(e: torch.Tensor, table: torch.Tensor, top_k: torch.Tensor, prior: torch.Tensor,
                   reference: bool = False) -> torch.Tensor:
    """The fused layout's interest path in probability space: e (B, N) = exp(base - row max),
    table (K, N) = exp(T_k - row max), top_k and prior (B, Bk) -> (B, N)
    sum_j prior[j] softmax(base + T_kj) = e * sum_j (prior[j] / z_j) table[k_j], z_j = e . table[k_j].
    Eager, by pair_dots and pair_weights (B*Bk*N work, no (B, Bk, N) gather); when traced for
    export (sparse ops do not export to ONNX) or with reference, the gathered rows.

    >>> e, table, top_k, prior = torch.rand(3, 6), torch.rand(4, 6), torch.tensor([[0, 2], [3, 1], [1, 0]]), torch.rand(3, 2)
    >>> torch.allclose(tilted_mixture(e, table, top_k, prior), tilted_mixture(e, table, top_k, prior, reference=True), atol=1e-6)
    True
    """
    if reference or torch.compiler.is_compiling():
        x = table[top_k]  # (B, Bk, N)
        coef = prior / (x @ e.unsqueeze(-1)).squeeze(-1)  # prior / normaliser, (B, Bk)
        return e * (coef.unsqueeze(1) @ x).squeeze(1)
    coef = prior / pair_dots(e, table, top_k)
    return e * torch.sparse.mm(pair_weights(coef, top_k, table.shape[0]), table)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, C) -> q, k, v, each (B, H, L, D)."""
        B, L, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        return tuple(t.view(B, L, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (B, H, Lq, D), k and v (B, H, Lk, D), mask (B, 1, Lq, Lk) -> (B, Lq, C)."""
        B, H, Lq, D = q.shape
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, Lq, H * D)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.heads(x), mask)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


def _cat_tokens(a: TokenBatch, b: TokenBatch) -> TokenBatch:
    """Two token batches side by side, (B, La) and (B, Lb) -> (B, La + Lb)."""
    return TokenBatch(*(torch.cat([x, y], 1) for x, y in zip((a.kind, a.item, a.clusters, a.weights, a.pos),
                                                            (b.kind, b.item, b.clusters, b.weights, b.pos))))


class G2RecModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.n_items < 1:
            raise ConfigError(f"n_items={cfg.n_items}: a model needs a catalogue of at least one item")
        if cfg.mode == "g2rec" and (cfg.n_clusters < 1 or cfg.rho < 1):
            raise ConfigError(f"g2rec mode needs n_clusters >= 1 and rho >= 1, got {cfg.n_clusters}, {cfg.rho}")
        self.cfg = cfg
        self.fused = cfg.mode == "g2rec" and cfg.layout == "fused"
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, cfg.d_model)
        self.kind_emb = nn.Embedding(N_TOKEN_KINDS, cfg.d_model)
        self.ln_in = nn.LayerNorm(cfg.d_model) if cfg.input_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        if cfg.mode == "g2rec":
            self.cluster_emb = nn.Embedding(cfg.n_clusters, cfg.d_model)
            if cfg.layout == "fused":
                self.tilt_emb = nn.Embedding(cfg.n_clusters, cfg.d_model)  # t_k, (K, C)
            # Profile tables (N+1, rho); filled by set_profiles, saved with the model.
            self.register_buffer("prof_clusters", torch.zeros(cfg.n_items + 1, cfg.rho, dtype=torch.long))
            self.register_buffer("prof_weights", torch.zeros(cfg.n_items + 1, cfg.rho))
        # Proposal distribution of sampled negatives (training only); uniform until set_item_counts.
        self.register_buffer("neg_q", torch.ones(cfg.n_items + 1).index_fill(0, torch.tensor([0]), 0.0), persistent=False)
        self.apply(self._init)

    @property
    def _interleaved(self) -> bool:
        return self.cfg.mode == "g2rec" and not self.fused

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def set_profiles(self, clusters, weights) -> None:
        """clusters (N+1, rho) int, weights (N+1, rho) float: the item-interest profiles."""
        clusters = torch.as_tensor(clusters, dtype=torch.long)
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if clusters.shape != self.prof_clusters.shape or weights.shape != self.prof_weights.shape:
            raise ValueError(f"profiles must be {tuple(self.prof_clusters.shape)}, got {tuple(clusters.shape)}")
        if self.cfg.hard_tokens:
            weights = torch.zeros_like(weights)
            weights[:, 0] = 1.0
            weights[0] = 0.0
        self.prof_clusters.copy_(clusters)
        self.prof_weights.copy_(weights)

    def set_item_counts(self, counts) -> None:
        """(N+1,) training counts per item -> the proposal q ∝ count^neg_power of sampled negatives."""
        q = torch.as_tensor(counts, dtype=torch.float32).clamp(min=1).pow(self.cfg.neg_power)
        q[0] = 0.0
        self.neg_q.copy_(q / q.sum())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- item vectors ------------------------------------------------------------------------
    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> (..., C). With semantic_items an item is its id embedding plus its profile's
        weighted cluster embeddings, so rarely seen items share what their interests learned."""
        v = self.item_emb(ids)
        if self.cfg.semantic_items:
            v = v + (self.cluster_emb(self.prof_clusters[ids]) * self.prof_weights[ids].unsqueeze(-1)).sum(-2)
        return v

    def all_item_vectors(self) -> torch.Tensor:
        """(N+1, C): every item's vector, row 0 = padding."""
        if not self.cfg.semantic_items:
            return self.item_emb.weight
        return self.item_vectors(torch.arange(self.cfg.n_items + 1, device=self.item_emb.weight.device))

    # ---- encoding ----------------------------------------------------------------------------
    def _item_tokens(self, items: torch.Tensor) -> TokenBatch:
        """(B, T) items -> one token per item; in the fused layout each carries its item's profile,
        and with context_len > 0 the items before the last max_len become context_tokens tokens
        in front (B, S + min(T, max_len))."""
        if self.cfg.context_len:
            items, older = items[:, -self.cfg.max_len :], items[:, : -self.cfg.max_len]
            return _cat_tokens(self._context_tokens(older[:, -self.cfg.context_len :]), self._item_tokens_of(items))
        return self._item_tokens_of(items)

    def _context_tokens(self, older: torch.Tensor) -> TokenBatch:
        """(B, To) older items (0 = padding) -> (B, S) interest tokens: the top S*rho interests of
        their summed profiles, rho per token, each token's weights renormalised; PAD when none."""
        B, S, rho = older.shape[0], self.cfg.context_tokens, self.cfg.rho
        mass = torch.zeros(B, self.cfg.n_clusters, device=older.device).scatter_add(
            1, self.prof_clusters[older].flatten(1), self.prof_weights[older].flatten(1))  # (B, K)
        w, k = mass.topk(min(S * rho, self.cfg.n_clusters), dim=-1)
        w, k = F.pad(w, (0, S * rho - w.shape[1])).view(B, S, rho), F.pad(k, (0, S * rho - k.shape[1])).view(B, S, rho)
        total = w.sum(-1, keepdim=True)  # (B, S, 1)
        kind = torch.where(total.squeeze(-1) > 0, INTEREST, PAD)  # (B, S)
        zeros = torch.zeros_like(kind)
        return TokenBatch(kind, zeros, k, w / total.clamp(min=1e-12), zeros + self.cfg.max_len)

    def _item_tokens_of(self, items: torch.Tensor) -> TokenBatch:
        B, T = items.shape
        kind = torch.where(items > 0, ITEM, PAD)
        pos = (T - 1 - torch.arange(T, device=items.device)).expand(B, T)
        if self.fused:
            return TokenBatch(kind, items, self.prof_clusters[items], self.prof_weights[items], pos)
        zeros = torch.zeros(B, T, 1, dtype=torch.long, device=items.device)
        return TokenBatch(kind, items, zeros, zeros.float(), pos)

    def encode(self, tok: TokenBatch, n_tail: int = 0) -> torch.Tensor:
        """Tokens -> hidden states (B, L, C). The last n_tail tokens are alternatives for one next
        position: each sees every token before the tail and itself, never a sibling, and all share
        the first one's position, so one pass does the work of n_tail passes over the history."""
        L = tok.kind.shape[1]
        idx = torch.arange(L, device=tok.kind.device)
        tail = idx >= L - n_tail  # (L,)
        x = self._embed(tok, self._positions(tok, tail))
        mask = self._attn_mask(tok.kind != PAD, tail)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    @staticmethod
    def _attn_mask(valid: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        """valid (B, L), tail (L,) -> (B, 1, L, L) causal mask; no key is a sibling in the tail."""
        idx = torch.arange(tail.shape[0], device=tail.device)
        q, k = idx.unsqueeze(1), idx.unsqueeze(0)
        eye = q == k
        causal = (k <= q) & (eye | ~tail.unsqueeze(0))  # (L, L)
        # A padding query still attends to itself so no softmax row is empty.
        return (causal & (valid.unsqueeze(1) | eye)).unsqueeze(1)

    def _positions(self, tok: TokenBatch, tail: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L), tail (L,) bool: the tail's alternatives -> each token's pair index (B, L)."""
        if self.cfg.positions == "end":
            return tok.pos
        # Each pair opens with its interest token (interleaved g2rec) or is a single item token.
        opens = (tok.kind == (INTEREST if self._interleaved else ITEM)) & ~tail
        return (opens.long().cumsum(1) - 1 + tail.long()).clamp(min=0)

    def _embed(self, tok: TokenBatch, pos: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, L) at pair indices pos (B, L) -> input vectors (B, L, C). soft (B, L, C): the
        interest tokens' vectors when the caller has them already (else from tok.clusters, weights)."""
        x = self.item_vectors(tok.item) * (tok.kind == ITEM).unsqueeze(-1)  # (B, L, C)
        if self.cfg.mode == "g2rec":
            if soft is None:
                soft = (self.cluster_emb(tok.clusters) * tok.weights.unsqueeze(-1)).sum(2)  # (B, L, C)
            x = x + soft * (tok.kind == (INTEREST if self._interleaved else ITEM)).unsqueeze(-1)
        x = x + self.pos_emb(pos.clamp(max=self.cfg.max_len)) + self.kind_emb(tok.kind)
        return self.drop(self.ln_in(x))

    def item_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(P, C) -> (P, N+1); the padding item never wins."""
        logits = h @ self.all_item_vectors().t()
        return logits.index_fill(-1, torch.zeros(1, dtype=torch.long, device=h.device), -torch.inf)

    # ---- training ----------------------------------------------------------------------------
    def item_loss(self, h: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of targets y (P,) given hidden states h (P, C): full softmax, or a sampled
        softmax over n_negatives items drawn from q and shared by the batch, with the logQ correction
        (every logit minus log q) so the estimate targets the full softmax; accidental hits masked."""
        logits, target, _ = self._candidate_logits(h, y)
        return F.cross_entropy(logits, target, reduction=reduction)

    def _candidate_logits(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (P, C), targets y (P,) -> the logits item_loss takes its cross-entropy of, (P, M); the
        target's column (P,); the candidates' vectors (M, C), row j of column j (full softmax:
        every item, M = N+1; sampled: row 0 is a placeholder for each row's own target)."""
        if self.cfg.n_negatives <= 0:
            vectors = self.all_item_vectors()
            return self.item_logits(h), y, vectors
        neg = torch.multinomial(self.neg_q, self.cfg.n_negatives, replacement=True)  # (S,)
        log_q = self.neg_q.log()
        neg_vectors = self.item_vectors(neg)  # (S, C)
        pos_logit = (h * self.item_vectors(y)).sum(-1, keepdim=True) - log_q[y].unsqueeze(1)  # (P, 1)
        neg_logits = h @ neg_vectors.t() - log_q[neg]  # (P, S)
        neg_logits = neg_logits.masked_fill(neg.unsqueeze(0) == y.unsqueeze(1), -torch.inf)
        logits = torch.cat([pos_logit, neg_logits], dim=1)
        return logits, torch.zeros_like(y), torch.cat([torch.zeros_like(neg_vectors[:1]), neg_vectors])

    def next_item_loss(self, h: torch.Tensor, y: torch.Tensor, cand: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> torch.Tensor:
        """item_loss, label-smoothed when cfg.label_smoothing > 0. With logits h·v_j, the cross-entropy
        against (1 - eps)·onehot(y) + eps·q is lse - (1 - eps)·logit_y - eps·h·(Σ_j q_j v_j), so a
        smoothing distribution q costs one vector per target, not a (P, N) product. Under sampled
        softmax the same formula over the candidates has the sampled loss's gradient (its value is off
        by the constant eps·Σ_j q_j log Q_j). q: uniform over items 1..N ("items"), or
        Σ_k w_yk · (the items of interest k, membership-weighted) ("interests").
        cand: (logits, target) from _candidate_logits when the caller has them."""
        eps = self.cfg.label_smoothing
        logits, target = cand if cand is not None else self._candidate_logits(h, y)[:2]
        if eps == 0:
            return F.cross_entropy(logits, target)
        vectors = self.all_item_vectors()  # (N+1, C)
        if self.cfg.smooth_to == "items":
            centre = vectors[1:].mean(0).expand_as(h)  # (P, C)
        else:
            c, w = self.prof_clusters[1:].reshape(-1), self.prof_weights[1:].reshape(-1)  # (N·rho,)
            rows = vectors[1:].repeat_interleave(self.cfg.rho, dim=0) * w.unsqueeze(1)  # (N·rho, C)
            k = self.cfg.n_clusters
            mass = torch.zeros(k, device=h.device, dtype=w.dtype).index_add_(0, c, w).clamp_min(1e-12)
            means = torch.zeros(k, h.shape[1], device=h.device, dtype=rows.dtype).index_add_(0, c, rows) / mass.unsqueeze(1)
            centre = (means[self.prof_clusters[y]] * self.prof_weights[y].unsqueeze(-1)).sum(1)  # (P, C)
        pos = logits.gather(1, target.view(-1, 1)).squeeze(1)
        return (logits.logsumexp(-1) - (1 - eps) * pos - eps * (h * centre).sum(-1)).mean()

    def mixture_loss(self, h: torch.Tensor, y: torch.Tensor, logp_k: torch.Tensor, logits: torch.Tensor,
                     target: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Fused layout: the mean of -log sum over the top-B interests k of P(k | h) P(y | h, k), the
        prior renormalised over the top-B as `score` does, P(. | h, k) the softmax of the candidate
        logits (from _candidate_logits, shared with the direct head) tilted by t_k . e.
        h (P, C), y (P,), logp_k (P, K), logits (P, M), target (P,), vectors (M, C)."""
        top_v, top_k = logp_k.topk(min(self.cfg.top_b, self.cfg.n_clusters), dim=-1)  # (P, Bk)
        prior = F.log_softmax(top_v, dim=-1)
        t_y = (self.tilt_emb(top_k) * self.item_vectors(y).unsqueeze(1)).sum(-1)  # (P, Bk)
        pos = logits.gather(1, target.view(-1, 1)) + t_y  # the target's tilted logit, (P, Bk)
        # The normaliser of the top-B tilts as one matmul in exp space, its gradient through the
        # top-B pairs only (a (P, Bk, M) tensor of tilted logits cost 3x more; bench/README.md).
        sampled = self.cfg.n_negatives > 0  # column 0 holds each row's own target: added apart
        norm = log_matmul_exp_at(logits[:, 1:] if sampled else logits,
                                 self.tilt_emb.weight @ (vectors[1:] if sampled else vectors).t(), top_k)
        if sampled:
            norm = torch.logaddexp(pos, norm)
        return -(prior + pos - norm).logsumexp(-1).mean()

    def loss(self, seqs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """seqs: (B, T+1) left-padded item sequences; every next item is a target."""
        if self.cfg.mode == "items":
            x, y = seqs[:, :-1], seqs[:, 1:]
            h = self.encode(self._item_tokens(x))  # (B, T, C)
            valid = x > 0
            item_loss = self.next_item_loss(h[valid], y[valid])
            return item_loss, {"item": item_loss.item()}
        if self.fused:
            return self._fused_loss(seqs)
        tok = interleave(seqs, self.prof_clusters, self.prof_weights)
        tok = TokenBatch(*(t[:, :-1] for t in (tok.kind, tok.item, tok.clusters, tok.weights, tok.pos)))
        h = self.encode(tok)  # (B, 2T+1, C)
        at_interest = tok.kind == INTEREST
        h_items, y_items = h[at_interest], tok.item[at_interest]  # at an interest token: its own item
        # At item token t the target is the interest token t+1 (always present: the last token is one).
        at_item = (tok.kind == ITEM)[:, :-1]
        h_at_item = h[:, :-1][at_item]  # (P, C)
        logp = F.log_softmax(h_at_item @ self.cluster_emb.weight.t(), dim=-1)  # (P, K)
        interest_loss = -(logp.gather(1, tok.clusters[:, 1:][at_item]) * tok.weights[:, 1:][at_item]).sum(1).mean()
        total = self.cfg.interest_loss_weight * interest_loss
        parts = {"interest": interest_loss.item()}
        if self.cfg.direct_weight > 0:
            # Also the next item straight from each item token (the items-mode objective), as its own
            # mean so it keeps items mode's full weight; one sampled softmax call serves both
            # objectives, so the negatives are shared.
            n = len(y_items)
            per_row = self.item_loss(torch.cat([h_items, h_at_item]), torch.cat([y_items, seqs[:, 1:][seqs[:, :-1] > 0]]), "none")
            item_loss, direct_loss = per_row[:n].mean(), per_row[n:].mean()
            total = total + direct_loss
            parts["direct"] = direct_loss.item()
        else:
            item_loss = self.item_loss(h_items, y_items)
        parts["item"] = item_loss.item()
        return total + item_loss, parts

    def _fused_loss(self, seqs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Fused layout, seqs (B, To + T+1): To older items (context, with context_len) before a
        window of T+1. At every item token of the window the targets are the next item's profile
        (interest head), the next item (direct head) and, at up to mixture_positions sampled
        positions, the top-B mixture inference ranks with; each term its own mean."""
        window = seqs[:, -self.cfg.max_len - 1 :]
        x, y = window[:, :-1], window[:, 1:]
        # The inputs seqs[:, :-1] end with x; _item_tokens puts what comes before x in context tokens.
        # A batch with nothing before its window goes without them (leading padding changes no
        # score); not in _item_tokens, where the branch would fix the exported graph's shape.
        inputs = seqs[:, :-1]
        tok = self._item_tokens(inputs) if inputs.shape[1] > self.cfg.max_len else self._item_tokens_of(inputs)
        h = self.encode(tok)[:, -x.shape[1] :]  # (B, T, C)
        valid = x > 0
        h, y = h[valid], y[valid]  # (P, C), (P,)
        logp_k = F.log_softmax(h @ self.cluster_emb.weight.t(), dim=-1)  # (P, K)
        interest_loss = -(logp_k.gather(1, self.prof_clusters[y]) * self.prof_weights[y]).sum(1).mean()
        logits, target, vectors = self._candidate_logits(h, y)
        direct_loss = self.next_item_loss(h, y, (logits, target))
        rows = torch.randperm(len(y), device=y.device)[: self.cfg.mixture_positions]
        cols = 1 + self.cfg.mixture_negatives if self.cfg.n_negatives > 0 and self.cfg.mixture_negatives > 0 else None
        mixture_loss = self.mixture_loss(h[rows], y[rows], logp_k[rows], logits[rows, :cols], target[rows], vectors[:cols])
        total = self.cfg.interest_loss_weight * interest_loss + direct_loss + self.cfg.mixture_loss_weight * mixture_loss
        return total, {"interest": interest_loss.item(), "direct": direct_loss.item(), "mixture": mixture_loss.item()}

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, history: torch.Tensor) -> torch.Tensor:
        """history: (B, T) left-padded item ids, T <= max_len -> (B, N+1) log P(next item)."""
        if self.cfg.mode == "items":
            h = self.encode(self._item_tokens(history))[:, -1]  # (B, C)
            return F.log_softmax(self.item_logits(h), dim=-1)
        via_interest, direct = self.score_parts(history)
        return mix(via_interest, direct, self.cfg.direct_weight)

    @torch.no_grad()
    def score_parts(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g2rec mode: (B, T) -> the two (B, N+1) log-probabilities that `score` mixes: the sum
        over the top-B interests k of P(k | h) P(item | h, k), and the direct head's P(item | h).
        Interleaved: two passes, the history, then the history followed by its top-B interest tokens
        as one tail. Fused: one pass; each interest tilts the last hidden state."""
        if self.fused:
            h = self.encode(self._item_tokens(history))[:, -1]  # (B, C)
            top_v, top_k = self._top_interests(h)
            base = self.item_logits(h)  # (B, N+1)
            tilted = base.unsqueeze(1) + self.tilt_emb(top_k) @ self.all_item_vectors().t()  # (B, Bk, N+1)
            via_interest = torch.logsumexp(F.log_softmax(top_v, -1).unsqueeze(-1) + F.log_softmax(tilted, -1), 1)
            return via_interest, F.log_softmax(base, dim=-1)
        tok = interleave(history, self.prof_clusters, self.prof_weights, last_pos=1)
        h = self.encode(tok)[:, -1]  # (B, C): the last item token
        top_v, top_k = self._top_interests(h)  # (B, Bk)
        Bk = top_k.shape[1]
        h2 = self.encode(append_interests(tok, top_k), n_tail=Bk)[:, -Bk:]  # (B, Bk, C)
        return self._mix_interests(h, top_v, h2)

    @torch.no_grad()
    def score_parts_reference(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """score_parts the literal way, one pass per interest (B+1 passes; fused: one item-logit row
        per interest); the parity reference."""
        B = history.shape[0]
        if self.fused:
            h = self.encode(self._item_tokens(history))[:, -1]
            top_v, top_k = self._top_interests(h)
            prior = F.log_softmax(top_v, dim=-1)
            parts = [prior[:, b : b + 1] + F.log_softmax(self.item_logits(h + self.tilt_emb(top_k[:, b])), -1)
                     for b in range(top_k.shape[1])]
            return torch.logsumexp(torch.stack(parts), 0), F.log_softmax(self.item_logits(h), dim=-1)
        tok = interleave(history, self.prof_clusters, self.prof_weights, last_pos=1)
        h = self.encode(tok)[:, -1]
        top_v, top_k = self._top_interests(h)
        Bk = top_k.shape[1]
        rep = TokenBatch(*(t.repeat_interleave(Bk, dim=0) for t in (tok.kind, tok.item, tok.clusters, tok.weights, tok.pos)))
        h2 = self.encode(append_interests(rep, top_k.reshape(-1, 1)))[:, -1]  # (B*Bk, C)
        return self._mix_interests(h, top_v, h2.view(B, Bk, -1))

    def _top_interests(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C) -> log P(k | h) and ids of the top-B interests, each (B, Bk)."""
        logp_k = F.log_softmax(h @ self.cluster_emb.weight.t(), dim=-1)  # (B, K)
        return logp_k.topk(min(self.cfg.top_b, self.cfg.n_clusters), dim=-1)

    def _mix_interests(self, h: torch.Tensor, top_v: torch.Tensor, h2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, C), top_v (B, Bk), h2 (B, Bk, C) at the appended interest tokens -> score_parts."""
        prior = F.log_softmax(top_v, dim=-1)  # renormalised over the top-B
        item_logp = F.log_softmax(self.item_logits(h2), dim=-1)  # (B, Bk, N+1)
        via_interest = torch.logsumexp(prior.unsqueeze(-1) + item_logp, dim=1)  # (B, N+1)
        return via_interest, F.log_softmax(self.item_logits(h), dim=-1)

    # ---- served inference: score's numbers, cheaper -------------------------------------------
    @torch.no_grad()
    def score_probs(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, T) -> (B, N+1) exp(score(history)), column 0 (padding) = 0: the graph serving
        exports. One pass over the history keeps each layer's keys and values and runs the last
        layer for the last token only; interleaved, the top-B interest tails then attend to those
        cached keys (no second pass over the history); fused, a tail is one row of item logits tilted
        by a row of the (K, N) table, factorised so that each user and item costs one exp
        (_prob_rows). The mixture is summed in probability space (no logsumexp over (B, Bk, N+1)).
        Validation ranks with the same numbers. An item whose probability is below float32's
        smallest (about 1e-38; in the fused layout, also when it is that far below the user's best)
        is 0 here, where `score` keeps a finite log."""
        if self.cfg.mode == "items":
            h, _ = self._encode_cached(self._item_tokens(history))
            return F.pad(F.softmax(h @ self.all_item_vectors()[1:].t(), dim=-1), (1, 0))
        return F.pad(mix_probs(*self._prob_rows(history), self.cfg.direct_weight), (1, 0))

    @torch.no_grad()
    def prob_parts(self, history: torch.Tensor, tilt_exp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """g2rec mode: exp of score_parts, (B, T) -> two (B, N+1), column 0 (padding) = 0, by
        score_probs' cheaper path; validation mixes them at each candidate weight. tilt_exp:
        fused, `tilt_exp()` when the caller scores many batches with the same weights."""
        return tuple(F.pad(p, (1, 0)) for p in self._prob_rows(history, tilt_exp))

    def _prob_rows(self, history: torch.Tensor, tilt_exp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """prob_parts without the padding column: two (B, N) over the items 1..N."""
        items = self.all_item_vectors()[1:]  # (N, C)
        if self.fused:
            h, _ = self._encode_cached(self._item_tokens(history))  # (B, C)
            top_v, top_k = self._top_interests(h)  # (B, Bk)
            base = h @ items.t()  # one item MatMul row per user, (B, N)
            # softmax(base + T_k) = E * X_k / (E . X_k), E = exp(base - max), X_k = exp(T_k - max_k):
            # one exp per user and item, the (K, N) table X a constant of the exported graph.
            e = (base - base.amax(-1, keepdim=True)).exp()  # (B, N)
            table = self.tilt_exp() if tilt_exp is None else tilt_exp  # (K, N)
            return tilted_mixture(e, table, top_k, F.softmax(top_v, dim=-1)), e / e.sum(-1, keepdim=True)
        h, h2, top_v = self._interleaved_tails(history)
        prior = F.softmax(top_v, dim=-1)
        return (prior.unsqueeze(1) @ F.softmax(h2 @ items.t(), dim=-1)).squeeze(1), F.softmax(h @ items.t(), dim=-1)

    def tilt_exp(self) -> torch.Tensor:
        """Fused layout: exp(t_k . e_n - max_n t_k . e_n) for every interest k and item 1..N, (K, N)."""
        table = self.tilt_emb.weight @ self.all_item_vectors()[1:].t()
        return (table - table.amax(-1, keepdim=True)).exp()

    def _interleaved_tails(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Interleaved layout, (B, T) -> the last item token's state h (B, C), the top-B interest
        tails' states (B, Bk, C) and the interests' log P(k | h) (B, Bk)."""
        tok = interleave(history, self.prof_clusters, self.prof_weights, last_pos=1)
        h, cache = self._encode_cached(tok)  # (B, C)
        top_v, top_k = self._top_interests(h)  # (B, Bk)
        Bk = top_k.shape[1]
        full = append_interests(tok, top_k)
        L = full.kind.shape[1]
        pos = self._positions(full, torch.arange(L, device=h.device) >= L - Bk)[:, -Bk:]
        x_tail = self._embed(TokenBatch(*(t[:, -Bk:] for t in (full.kind, full.item, full.clusters, full.weights,
                                                               full.pos))), pos)  # (B, Bk, C)
        return h, self._encode_tail(x_tail, cache, tok.kind != PAD), top_v

    def _encode_cached(self, tok: TokenBatch) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Tokens (B, L) -> encode(tok)[:, -1] (B, C) and each layer's keys and values, (B, H, L, D)
        each; the last layer's attention, projection and MLP run for the last token only."""
        L = tok.kind.shape[1]
        no_tail = torch.zeros(L, dtype=torch.bool, device=tok.kind.device)
        # An interest token built by interleave is its item's profile: one (N+1, C) table lookup,
        # not a (B, L, rho, C) gather and sum (onnxruntime folds the table into a constant).
        soft = None
        if self.cfg.mode == "g2rec":
            soft = (self.cluster_emb(self.prof_clusters) * self.prof_weights.unsqueeze(-1)).sum(1)[tok.item]
        x = self._embed(tok, self._positions(tok, no_tail), soft)
        mask = self._attn_mask(tok.kind != PAD, no_tail)
        cache = []
        for i, block in enumerate(self.blocks):
            q, k, v = block.attn.heads(block.ln1(x))
            cache.append((k, v))
            if i == len(self.blocks) - 1:
                q, mask, x = q[:, :, -1:], mask[:, :, -1:], x[:, -1:]
            x = x + block.attn.attend(q, k, v, mask)
            x = x + block.mlp(block.ln2(x))
        return self.ln_f(x[:, -1]), cache

    def _encode_tail(self, x: torch.Tensor, cache: list[tuple[torch.Tensor, torch.Tensor]],
                     valid: torch.Tensor) -> torch.Tensor:
        """Embedded tail tokens x (B, m, C) after a cached history (valid (B, L)) -> (B, m, C), as
        encode(..., n_tail=m) gives them: each sees the valid history tokens and itself."""
        B, m, _ = x.shape
        eye = torch.eye(m, dtype=torch.bool, device=x.device).expand(B, m, m)
        mask = torch.cat([valid.unsqueeze(1).expand(B, m, valid.shape[1]), eye], 2).unsqueeze(1)  # (B, 1, m, L+m)
        for block, (k_hist, v_hist) in zip(self.blocks, cache):
            q, k, v = block.attn.heads(block.ln1(x))
            x = x + block.attn.attend(q, torch.cat([k_hist, k], 2), torch.cat([v_hist, v], 2), mask)
            x = x + block.mlp(block.ln2(x))
        return self.ln_f(x)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """The exported inference graph: (B, T) -> (B, N+1) scores."""
        return self.score(history)
