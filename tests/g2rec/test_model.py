import numpy as np
import pytest
import torch

from g2rec.model import G2RecModel, ModelConfig, log_matmul_exp_at

N, K, RHO = 30, 6, 2


def make(mode: str, **kw) -> G2RecModel:
    torch.manual_seed(0)
    base = dict(n_items=N, max_len=8, d_model=16, n_heads=2, n_layers=1, dropout=0.0, mode=mode,
                n_clusters=K if mode == "g2rec" else 0, rho=RHO if mode == "g2rec" else 1)
    m = G2RecModel(ModelConfig(**{**base, **kw}))
    if mode == "g2rec":
        clusters = torch.stack([torch.arange(N + 1) % K, (torch.arange(N + 1) + 1) % K], 1)
        weights = torch.tensor([[0.7, 0.3]]).repeat(N + 1, 1)
        weights[0] = 0
        m.set_profiles(clusters, weights)
    return m


VARIANTS = [("items", {}), ("items", {"positions": "start"}), ("g2rec", {}),
            ("g2rec", {"direct_weight": 0.5, "positions": "start", "semantic_items": True}),
            ("g2rec", {"layout": "fused", "direct_weight": 0.5, "positions": "start"}),
            ("g2rec", {"layout": "fused", "direct_weight": 0.5, "context_len": 4, "context_tokens": 2})]


def seqs():
    return torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8], [0, 0, 0, 9, 10]])


def test_scores_are_log_probabilities_and_padding_never_wins():
    for mode, kw in VARIANTS:
        m = make(mode, **kw).eval()
        s = m.score(seqs()[:, :-1])
        assert s.shape == (3, N + 1)
        assert torch.isneginf(s[:, 0]).all()
        assert torch.allclose(s.exp().sum(1), torch.ones(3), atol=1e-4)


def test_left_padding_does_not_change_scores():
    for mode, kw in VARIANTS:
        m = make(mode, **kw).eval()
        short = m.score(torch.tensor([[9, 10]]))
        padded = m.score(torch.tensor([[0, 0, 0, 9, 10]]))
        assert torch.allclose(short, padded, atol=1e-5)


def test_one_pass_interest_tail_matches_one_pass_per_interest():
    variants = [{}, {"positions": "start"}, {"positions": "start", "semantic_items": True}, {"hard_tokens": True},
                {"layout": "fused"}, {"layout": "fused", "positions": "start"},
                {"layout": "fused", "context_len": 3}]
    for kw in variants:
        m = make("g2rec", top_b=3, n_layers=2, **kw).eval()
        fast, ref = m.score_parts(seqs()[:, :-1]), m.score_parts_reference(seqs()[:, :-1])
        for a, b in zip(fast, ref):
            assert torch.allclose(a[:, 1:], b[:, 1:], atol=1e-5), kw


def test_training_reduces_loss_in_both_modes():
    for mode, kw in (VARIANTS[0], VARIANTS[-2], VARIANTS[-1], ("g2rec", {"layout": "fused", "n_negatives": 10})):
        m = make(mode, **kw)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        first = m.loss(seqs())[0].item()
        for _ in range(60):
            loss, parts = m.loss(seqs())
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.5 * first, (mode, first, loss.item())
        assert ("interest" in parts) == (mode == "g2rec")


def test_sampled_softmax_trains():
    m = make("items", n_negatives=10)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = m.loss(seqs())[0].item()
    for _ in range(60):
        loss, _ = m.loss(seqs())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_semantic_item_vectors_add_the_profile_weighted_cluster_embeddings():
    m = make("g2rec", semantic_items=True)
    v = m.all_item_vectors()  # (N+1, C)
    assert torch.allclose(v[0], m.item_emb.weight[0])  # padding has no profile
    expected = m.item_emb.weight[5] + 0.7 * m.cluster_emb.weight[5 % K] + 0.3 * m.cluster_emb.weight[6 % K]
    assert torch.allclose(v[5], expected, atol=1e-6)
    assert torch.allclose(m.item_vectors(torch.tensor([[5]]))[0, 0], expected, atol=1e-6)


def test_semantic_items_need_profiles():
    with pytest.raises(ValueError, match="semantic_items"):
        ModelConfig(n_items=N, semantic_items=True)


def test_fused_mixture_loss_is_the_top_b_mixture_that_score_ranks_with():
    """With every interest in the top-B and a full softmax, the fused mixture loss is exactly
    -log of score_parts' interest path at the target."""
    m = make("g2rec", layout="fused", top_b=K, mixture_positions=10**6).eval()
    x, y = seqs()[:, :-1], seqs()[:, -1]
    h = m.encode(m._item_tokens(x))[:, -1]
    logp_k = torch.log_softmax(h @ m.cluster_emb.weight.t(), -1)
    logits, target, vectors = m._candidate_logits(h, y)
    loss = m.mixture_loss(h, y, logp_k, logits, target, vectors)
    via_interest, _ = m.score_parts(x)
    assert torch.allclose(loss, -via_interest.gather(1, y.view(-1, 1)).mean(), atol=1e-5)


def test_sampled_mixture_loss_is_the_literal_tilted_sampled_softmax():
    """With sampled negatives, log_matmul_exp's normaliser equals the (P, Bk, M) tensor of tilted
    candidate logits it replaces, the target's column tilted by t_k . e_y."""
    m = make("g2rec", layout="fused", top_b=3, n_negatives=12)
    h, y = torch.randn(7, 16), torch.randint(1, N + 1, (7,))
    logp_k = torch.log_softmax(h @ m.cluster_emb.weight.t(), -1)
    torch.manual_seed(1)
    logits, target, vectors = m._candidate_logits(h, y)
    loss = m.mixture_loss(h, y, logp_k, logits, target, vectors)
    top_v, top_k = logp_k.topk(3, -1)
    cand = vectors.clone().unsqueeze(0).repeat(7, 1, 1)  # (P, M, C), row 0 the target's vector
    cand[:, 0] = m.item_vectors(y)
    tilted = logits.unsqueeze(1) + torch.einsum("pbc,pmc->pbm", m.tilt_emb(top_k), cand)  # (P, Bk, M)
    ref = -(torch.log_softmax(top_v, -1) + tilted.log_softmax(-1)[..., 0]).logsumexp(-1).mean()
    assert torch.allclose(loss, ref, atol=1e-5)


def test_fused_sequences_are_as_long_as_items_mode():
    m = make("g2rec", layout="fused")
    tok = m._item_tokens(seqs())
    assert tok.kind.shape == seqs().shape
    assert torch.equal(tok.clusters[1, 0], m.prof_clusters[4])


def test_context_tokens_summarise_the_items_before_the_window():
    m = make("g2rec", layout="fused", max_len=2, context_len=3)
    tok = m._item_tokens(torch.tensor([[0, 0, 5, 5, 1, 2], [0, 0, 0, 0, 1, 2]]))
    assert tok.kind.shape == (2, 3)  # one context token, then the window's two items
    assert tok.kind[1, 0] == 0  # nothing before the window: padding
    # Item 5's profile twice (0.7 on 5 % K, 0.3 on 6 % K): the token holds both, renormalised.
    assert tok.clusters[0, 0].tolist() == [5 % K, 6 % K]
    assert torch.allclose(tok.weights[0, 0], torch.tensor([0.7, 0.3]))
    # The model reads only context_len items before the window.
    far = m.score(torch.tensor([[9, 9, 9, 5, 5, 1, 2]]))
    assert torch.allclose(far, m.score(torch.tensor([[9, 5, 5, 1, 2]])), atol=1e-6)


def test_fused_training_reads_the_context_before_the_window():
    m = make("g2rec", layout="fused", max_len=3, context_len=4, mixture_positions=10**6)
    window = torch.tensor([[1, 2, 3, 4]])
    with_context = m.loss(torch.cat([torch.tensor([[5, 6]]), window], 1))[0]
    assert not torch.allclose(with_context, m.loss(window)[0])
    assert torch.allclose(m.loss(torch.cat([torch.tensor([[0, 0]]), window], 1))[0], m.loss(window)[0])


def test_log_matmul_exp_at_gradients_match_the_literal_logsumexp():
    """The sparse backward of log_matmul_exp_at against autograd through the literal (P, J, S)
    form, with -inf entries (masked candidates) and the same b row chosen by several rows."""
    a, b = torch.randn(6, 9, dtype=torch.float64), torch.randn(5, 9, dtype=torch.float64)
    a[1, 3] = -torch.inf
    idx = torch.tensor([[0, 1], [4, 0], [2, 3], [0, 4], [1, 2], [3, 0]])
    g = torch.randn(6, 2, dtype=torch.float64)
    grads = []
    for f in (log_matmul_exp_at, lambda a, b, idx: (a.unsqueeze(1) + b[idx]).logsumexp(-1)):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = f(x, y, idx)
        out.backward(g)
        grads.append((out.detach().double(), x.grad, y.grad))
    for fast, ref in zip(*grads):
        assert torch.allclose(fast, ref, atol=1e-5)
    assert grads[0][1][1, 3] == 0


@pytest.mark.parametrize("smooth_to", ["items", "interests"])
def test_label_smoothing_equals_the_cross_entropy_against_the_literal_smoothed_target(smooth_to):
    torch.manual_seed(0)
    n, k, rho, eps = 30, 5, 2, 0.2
    m = G2RecModel(ModelConfig(n_items=n, max_len=6, d_model=8, n_heads=2, n_layers=1, dropout=0.0, mode="g2rec",
                               layout="fused", n_clusters=k, rho=rho, label_smoothing=eps, smooth_to=smooth_to))
    rng = np.random.default_rng(0)
    clusters = np.stack([rng.permutation(k)[:rho] for _ in range(n + 1)])
    weights = rng.dirichlet(np.ones(rho), size=n + 1).astype(np.float32)
    m.set_profiles(clusters, weights)
    h, y = torch.randn(7, 8), torch.from_numpy(rng.integers(1, n + 1, size=7))
    logp = torch.log_softmax(m.item_logits(h), -1)[:, 1:]  # (P, N): the padding item gets no mass
    if smooth_to == "items":
        q = torch.full((7, n), 1.0 / n)
    else:  # q_j = sum_k w_yk * w_jk / (sum_i w_ik), over the items j of interest k
        member = torch.zeros(n, k).index_put_((torch.arange(n).repeat_interleave(rho), torch.from_numpy(clusters[1:]).reshape(-1)),
                                             torch.from_numpy(weights[1:]).reshape(-1), accumulate=True)  # (N, K)
        per_item = member / member.sum(0)  # column k: a distribution over items
        q = torch.stack([(per_item[:, torch.from_numpy(clusters[t])] * torch.from_numpy(weights[t])).sum(1) for t in y.tolist()])
    target = (1 - eps) * torch.nn.functional.one_hot(y - 1, n).float() + eps * q
    literal = -(target * logp).sum(1).mean()
    assert m.next_item_loss(h, y).item() == pytest.approx(literal.item(), rel=1e-5)
