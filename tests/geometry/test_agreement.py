"""The shared fraction and PW-MCC: exact against scipy's dense assignment, right on planted pairs, and
bounded on the sparse candidate graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from geometry.agreement import agreement
from geometry.comparison import compare
from geometry.similarity import top_k_cosine


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def planted(n_a: int, n_b: int, n_shared: int, d: int = 64, noise: float = 0.05, seed: int = 0):
    """A: n_a random rows; B: noisy copies of n_shared of them (shuffled) and n_b - n_shared new rows."""
    g = torch.Generator().manual_seed(seed)
    a = unit(torch.randn(n_a, d, generator=g))
    copies = unit(a[torch.randperm(n_a, generator=g)[:n_shared]] + noise * torch.randn(n_shared, d, generator=g))
    b = unit(torch.cat([copies, torch.randn(n_b - n_shared, d, generator=g)]))
    return a, b[torch.randperm(n_b, generator=g)]


@pytest.mark.parametrize("n_a, n_b", [(1000, 4000), (3000, 1200)])
def test_dense_equals_scipy_and_finds_the_planted_pairs(n_a, n_b):
    a, b = planted(n_a, n_b, n_shared=600)
    got = agreement(a, b, tau=0.7)
    cos = (a.double() @ b.double().T).numpy()
    small = cos if n_a <= n_b else cos.T
    r, c = linear_sum_assignment(small, maximize=True)
    assert got.exact and got.n_rows == min(n_a, n_b)
    assert got.pw_mcc == pytest.approx(small[r, c].mean(), abs=1e-9)
    assert got.n_shared == int((small[r, c] >= 0.7).sum()) == 600  # exactly the planted copies (random pairs < 0.7)
    assert got.fraction == pytest.approx(600 / min(n_a, n_b))


def test_sparse_is_a_bounded_lower_bound_of_the_dense_optimum():
    """A 4,096-row case solved both ways: the candidate graph's matching is a lower bound, the row maxima an
    upper bound; planted pairs are found the same."""
    a, b = planted(4096, 8192, n_shared=1500, seed=1)
    dense = agreement(a, b, tau=0.7)
    nb = top_k_cosine(a, b, k=32)
    sparse = agreement(a, b, tau=0.7, nb=nb, dense_limit=0)
    assert not sparse.exact and sparse.n_shared == dense.n_shared == 1500
    assert sparse.pw_mcc <= dense.pw_mcc + 1e-6 <= sparse.pw_mcc_upper + 2e-6  # fp32 vs fp64 cosines
    assert dense.pw_mcc - sparse.pw_mcc < 0.01  # k = 32 keeps the optimum's pairs almost always


def test_compare_reports_shared_on_decoder_and_encoder_rows(tmp_path):
    from saes import random_sae

    sa, sb = random_sae(d_in=32, n=64, seed=0), random_sae(d_in=32, n=96, seed=1)
    with torch.no_grad():  # B holds A's first 40 features, decoder and encoder alike
        sb.W_dec[:40] = sa.W_dec[:40]
        sb.W_enc[:, :40] = sa.W_enc[:, :40]
    s = compare(sa, sb, cache=False).summary["shared"]
    assert set(s) == {"decoder", "encoder"}
    for rows in ("decoder", "encoder"):
        assert s[rows]["n_shared"] == 40 and s[rows]["fraction"] == pytest.approx(40 / 64) and s[rows]["exact"]
    text = compare(sa, sb, cache=False).text()
    assert "shared (decoder rows" in text and "62.5% at cos >= 0.7" in text
    matrices = compare(sa.W_dec.detach(), sb.W_dec.detach(), cache=False).summary["shared"]
    assert set(matrices) == {"decoder"} and np.isclose(matrices["decoder"]["fraction"], 40 / 64)
