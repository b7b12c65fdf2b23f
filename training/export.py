"""Export a trained G2RecModel's scoring graph to ONNX (dynamic batch and history length), and
check that onnxruntime reproduces the eager scores (the gate before a model is registered)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from g2rec.model import G2RecModel
from g2rec.ranking import pad_left, top_k


def export_onnx(model: G2RecModel, path: Path) -> Path:
    """history (B, T) int64, left-padded, 1 <= T <= max_len -> scores (B, N+1) float32 log-probs."""
    model = model.eval()
    example = torch.ones(2, min(4, model.cfg.max_len), dtype=torch.long)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length", min=1, max=model.cfg.max_len)}
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=["history"], output_names=["scores"],
        dynamic_shapes={"history": dims}, verbose=False,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


@dataclass(frozen=True)
class Parity:
    """onnxruntime against eager PyTorch on the same histories.

    max_abs_diff: largest |score difference| over every finite score (padding column excluded);
    top10_share: share of histories whose top-10 items agree in order; users: how many were scored.
    """

    max_abs_diff: float
    top10_share: float
    users: int

    def ok(self, atol: float, min_top10_share: float) -> bool:
        return self.max_abs_diff <= atol and self.top10_share >= min_top10_share


def check_parity(model: G2RecModel, onnx_path: Path, histories: Sequence[np.ndarray], batch_size: int = 256,
                 k: int = 10) -> Parity:
    """Score `histories` (dense ids, each cut to its last max_len items) with the exported graph in
    onnxruntime (CPU) and with the eager model; compare scores and top-k lists."""
    import onnxruntime as ort

    if not len(histories):
        raise ValueError("histories is empty: parity needs at least one history")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.eval()
    worst, same = 0.0, 0
    for lo in range(0, len(histories), batch_size):
        chunk = [h[-model.cfg.max_len:] for h in histories[lo:lo + batch_size]]
        x = pad_left(chunk, max(1, max(len(h) for h in chunk)))  # (B, T) int64
        with torch.no_grad():
            eager = model.score(torch.from_numpy(x)).numpy()  # (B, N+1)
        onnx = session.run(["scores"], {"history": x})[0]
        worst = max(worst, float(np.abs(eager[:, 1:] - onnx[:, 1:]).max()))
        same += sum(np.array_equal(a, b) for a, b in zip(top_k(eager, k)[0], top_k(onnx, k)[0]))
    return Parity(worst, same / len(histories), len(histories))
