"""Export a trained G2RecModel's scoring graph to ONNX (dynamic batch and history length)."""

from __future__ import annotations

from pathlib import Path

import torch

from g2rec.model import G2RecModel


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
