"""Streamed top-k cosine equals a dense computation; the cache is keyed by content and k."""

import pytest
import torch

from geometry.similarity import segment_topk, top_k_cosine, unit_rows


def assert_exact(top, s, k):
    """top holds the k best values of every row of the dense matrix s, and indices that carry them
    (so ties may come back in any order)."""
    want = s.topk(min(k, s.shape[1]), dim=1).values
    torch.testing.assert_close(top.values, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.gather(1, top.indices), top.values, atol=1e-5, rtol=0)
    assert all(len(set(row)) == len(row) for row in top.indices.tolist())


@pytest.mark.parametrize(
    "n_a, n_b, d, k, block, precision",
    [
        (300, 1000, 64, 8, 128, "fp32"),  # many blocks, B streamed
        (1000, 300, 64, 8, 77, "fp32"),  # A streamed, ragged last block
        (400, 900, 32, 16, 100, "bf16"),  # low-precision tile + fp32 rescoring
        (500, 700, 32, 5, 64, "tf32"),
        (50, 60, 16, 100, None, "fp32"),  # k larger than either side
        (5, 700, 16, 3, 64, "fp32"),  # fewer rows than k per block on one side
    ],
)
def test_streamed_topk_equals_dense(n_a, n_b, d, k, block, precision):
    g = torch.Generator().manual_seed(n_a + n_b)
    a, b = torch.randn(n_a, d, generator=g), torch.randn(n_b, d, generator=g)
    m = min(n_a, n_b, 20)
    b[:m] = a[:m] + 0.1 * torch.randn(m, d, generator=g)  # some strong matches
    nb = top_k_cosine(a, b, k, block=block, precision=precision, device="cpu")
    s = unit_rows(a) @ unit_rows(b).T
    assert_exact(nb.a_to_b, s, k)
    assert_exact(nb.b_to_a, s.T, k)


def test_identical_and_duplicate_rows():
    a = unit_rows(torch.randn(200, 32, generator=torch.Generator().manual_seed(0)))
    nb = top_k_cosine(a, a, 4, block=50)
    assert torch.equal(nb.b_to_a.indices[:, 0], torch.arange(200))
    torch.testing.assert_close(nb.b_to_a.values[:, 0], torch.ones(200))


def test_cache_reuse_swap_and_smaller_k(tmp_path):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(120, 16, generator=g), torch.randn(300, 16, generator=g)
    first = top_k_cosine(a, b, 8, cache=tmp_path)
    assert not first.cached and len(list(tmp_path.glob("*.safetensors"))) == 1
    again = top_k_cosine(a, b, 8, cache=tmp_path)
    assert again.cached and torch.equal(again.b_to_a.indices, first.b_to_a.indices)
    fewer = top_k_cosine(a, b, 3, cache=tmp_path)  # a cached larger k serves a smaller one
    assert fewer.cached and torch.equal(fewer.a_to_b.values, first.a_to_b.values[:, :3])
    swapped = top_k_cosine(b, a, 8, cache=tmp_path)  # the same pair in the other order
    assert swapped.cached and torch.equal(swapped.a_to_b.indices, first.b_to_a.indices)
    other = top_k_cosine(a + 1, b, 8, cache=tmp_path)  # other content: a new entry
    assert not other.cached and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_segment_topk():
    seg = torch.tensor([2, 0, 2, 2, 0, 1])
    val = torch.tensor([0.1, 0.5, 0.9, 0.3, -0.2, 0.4])
    idx = torch.arange(6)
    v, i = segment_topk(seg, val, idx, 4, 2)
    assert v.tolist()[:3] == [pytest.approx([0.5, -0.2]), pytest.approx([0.4, float("-inf")]), pytest.approx([0.9, 0.3])]
    assert i.tolist() == [[1, 4], [5, -1], [2, 3], [-1, -1]]
