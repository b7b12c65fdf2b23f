import numpy as np
import pytest
import torch

from g2rec.metrics import loo_split
from g2rec.model import G2RecModel, ModelConfig
from g2rec.synth import SynthConfig, synth_interactions
from g2rec.train import TrainConfig, _weights, evaluate, fit, length_batches


def test_batches_cover_every_sequence_once():
    seqs = [np.arange(1, n + 1) for n in (2, 5, 3, 9, 4, 2, 7)]
    batches = list(length_batches(seqs, 3, np.random.default_rng(0)))
    got = sorted(tuple(int(v) for v in row if v) for b in batches for row in b)
    assert got == sorted(tuple(s.tolist()) for s in seqs)
    assert [len(b) for b in batches].count(3) == 2


def test_weights_context_swaps_in_and_restores():
    m = G2RecModel(ModelConfig(n_items=10, d_model=8, n_heads=2, n_layers=1))
    before = [p.detach().clone() for p in m.parameters()]
    avg = [torch.zeros_like(p) for p in before]
    with _weights(m, avg):
        assert all((p == 0).all() for p in m.parameters())
    assert all(torch.equal(p, b) for p, b in zip(m.parameters(), before))


def test_fit_with_ema_keeps_the_averaged_weights_it_validated():
    inter, _ = synth_interactions(SynthConfig(n_users=200, n_items=60, n_interests=4, mean_history=10, seed=3))
    split = loo_split(inter)
    torch.manual_seed(0)
    m = G2RecModel(ModelConfig(n_items=inter.n_items, max_len=10, d_model=16, n_heads=2, n_layers=1, dropout=0.1))
    res = fit(m, split, TrainConfig(epochs=6, batch_size=64, lr=5e-3, eval_every=2, patience=5, ema=0.9, progress=False))
    assert evaluate(m, split, "valid")["masked"] == pytest.approx(res.best_valid)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)
