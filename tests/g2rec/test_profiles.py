import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from g2rec.profiles import (
    check_profiles,
    cluster_prototypes,
    cluster_sizes,
    make_profiles,
    top_rho,
)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda c: st.tuples(
            arrays(np.int64, (8, c), elements=st.integers(0, 9)),
            arrays(np.float64, (8, c), elements=st.floats(0.0, 5.0)),
        )
    ),
    st.integers(1, 5),
)
def test_top_rho_rows_sum_to_one_with_at_most_rho_nonzeros(data, rho):
    clusters, weights = data
    weights[:, 0] += 0.1  # every row has some mass
    c, w = top_rho(clusters, weights, rho)
    assert c.shape == w.shape == (8, rho)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    assert ((w > 0).sum(1) <= rho).all()
    assert (np.diff(w, axis=1) <= 1e-7).all()
    for row_c, row_w, in_c, in_w in zip(c, w, clusters, weights):
        nz = row_c[row_w > 0]
        assert len(set(nz)) == len(nz)  # duplicates were merged
        total = {k: in_w[in_c == k].sum() for k in set(in_c)}
        best = max(total.values())
        assert total[row_c[0]] == pytest.approx(best)
        assert set(row_c) <= set(in_c)


def test_make_profiles_pads_row_zero_and_validates():
    p = make_profiles(np.array([[0, 1], [2, 3], [1, 0]]), np.array([[1, 1], [3.0, 1.0], [0.0, 2.0]]), np.arange(3), 4, rho=2, version=3)
    check_profiles(p)
    assert p.weights[0].sum() == 0 and p.version == 3
    np.testing.assert_array_equal(p.primary, [0, 2, 0])
    np.testing.assert_allclose(p.weights[2], [1.0, 0.0])
    assert p.clusters[2, 1] == 0  # spare slot repeats the primary
    with pytest.raises(ValueError, match="cluster ids"):
        make_profiles(np.array([[0], [7]]), np.ones((2, 1)), np.arange(2), 4, rho=1)


def test_cluster_sizes_count_primaries_or_membership_mass():
    p = make_profiles(np.array([[0, 1], [2, 3], [1, 0]]), np.array([[1, 1], [1.0, 3.0], [2.0, 1.0]]), np.arange(3), 4, rho=2)
    np.testing.assert_array_equal(cluster_sizes(p), [0, 1, 0, 1])
    np.testing.assert_allclose(cluster_sizes(p, soft=True), [1 / 3, 2 / 3, 1 / 4, 3 / 4])


def test_cluster_prototypes_are_membership_weighted_means():
    p = make_profiles(np.array([[0, 0], [0, 1], [1, 0], [2, 1]]), np.array([[1, 0], [1.0, 1.0], [1.0, 0.0], [1.0, 3.0]]), np.arange(4), 3, rho=2)
    emb = torch.randn(4, 5)
    proto = cluster_prototypes(p, emb)
    dense = torch.zeros(4, 3)
    for i in range(1, 4):
        for c, w in zip(p.clusters[i], p.weights[i]):
            dense[i, c] += float(w)
    expected = (dense.T @ emb) / dense.sum(0)[:, None]
    torch.testing.assert_close(proto, expected)
    with pytest.raises(ValueError, match="item_embeddings"):
        cluster_prototypes(p, torch.randn(3, 5))
