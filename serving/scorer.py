"""onnxruntime scorer: dense item-id histories -> scores or top-k recommendations.

Two paths over one model (training/export.py writes both graphs):
- `scores` / `recommend_reference`: the dense graph's (B, N+1) scores, then exclusion and top-k in
  numpy (g2rec.ranking): the reference;
- `recommend`: the top-k graph (the same scores by G2RecModel.score_probs: cached keys for the
  interest tails, the mixture in probability space), exclusion and top-k inside onnxruntime,
  users sorted by history length and scored in chunks of `chunk` users each padded to its own
  longest history (a batch padded to its single longest history costs up to max_len/mean-length
  times the work, and smaller chunks keep the (chunk, B, N+1) intermediates in cache). Parity
  tests hold the two together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g2rec.errors import ConfigError, NotFoundError
from g2rec.ranking import exclude_seen, pad_left, top_k

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


@dataclass(frozen=True)
class ScorerConfig:
    model_path: str  # dense graph
    topk_path: str | None = None  # top-k graph; None: the fast path falls back to the dense one
    max_len: int = 50
    threads: int = 1
    # "cpu" (default), "cuda" (fails when CUDA does not load), or "auto": CUDA when it loads, else CPU.
    provider: str = "cpu"
    chunk: int = 64  # users per onnxruntime call on the fast path


@dataclass(frozen=True)
class Recommendation:
    """items: (k,) dense item ids, best first; scores: (k,) log-probabilities."""

    items: np.ndarray
    scores: np.ndarray


def model_version(path: str | Path) -> str:
    """The version a response names: the first 12 hex digits of the ONNX file's sha256."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:12]


def _session(cfg: ScorerConfig, model_path: str):
    import onnxruntime as ort

    if cfg.provider not in (*PROVIDERS, "auto"):
        raise ConfigError("serving.provider", f"unknown provider {cfg.provider!r}; known: auto, {', '.join(PROVIDERS)}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg.threads
    if cfg.provider != "auto":
        session = ort.InferenceSession(model_path, opts, providers=PROVIDERS[cfg.provider])
        if cfg.provider == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise ConfigError("serving.provider", "cuda was asked for but onnxruntime could not load CUDA",
                              fix="install the CUDA 12 runtime libraries or use the cpu provider")
        return session
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ort.InferenceSession(model_path, opts, providers=PROVIDERS["cpu"])
    # onnxruntime-gpu lists CUDA even where its libraries are missing and then logs the failed
    # load as an error; on "auto" that failure is expected, so it is probed quietly.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(model_path, opts, providers=PROVIDERS["cuda"])
    finally:
        ort.set_default_logger_severity(2)
    return session


class OnnxScorer:
    def __init__(self, cfg: ScorerConfig, version: str | None = None):
        for path in (cfg.model_path, cfg.topk_path):
            if path is not None and not Path(path).is_file():
                raise NotFoundError(f"{path}: ONNX model not found")
        self.cfg = cfg
        self.session = _session(cfg, cfg.model_path)
        self.topk_session = _session(cfg, cfg.topk_path) if cfg.topk_path else None
        self.version = version or model_version(cfg.model_path)
        self.n_scores = self.session.get_outputs()[0].shape[1]  # N+1
        if not isinstance(self.n_scores, int):  # a symbolic dimension: ask the graph
            self.n_scores = self.scores([np.array([1])]).shape[1]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """Per user a dense item-id history (oldest first) -> (B, N+1) scores; the last max_len
        items of each history are scored."""
        if not histories:
            raise ValueError("no histories to score")
        T = max(1, min(self.cfg.max_len, max(len(h) for h in histories)))
        return self.session.run(["scores"], {"history": pad_left(histories, T)})[0]

    def recommend_reference(self, histories: list[np.ndarray], k: int = 10,
                            excludes: list[np.ndarray] | None = None) -> list[Recommendation]:
        """Top-k items per user by the rule of g2rec.ranking: the last max_len items are scored,
        the whole history (and excludes[b]) is excluded, fewer than k items come back when fewer
        remain. Dense scores, then numpy: the reference of `recommend`."""
        scores = self.scores(histories)
        exclude_seen(scores, excludes if excludes is not None else histories)
        return [Recommendation(i, s) for i, s in zip(*top_k(scores, k))]

    def recommend(self, histories: list[np.ndarray], k: int = 10,
                  excludes: list[np.ndarray] | None = None) -> list[Recommendation]:
        """What recommend_reference returns (excludes default to the histories), by the top-k graph
        in length-sorted chunks."""
        if self.topk_session is None:
            return self.recommend_reference(histories, k, excludes)
        if not histories:
            raise ValueError("no histories to score")
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        excludes = excludes if excludes is not None else histories
        kk = np.array([min(k, self.n_scores)], dtype=np.int64)
        lengths = np.array([min(len(h), self.cfg.max_len) for h in histories])
        order = np.argsort(lengths, kind="stable")
        out: list[Recommendation | None] = [None] * len(histories)
        for start in range(0, len(order), self.cfg.chunk):
            idx = order[start:start + self.cfg.chunk]
            T = max(1, int(lengths[idx].max()))
            items, scores = self.topk_session.run(["items", "scores_k"], {
                "history": pad_left([histories[b] for b in idx], T),
                "exclude": pad_left([excludes[b] for b in idx]), "k": kk})
            keep = np.isfinite(scores)
            for row, b in enumerate(idx):
                out[b] = Recommendation(items[row][keep[row]], scores[row][keep[row]])
        return out
