"""onnxruntime scorer: tokenized histories -> top-k recommendations, excluding the history."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g2rec.ranking import exclude_seen, pad_left, top_k


@dataclass(frozen=True)
class ScorerConfig:
    model_path: str
    max_len: int = 50
    threads: int = 1
    provider: str = "auto"  # "auto": CUDA when onnxruntime sees it, else CPU


@dataclass(frozen=True)
class Recommendation:
    """items: (k,) dense item ids, best first; scores: (k,) log-probabilities."""

    items: np.ndarray
    scores: np.ndarray


class OnnxScorer:
    def __init__(self, cfg: ScorerConfig):
        import onnxruntime as ort

        if not Path(cfg.model_path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {cfg.model_path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        available = ort.get_available_providers()
        if cfg.provider == "auto":
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        else:
            providers = [cfg.provider]
        self.cfg = cfg
        self.session = ort.InferenceSession(cfg.model_path, opts, providers=providers)

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """Per user a dense item-id history (oldest first) -> (B, N+1) scores."""
        if not histories:
            raise ValueError("no histories to score")
        T = max(1, min(self.cfg.max_len, max(len(h) for h in histories)))
        return self.session.run(["scores"], {"history": pad_left(histories, T)})[0]

    def recommend(self, histories: list[np.ndarray], k: int = 10) -> list[Recommendation]:
        """Top-k items per user by the rule of g2rec.ranking: the last max_len items are scored,
        the whole history is excluded, fewer than k items come back when fewer remain."""
        scores = self.scores(histories)
        exclude_seen(scores, histories)
        return [Recommendation(i, s) for i, s in zip(*top_k(scores, k))]
