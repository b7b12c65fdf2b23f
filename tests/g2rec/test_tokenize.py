import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from g2rec.tokenize import INTEREST, ITEM, PAD, append_interests, interleave

N, RHO = 20, 3
CLUSTERS = torch.randint(0, 8, (N + 1, RHO))
WEIGHTS = torch.softmax(torch.randn(N + 1, RHO), dim=1)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(1, N), min_size=0, max_size=6), min_size=1, max_size=4))
def test_interleave_round_trips_and_alternates(histories):
    T = max(1, max(len(h) for h in histories))
    items = torch.zeros(len(histories), T, dtype=torch.long)
    for b, h in enumerate(histories):
        if h:
            items[b, T - len(h):] = torch.tensor(h)
    tok = interleave(items, CLUSTERS, WEIGHTS)
    assert torch.equal(tok.item[:, 1::2], items)  # item tokens hold the history in order
    real = items > 0
    assert torch.equal(tok.kind[:, 0::2], torch.where(real, INTEREST, PAD))
    assert torch.equal(tok.kind[:, 1::2], torch.where(real, ITEM, PAD))
    # Interest tokens carry their item's profile; others carry nothing.
    assert torch.equal(tok.clusters[:, 0::2], torch.where(real.unsqueeze(-1), CLUSTERS[items], 0))
    assert torch.allclose(tok.weights[:, 1::2], torch.zeros(1))
    assert tok.pos[0, -1] == 0 and tok.pos[0, 0] == T - 1


def test_appended_interest_tokens_are_hard_and_most_recent():
    items = torch.tensor([[0, 3, 4]])
    tok = append_interests(interleave(items, CLUSTERS, WEIGHTS, last_pos=1), torch.tensor([[5, 2]]))
    assert tok.kind[0, -2:].tolist() == [INTEREST, INTEREST] and tok.pos[0, -2:].tolist() == [0, 0] and tok.pos[0, -3] == 1
    assert tok.clusters[0, -2].tolist() == [5, 0, 0] and tok.clusters[0, -1].tolist() == [2, 0, 0]
    assert tok.weights[0, -1].tolist() == [1.0, 0.0, 0.0] and tok.item[0, -2:].tolist() == [0, 0]
