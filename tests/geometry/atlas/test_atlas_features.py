"""The atlas's per-feature quantities against brute-force computations, and the whole build on a tiny Llama."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_CORPUS

from geometry.atlas import build_atlas
from geometry.atlas.features import TokenTexts, display_tokens, logit_lens, nearest_in_self, quantile_bins
from geometry.atlas.site import read_shard
from geometry.matching import pair_links
from sae.interp.store import HIST_EDGES, TopContexts


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_logit_lens_is_the_unembedding_of_the_normed_direction():
    g = torch.Generator().manual_seed(0)
    W, gain, U = torch.randn(37, 16, generator=g), torch.rand(16, generator=g) + 0.5, torch.randn(300, 16, generator=g)
    lens = logit_lens(W, gain, U, n=10, chunk=8)
    dense = ((W * gain) @ U.T).numpy()  # [F, V]
    for f in range(37):
        order = np.argsort(-dense[f])
        assert lens.top_ids[f].tolist() == order[:10].tolist()
        assert lens.bottom_ids[f].tolist() == order[::-1][:10].tolist()
        np.testing.assert_allclose(lens.top_values[f], dense[f, order[:10]], rtol=1e-5)


def test_nearest_in_self_and_pair_links_equal_the_cosine_matrix():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(20, 8, generator=g)
    B = torch.cat([unit(A[:5]) + 0.05 * torch.randn(5, 8, generator=g),  # near copies of A's first five
                   unit(A[:5]) + 0.05 * torch.randn(5, 8, generator=g),  # a second child each
                   torch.randn(30, 8, generator=g)])
    cos_aa = (unit(A) @ unit(A).T).numpy()
    np.fill_diagonal(cos_aa, -np.inf)
    ids, cos = nearest_in_self(A, k=4)
    assert ids.tolist() == np.argsort(-cos_aa, axis=1)[:, :4].tolist()
    np.testing.assert_allclose(cos, np.sort(cos_aa, axis=1)[:, ::-1][:, :4], rtol=1e-5)

    a_links, b_links = pair_links(A, B, cut=0.9, k=3)
    cos_ab = (unit(A) @ unit(B).T).numpy()  # [20, 40]
    assert a_links.match_ids.tolist() == np.argsort(-cos_ab, axis=1)[:, :3].tolist()
    best_a = cos_ab.argmax(0)  # every B row's best A row
    for f in range(20):  # children: B rows whose best A row is f, at cos >= cut, best first
        kids = [j for j in np.argsort(-cos_ab[f]) if best_a[j] == f and cos_ab[f, j] >= 0.9]
        assert [j for j, _ in a_links.children[f]] == kids
    assert all(len(a_links.children[f]) == 2 for f in range(5)) and (a_links.parent == -1).all()
    expected_parent = np.where(cos_ab.max(0) >= 0.9, best_a, -1)
    assert b_links.parent.tolist() == expected_parent.tolist() and b_links.parent[:10].tolist() == [0, 1, 2, 3, 4] * 2
    assert all(not c for c in b_links.children)


def test_quantile_bins_split_the_firings_into_equal_shares():
    hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
    hist[10:20] = 100  # ten equal bins
    bins = quantile_bins(hist, n_bins=5)
    assert [round(s, 6) for *_, s in bins] == [0.2] * 5
    assert bins[0][0] == HIST_EDGES[10] and bins[-1][1] == HIST_EDGES[20]
    assert all(bins[i][1] == bins[i + 1][0] for i in range(4))
    one = np.zeros_like(hist)
    one[7] = 3
    assert quantile_bins(one) == [(HIST_EDGES[7], HIST_EDGES[8], 1.0)]
    assert quantile_bins(np.zeros_like(hist)) == []


def test_display_tokens_merge_the_byte_pieces_of_a_character():
    ctx = TopContexts.__new__(TopContexts)
    ctx.vocab = {1: " caf", 2: "\ufffd", 3: "\ufffd", 4: " au", 5: " lait"}
    ctx.token_bytes = {2: "c3", 3: "a9"}  # é split in two byte-level pieces
    ids = np.array([-1, 1, 2, 3, 4, 5, -1])
    acts = np.array([0, 0.5, 1.0, 2.0, 0, 0.25, 0], np.float32)
    texts, values, centre = display_tokens(TokenTexts(ctx), ids, acts, centre=3)
    assert texts == [" caf", "é", " au", " lait"] and values == [0.5, 2.0, 0.0, 0.25] and centre == 1


def test_build_atlas_on_a_tiny_llama(tiny_llama, tmp_path):
    """Two SAEs of different widths at one site of a real (tiny, random) Llama: contexts, records, links
    and every file of the site and the Neuronpedia export."""
    from saes import site_sae

    model, tok = tiny_llama
    narrow = site_sae("blocks.1.hook_resid_post", n=32, seed=0)
    wide = site_sae("blocks.1.hook_resid_post", n=96, seed=1)
    with torch.no_grad():  # the wide SAE holds copies of the narrow one's first 8 directions
        wide.W_dec[:8] = narrow.W_dec[:8] * 1.5
    atlas = build_atlas({"narrow": narrow, "wide": wide}, tmp_path / "atlas", model=model, tokenizer=tok,
                        dataset=list(TINY_CORPUS), tokens=10**6, n_random=6, cut=0.95, neuronpedia=True, progress=False)
    table = atlas.tables["narrow"]
    assert len(table) == 32 and list(table.columns[:5]) == ["feature", "label", "count", "frequency", "max_activation"]
    assert table["best in wide"].iloc[:8].tolist() == list(range(8))
    assert (atlas.out / "index.html").is_file() and (atlas.out / "narrow" / "feature.html").is_file()
    batch = json.loads((atlas.out / "wide" / "neuronpedia" / "batch-0.json").read_text())
    assert [f["feature_index"] for f in batch["features"]][:3] == [0, 1, 2]
    records = {}
    for path in sorted((atlas.out / "narrow" / "data").glob("features-*.js")):
        records.update({r["id"]: r for r in read_shard(path)})
    assert len(records) == 32
    r0 = records[0]
    link = next(link for link in r0["links"] if link["slug"] == "wide")
    assert [0, 1.0] in link["children"] or link["children"][0][0] == 0
    fired = [r for r in records.values() if r["count"]]
    assert fired and all(r["top"] and sum(r["hist"]["counts"]) == r["count"] for r in fired)
    for r in fired:  # the samples' shares add up to one, their contexts lie in their bins
        assert sum(b["share"] for b in r["samples"]) == pytest.approx(1.0, abs=5e-3)  # each rounded
        for b in r["samples"]:
            assert all(b["lo"] * 0.999 <= c["value"] <= b["hi"] * 1.001 for c in b["contexts"])
