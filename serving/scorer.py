"""onnxruntime scorer: tokenized histories -> top-k recommendations, excluding the history."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
        batch = np.zeros((len(histories), T), dtype=np.int64)
        for b, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)[-T:]
            batch[b, T - len(h):] = h
        return self.session.run(["scores"], {"history": batch})[0]

    def recommend(self, histories: list[np.ndarray], k: int = 10) -> list[Recommendation]:
        """Top-k items per user, items already in the history excluded."""
        scores = self.scores(histories)
        out = []
        for b, h in enumerate(histories):
            s = scores[b].copy()
            s[np.asarray(h, dtype=np.int64)] = -np.inf
            s[0] = -np.inf
            top = np.argpartition(-s, k)[:k]
            top = top[np.argsort(-s[top])]
            out.append(Recommendation(top, s[top]))
        return out
