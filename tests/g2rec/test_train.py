import numpy as np
import pytest
import torch

from g2rec.metrics import loo_split
from g2rec.model import G2RecModel, ModelConfig
from g2rec.synth import SynthConfig, synth_interactions
from g2rec.ranking import pad_left
from g2rec.train import TrainConfig, _weights, batch_loss, evaluate, fit, length_batches


def test_batches_cover_every_sequence_once():
    seqs = [np.arange(1, n + 1) for n in (2, 5, 3, 9, 4, 2, 7)]
    batches = list(length_batches(seqs, 3, np.random.default_rng(0)))
    got = sorted(tuple(int(v) for v in row if v) for b in batches for row in b)
    assert got == sorted(tuple(s.tolist()) for s in seqs)
    assert [len(b) for b in batches].count(3) == 2


def test_target_weighting_weighs_every_target_the_same():
    # Full softmax, no dropout: deterministic losses. Over an epoch of length-sorted batches, the
    # weighted batch losses add up to the sum over all targets divided by the mean targets per batch;
    # the plain means do not (short batches would count more).
    torch.manual_seed(0)
    m = G2RecModel(ModelConfig(n_items=20, max_len=12, d_model=8, n_heads=2, n_layers=1, dropout=0.0)).eval()
    torch.nn.init.normal_(m.item_emb.weight, std=3.0)  # losses far from uniform, so the weighting shows
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 21, size=n) for n in (2, 2, 3, 3, 12, 13, 13, 13)]
    batches = list(length_batches(seqs, 2, rng))
    mean_targets = sum(len(s) - 1 for s in seqs) / len(batches)
    with torch.no_grad():
        per_target = torch.cat([m.loss(torch.from_numpy(pad_left([s])))[0].view(1) * (len(s) - 1) for s in seqs]).sum()
        weighted = sum(batch_loss(m, b, mean_targets) for b in batches)
        plain = sum(batch_loss(m, b, None) for b in batches)
    assert weighted.item() == pytest.approx(per_target.item() / mean_targets, rel=1e-5)
    assert plain.item() != pytest.approx(per_target.item() / mean_targets, rel=1e-2)


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


def test_fit_validating_its_start_hands_back_the_start_when_training_only_hurts():
    inter, _ = synth_interactions(SynthConfig(n_users=200, n_items=60, n_interests=4, mean_history=10, seed=3))
    split = loo_split(inter)
    torch.manual_seed(0)
    m = G2RecModel(ModelConfig(n_items=inter.n_items, max_len=10, d_model=16, n_heads=2, n_layers=1, dropout=0.1))
    fit(m, split, TrainConfig(epochs=6, batch_size=64, lr=5e-3, eval_every=2, patience=5, progress=False))
    start = {k: v.clone() for k, v in m.state_dict().items()}
    # An lr of 1 wrecks a trained model: validation only drops, so the fit keeps epoch 0.
    res = fit(m, split, TrainConfig(epochs=2, batch_size=64, lr=1.0, eval_every=1, patience=2, progress=False,
                                    validate_start=True))
    assert res.best_epoch == 0 and [c["epoch"] for c in res.curve] == [0, 1, 2]
    assert max(c["valid_ndcg@10"] for c in res.curve[1:]) < res.curve[0]["valid_ndcg@10"]
    assert all(torch.equal(v, start[k]) for k, v in m.state_dict().items())


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)


# ---- devices and data parallelism ---------------------------------------------------------------
_TINY = ModelConfig(n_items=30, d_model=16, n_layers=1, n_heads=2, dropout=0.0, max_len=8, n_negatives=0)


def _ddp_worker(rank: int, port: int, state: dict, batches: list, out: str) -> None:
    import os

    import torch.distributed as dist

    from g2rec.train import data_parallel, train_epoch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = G2RecModel(_TINY)
        model.load_state_dict(state)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        losses = torch.tensor(train_epoch(data_parallel(model), opt, batches, None))
        dist.all_reduce(losses)
        if rank == 0:
            torch.save({"losses": losses / 2, "state": model.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_take_the_same_steps_as_one_process_averaging_their_batches(tmp_path):
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    model = G2RecModel(_TINY)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randint(0, 31, (4, 9)) for _ in range(4)]  # rank 0 takes 0 and 2, rank 1 takes 1 and 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, state, batches, str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    expected = []
    for pair in (batches[0:2], batches[2:4]):
        loss = sum(batch_loss(model, b, None) for b in pair) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        expected.append(loss.item())
    torch.testing.assert_close(got["losses"], torch.tensor(expected), atol=1e-5, rtol=1e-5)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(got["state"][name], value, atol=1e-5, rtol=1e-5)


def test_train_config_rejects_an_unknown_device_or_precision():
    from g2rec.errors import ConfigError

    with pytest.raises(ConfigError, match="device"):
        TrainConfig(device="tpu")
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_fit_on_cuda_learns_and_hands_the_model_back_on_the_cpu(precision):
    data, _ = synth_interactions(SynthConfig(n_users=200, n_items=60, n_interests=4, mean_history=10, seed=0))
    split = loo_split(data)
    model = G2RecModel(ModelConfig(n_items=data.n_items, d_model=32, n_layers=1, n_heads=2, max_len=20))
    before = evaluate(model, split, "valid")["masked"]["ndcg@10"]
    fit(model, split, TrainConfig(epochs=4, eval_every=1, progress=False, device="cuda", precision=precision))
    assert model.item_emb.weight.device.type == "cpu"
    assert evaluate(model, split, "valid")["masked"]["ndcg@10"] > before


def test_mixture_ranks_equal_the_reference_below_the_cap_with_ties_underflow_and_excluded_items():
    from g2rec.metrics import target_ranks
    from g2rec.model import mix_probs
    from g2rec.ranking import exclude_seen
    from g2rec.train import mixture_ranks

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(64, 300, generator=g), torch.rand(64, 300, generator=g)
    a[:, 100:150] = 0.0  # underflowed probabilities tie at 0
    b[:, 120:170] = 0.0
    b[:, 200:210] = a[:, 200:210]  # exact ties across the parts
    a[:, 0] = b[:, 0] = 0.0  # the padding column
    targets = torch.randint(1, 300, (64,), generator=g)
    targets[:8] = 130  # a target at 0 in both parts
    hist = [np.array([int(targets[i])]) if i % 5 == 0 else np.arange(1, 1 + i % 7) for i in range(64)]
    for excluded in (False, True):
        if excluded:
            exclude_seen(a, hist)
            exclude_seen(b, hist)
        weights = [0.0, 0.3, 0.5, 0.9, 0.99]
        for cap in (20, 301):  # 301: every rank exact
            fast = mixture_ranks(a, b, targets, weights, cap)
            for w in weights:
                ref = target_ranks(mix_probs(a, b, w), targets, None)
                assert torch.equal(torch.minimum(fast[w], torch.tensor(cap)), torch.minimum(ref, torch.tensor(cap))), (excluded, w, cap)
