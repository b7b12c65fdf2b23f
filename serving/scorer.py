"""onnxruntime scorer: tokenized histories -> top-k recommendations, excluding the history."""

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
    model_path: str
    max_len: int = 50
    threads: int = 1
    # "cpu" (default), "cuda" (fails when CUDA does not load), or "auto": CUDA when it loads, else CPU.
    provider: str = "cpu"


@dataclass(frozen=True)
class Recommendation:
    """items: (k,) dense item ids, best first; scores: (k,) log-probabilities."""

    items: np.ndarray
    scores: np.ndarray


def model_version(path: str | Path) -> str:
    """The version a response names: the first 12 hex digits of the ONNX file's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _session(cfg: ScorerConfig):
    import onnxruntime as ort

    if cfg.provider not in (*PROVIDERS, "auto"):
        raise ConfigError("serving.provider", f"unknown provider {cfg.provider!r}; known: auto, {', '.join(PROVIDERS)}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg.threads
    if cfg.provider != "auto":
        session = ort.InferenceSession(cfg.model_path, opts, providers=PROVIDERS[cfg.provider])
        if cfg.provider == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise ConfigError("serving.provider", "cuda was asked for but onnxruntime could not load CUDA",
                              fix="install the CUDA 12 runtime libraries or use the cpu provider")
        return session
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ort.InferenceSession(cfg.model_path, opts, providers=PROVIDERS["cpu"])
    # onnxruntime-gpu lists CUDA even where its libraries are missing and then logs the failed
    # load as an error; on "auto" that failure is expected, so it is probed quietly.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(cfg.model_path, opts, providers=PROVIDERS["cuda"])
    finally:
        ort.set_default_logger_severity(2)
    return session


class OnnxScorer:
    def __init__(self, cfg: ScorerConfig):
        if not Path(cfg.model_path).is_file():
            raise NotFoundError(f"{cfg.model_path}: ONNX model not found")
        self.cfg = cfg
        self.session = _session(cfg)
        self.version = model_version(cfg.model_path)

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

    def recommend(self, histories: list[np.ndarray], k: int = 10) -> list[Recommendation]:
        """Top-k items per user by the rule of g2rec.ranking: the last max_len items are scored,
        the whole history is excluded, fewer than k items come back when fewer remain."""
        scores = self.scores(histories)
        exclude_seen(scores, histories)
        return [Recommendation(i, s) for i, s in zip(*top_k(scores, k))]
