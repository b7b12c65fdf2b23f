"""The int8 top-k graph (training.export.quantize_int8, serving/run_dir.py): exported beside the
float graph, kept only when it keeps the float graph's top-10 sets on validation histories, served
on the CPU by default and never when float is asked for."""

import json

import numpy as np
import pandas as pd
import pytest

import serving.run_dir as run_dir_module
from g2rec.cluster import ClusterConfig
from g2rec.errors import DataError
from g2rec.model import ModelConfig
from g2rec.synth import SynthConfig, synth_interactions
from g2rec.train import TrainConfig
from serving.run_dir import (
    INT8,
    MANIFEST,
    TOPK,
    RunConfig,
    open_run,
    prepare_run,
    read_version,
    served_graph,
)
from training.export import topk_agreement
from training.pipeline import DataSource, PipelineConfig, run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small G2Rec model trained on planted-interest events read from a CSV, so the run's
    dataset (and its validation histories) loads again at export."""
    tmp = tmp_path_factory.mktemp("int8")
    inter, _ = synth_interactions(SynthConfig(n_users=500, n_items=200, n_interests=8, mean_history=15, seed=1))
    users = np.repeat(np.arange(inter.n_users), inter.lengths())
    pd.DataFrame({"user": users, "item": inter.items, "timestamp": inter.times}).to_csv(tmp / "events.csv", index=False)
    cfg = PipelineConfig(data=DataSource("planted", str(tmp / "events.csv"), "csv"),
                         model=ModelConfig(d_model=32, n_layers=1, n_heads=2, dropout=0.1, max_len=20, mode="g2rec",
                                           direct_weight=0.5),
                         train=TrainConfig(epochs=9, batch_size=128, lr=3e-3, eval_every=3, patience=3, progress=False),
                         cluster=ClusterConfig(n_clusters=8, rho=2, iters=60), threads=1)
    run(cfg, tmp / "run")
    return tmp / "run"


def test_a_trained_runs_int8_graph_keeps_the_top_10_ofvalidation_histories(trained_run):
    open_run(RunConfig(trained_run))
    int8 = json.loads((trained_run / MANIFEST).read_text())["int8"]
    assert int8["onnx"] == INT8 and int8["users"] > 400, int8
    assert int8["same_top10_set"] >= run_dir_module.INT8_MIN_SAME_SET and int8["mean_overlap10"] >= 0.99, int8
    # The recorded figures are the graphs' own: measured again on the same histories.
    histories = run_dir_module.validation_histories(trained_run, 200)
    again = topk_agreement(trained_run / TOPK, trained_run / INT8, histories, 20)
    assert (again.same_set, again.users) == (int8["same_top10_set"], int8["users"])


def test_int8_is_served_on_the_cpu_by_default_and_float_on_request(trained_run):
    prepare_run(trained_run)
    v = read_version(trained_run)
    assert served_graph(v) == trained_run / INT8 and served_graph(v, "auto", "cuda") == trained_run / TOPK
    assert served_graph(v, "float") == trained_run / TOPK
    fast, ref = open_run(RunConfig(trained_run)), open_run(RunConfig(trained_run, precision="float"))
    assert fast.scorer.cfg.topk_path.endswith(INT8) and ref.scorer.cfg.topk_path.endswith(TOPK)
    history = [int(i) for i in fast.item_ids[1:6]]
    r = fast.recommend([history], 10)[0]
    assert len(r.items) == 10 and not set(history) & set(r.items) and r.scores == sorted(r.scores, reverse=True)


def test_an_int8_graph_outside_the_bound_is_not_kept_and_not_served(trained_run, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    (out / MANIFEST).unlink()
    (out / INT8).unlink(missing_ok=True)
    monkeypatch.setattr(run_dir_module, "INT8_MIN_SAME_SET", 1.01)
    prepare_run(out)
    int8 = json.loads((out / MANIFEST).read_text())["int8"]
    assert int8["onnx"] is None and "too few" in int8["reason"] and not (out / INT8).exists()
    v = read_version(out)
    assert v.int8_path is None and served_graph(v) == out / TOPK
    with pytest.raises(DataError, match="no int8 graph"):
        open_run(RunConfig(out, precision="int8"))


def test_a_run_without_its_dataset_is_served_in_float_saying_why(run_dir):
    v = read_version(run_dir)
    assert v.int8_path is None and "validation histories" in v.int8_note and served_graph(v) == v.topk_path
