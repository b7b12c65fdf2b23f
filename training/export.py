"""Export a trained G2RecModel's scoring graphs to ONNX (dynamic batch and history length), and
check that onnxruntime reproduces the eager scores (the gate before a model is registered).

Two graphs, both served by serving/scorer.py:
  model.onnx       history -> dense scores (B, N+1) (G2RecModel.score): the reference path;
  model.topk.onnx  history, exclude, k -> the k best items and their scores, the excluded items
                   (and padding) at -inf inside the graph: the fast path. It is the probability
                   graph (G2RecModel.score_probs: the same numbers as exp(score), with the cached
                   interest tails and the mixture in probability space) with ScatterElements +
                   TopK + Log appended; `export_topk(..., probs=False)` appends them to model.onnx
                   instead (the previous fast path, kept for the benchmark's side-by-side run).
`quantize_int8` writes an int8 copy of the top-k graph; `topk_agreement` measures how far its
top-k lists stay from the float graph's (serving/run_dir.py serves it only within a bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from g2rec.model import G2RecModel
from g2rec.ranking import pad_left, top_k


class _Probs(torch.nn.Module):
    def __init__(self, model: G2RecModel):
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.model.score_probs(history)


def export_onnx(model: G2RecModel, path: Path, probs: bool = False) -> Path:
    """history (B, T) int64, left-padded, 1 <= T <= max_len -> scores (B, N+1) float32 log-probs;
    with probs, `probs` (B, N+1) = exp(scores) by G2RecModel.score_probs (padding 0)."""
    model = model.eval()
    example = torch.ones(2, min(4, model.cfg.input_len), dtype=torch.long)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length", min=1, max=model.cfg.input_len)}
    program = torch.onnx.export(
        _Probs(model).eval() if probs else model, (example,), dynamo=True, input_names=["history"],
        output_names=["probs" if probs else "scores"],
        dynamic_shapes={"history": dims}, verbose=False,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


def export_topk(dense: Path, path: Path, probs: bool = True) -> Path:
    """The graph at `dense` (export_onnx's, `probs` as there) + in-graph exclusion and top-k, saved
    at `path`: history (B, T) int64, exclude (B, E) int64 (dense ids to drop; 0 pads, and padding is
    always dropped), k (1,) int64 with 1 <= k <= N+1 -> items (B, k) int64 best first, scores (B, k)
    float32 log-probabilities; excluded items come last at -inf when fewer than k remain (from a
    probability graph, so do items whose probability underflows to 0)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(dense))
    g = m.graph
    (out,) = [o for o in g.output if o.name == ("probs" if probs else "scores")]
    g.output.remove(out)
    # Excluded entries are set to `drop`, below every real value: -inf on log-probabilities, -1 on
    # probabilities (whose top-k values are then logged, and the dropped ones put back at -inf).
    drop = -1.0 if probs else float("-inf")
    top = "topk_values" if probs else "scores_k"
    g.input.append(helper.make_tensor_value_info("exclude", TensorProto.INT64, ["batch", "excluded"]))
    g.input.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    g.node.extend([
        helper.make_node("Constant", [], ["topk_neg_inf"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [], [drop])),
        helper.make_node("Constant", [], ["topk_zero"], value=helper.make_tensor("z", TensorProto.INT64, [1, 1], [0])),
        # Padding (column 0) is excluded too: a column of zeros in front of the exclude list.
        helper.make_node("Shape", ["history"], ["topk_history_shape"]),
        helper.make_node("Slice", ["topk_history_shape", "topk_start", "topk_end"], ["topk_batch"]),
        helper.make_node("Concat", ["topk_batch", "topk_one"], ["topk_pad_shape"], axis=0),
        helper.make_node("Expand", ["topk_zero", "topk_pad_shape"], ["topk_pad"]),
        helper.make_node("Concat", ["topk_pad", "exclude"], ["topk_drop"], axis=1),
        helper.make_node("Shape", ["topk_drop"], ["topk_drop_shape"]),
        helper.make_node("Expand", ["topk_neg_inf", "topk_drop_shape"], ["topk_drop_values"]),
        helper.make_node("ScatterElements", [out.name, "topk_drop", "topk_drop_values"], ["topk_masked"], axis=1),
        helper.make_node("TopK", ["topk_masked", "k"], [top, "items"], axis=1, largest=1, sorted=1),
    ])
    if probs:
        g.node.extend([
            helper.make_node("Constant", [], ["topk_minus_inf"],
                             value=helper.make_tensor("m", TensorProto.FLOAT, [], [float("-inf")])),
            helper.make_node("Constant", [], ["topk_fzero"], value=helper.make_tensor("f", TensorProto.FLOAT, [], [0.0])),
            helper.make_node("Less", [top, "topk_fzero"], ["topk_dropped"]),
            helper.make_node("Log", [top], ["topk_log"]),
            helper.make_node("Where", ["topk_dropped", "topk_minus_inf", "topk_log"], ["scores_k"]),
        ])
    g.initializer.extend([helper.make_tensor("topk_start", TensorProto.INT64, [1], [0]),
                          helper.make_tensor("topk_end", TensorProto.INT64, [1], [1]),
                          helper.make_tensor("topk_one", TensorProto.INT64, [1], [1])])
    g.output.extend([helper.make_tensor_value_info("items", TensorProto.INT64, ["batch", "k"]),
                     helper.make_tensor_value_info("scores_k", TensorProto.FLOAT, ["batch", "k"])])
    onnx.checker.check_model(m)
    path = Path(path)
    onnx.save(m, str(path))
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
        chunk = [h[-model.cfg.input_len:] for h in histories[lo:lo + batch_size]]
        x = pad_left(chunk, max(1, max(len(h) for h in chunk)))  # (B, T) int64
        with torch.no_grad():
            eager = model.score(torch.from_numpy(x)).numpy()  # (B, N+1)
        onnx = session.run(["scores"], {"history": x})[0]
        worst = max(worst, float(np.abs(eager[:, 1:] - onnx[:, 1:]).max()))
        same += sum(np.array_equal(a, b) for a, b in zip(top_k(eager, k)[0], top_k(onnx, k)[0]))
    return Parity(worst, same / len(histories), len(histories))


def quantize_int8(graph: Path, path: Path) -> Path:
    """The top-k graph at `graph` with int8 weights, saved at `path`: onnxruntime's dynamic
    quantization (int8 weights per output channel, activations quantized per call to uint8) of the
    MatMuls that run once per history token (a symbolic length axis after the batch axis); the
    ones that run once per user stay float: the last layer's last token, the interest and item
    heads. Those are a small share of the time and decide the ranking directly: quantizing them as
    well kept the top-10 set for 93.1% of validation users on a trained Beauty model, against 96.0%
    (bench/README.md). Constants are folded first, so the item table and the per-interest tilt
    table computed from the embeddings count as constant weights."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    folded = path.with_name(f".{path.name}.folded.tmp")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folding, no fused ops
    opts.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    try:
        g = onnx.shape_inference.infer_shapes(onnx.load(str(folded))).graph
        weights = {t.name for t in g.initializer}
        shapes = {v.name: v.type.tensor_type.shape.dim for v in [*g.value_info, *g.input]}

        def per_token(node) -> bool:
            (x,) = [i for i in node.input if i not in weights] or [None]
            dims = shapes.get(x, ())
            return len(dims) >= 3 and bool(dims[1].dim_param)

        quantize = [n.name for n in g.node if n.op_type == "MatMul" and any(i in weights for i in n.input) and per_token(n)]
        quantize_dynamic(str(folded), str(path), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=quantize)
    finally:
        folded.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class TopkAgreement:
    """Two top-k graphs on the same histories (exclusions: each history).

    same_set: share of histories whose top-k item sets are identical; overlap: mean |A & B| / k;
    users: how many were scored."""

    same_set: float
    overlap: float
    users: int


def topk_agreement(reference: Path, other: Path, histories: Sequence[np.ndarray], max_len: int, k: int = 10,
                   batch_size: int = 256) -> TopkAgreement:
    """Score `histories` (dense ids, oldest first; the last max_len items scored, all excluded)
    with two top-k graphs in onnxruntime (CPU) and compare their top-k sets."""
    import onnxruntime as ort

    if not len(histories):
        raise ValueError("histories is empty: agreement needs at least one history")
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (reference, other)]
    order = np.argsort([len(h) for h in histories], kind="stable")  # similar lengths per batch: less padding
    same, overlap = 0, 0.0
    for lo in range(0, len(order), batch_size):
        chunk = [histories[b] for b in order[lo:lo + batch_size]]
        feed = {"history": pad_left(chunk, min(max_len, max(len(h) for h in chunk))), "exclude": pad_left(chunk),
                "k": np.array([k], dtype=np.int64)}
        a, b = (s.run(["items"], feed)[0] for s in sessions)
        for x, y in zip(a, b):
            common = len(set(x.tolist()) & set(y.tolist()))
            same += common == len(x)
            overlap += common / len(x)
    return TopkAgreement(same / len(histories), overlap / len(histories), len(histories))
