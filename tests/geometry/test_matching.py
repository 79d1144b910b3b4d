"""Sparse one-to-one assignment equals the dense solver; families are typed; the decomposition is exact NNLS."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment, nnls

from geometry.matching import assignment, candidate_edges, families
from geometry.novelty import decompose, support_nnls
from geometry.similarity import top_k_cosine, unit_rows


@pytest.mark.parametrize("seed, n_a, n_b, tau", [(0, 40, 60, 0.3), (1, 60, 40, 0.5), (2, 50, 50, 0.0), (3, 30, 90, 0.6)])
def test_sparse_assignment_equals_dense(seed, n_a, n_b, tau):
    g = torch.Generator().manual_seed(seed)
    a = unit_rows(torch.randn(n_a, 6, generator=g))
    b = unit_rows(torch.randn(n_b, 6, generator=g))
    nb = top_k_cosine(a, b, k=max(n_a, n_b))  # every pair is a candidate
    ra, rb, rc = assignment(*candidate_edges(nb), n_a, n_b, tau)
    s = (a @ b.T).double().numpy()
    big = 1e6  # the dense problem: real pairs above tau, or a private dummy at 2 - tau
    cost = np.full((n_a, n_b + n_a), big)
    cost[:, :n_b] = np.where(s > tau, 2 - s, big)
    cost[np.arange(n_a), n_b + np.arange(n_a)] = 2 - tau
    rows, cols = linear_sum_assignment(cost)
    dense_pairs = {(r, c) for r, c in zip(rows, cols) if c < n_b}
    assert {(int(x), int(y)) for x, y in zip(ra, rb)} == dense_pairs
    np.testing.assert_allclose(rc, s[ra, rb], atol=1e-5)


def test_family_types():
    # A: 0..5, B: 0..7.  1:1 (a0-b0), split (a1-b1,b2), merge (a2,a3-b3), tangled (a4,a5-b4,b5 all),
    # novel (b6, b7), no lost; then a lone A row a6 is lost.
    a = np.array([0, 1, 1, 2, 3, 4, 4, 5, 5])
    b = np.array([0, 1, 2, 3, 3, 4, 5, 4, 5])
    fam_a, fam_b, table = families(a, b, 7, 8)
    types = table.set_index("family")["type"]
    assert types[fam_a[0]] == "1:1" and types[fam_a[1]] == "split" and types[fam_a[2]] == "merge"
    assert types[fam_a[4]] == "tangled" and types[fam_a[6]] == "lost" and types[fam_b[6]] == "novel"
    assert fam_a[4] == fam_a[5] == fam_b[4] == fam_b[5]
    assert table["type"].value_counts().to_dict() == {"novel": 2, "1:1": 1, "split": 1, "merge": 1, "tangled": 1, "lost": 1}


def test_nnls_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 4, 12, generator=g)
    y = unit_rows(torch.randn(100, 12, generator=g))
    gram, c = torch.bmm(x, x.transpose(1, 2)), torch.einsum("mtd,md->mt", x, y)
    _, r2 = support_nnls(gram, c, torch.ones(100, 4, dtype=torch.bool), 4)
    want = [1 - nnls(x[i].T.double().numpy(), y[i].double().numpy())[1] ** 2 for i in range(100)]
    np.testing.assert_allclose(r2.numpy(), want, atol=1e-5)


def test_decompose_recovers_planted_mixtures():
    g = torch.Generator().manual_seed(0)
    atoms = unit_rows(torch.randn(500, 256, generator=g))
    target = unit_rows(atoms[:50] + 0.7 * atoms[50:100] + 0.4 * atoms[100:150])
    nb = top_k_cosine(atoms, target, 16)
    dec = decompose(atoms, nb.b_to_a.indices, nb.b_to_a.values, max_atoms=4)
    assert torch.all(dec.r2 > 0.999)
    for i in range(50):
        assert {i, 50 + i, 100 + i} <= set(dec.atoms[i].tolist())
    assert torch.all(dec.r2 - dec.r2_single > 0.3)
