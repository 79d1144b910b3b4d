"""sae.interp.contexts: streamed top / random contexts equal a brute-force computation; resume; files; CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CORPUS, TINY_D

from sae.data.text import TokenBatcher
from sae.errors import SAEFileError, ShapeError, run_cli
from sae.interp.cli import main
from sae.interp.collector import hash_keys
from sae.interp.contexts import collect_contexts, top_contexts
from sae.interp.documents import ordered_documents
from sae.interp.store import ContextsError, TopContexts
from sae.lm.embedded import corpus_documents
from sae.lm.runner import SiteRunner
from sae.model import SAEMeta, SparseAutoencoder

HOOK = "blocks.1.hook_resid_post"
DOCS = TINY_CORPUS[:8] + [
    "Volcanoes erupt when magma rises through cracks in the crust.",
    "The printing press spread books and ideas across Europe.",
    "Chess is a board game for two players on a checkered board.",
]
CORPUS = [{"title": f"Doc {i}", "text": t} for i, t in enumerate(DOCS)]


def make_sae(activation="jumprelu", n=48, seed=0) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(TINY_D, n, activation=activation, k=6, meta=SAEMeta(name="tiny", hook_in=HOOK))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(TINY_D, n, generator=g) / TINY_D**0.5)
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.1)
        sae.W_dec.copy_(torch.randn(n, TINY_D, generator=g))
        sae.threshold.fill_(0.4)
    return sae.requires_grad_(False)


def brute_force(model, tok, sae, docs, window, n_top, n_random, seed=0):
    """Dense activations document by document, then per feature: sort documents by their maximum (ties:
    the document read first in the seeded order), and hash every activating token."""
    read = {i: place for place, (i, _, _) in enumerate(ordered_documents(CORPUS, True, seed))}
    assert sorted(read) == list(range(len(docs))) and list(read) != sorted(read)  # a real permutation
    runner, batcher = SiteRunner(model), TokenBatcher(tok, context=256)
    per_doc = []
    for text in docs:
        ids = torch.tensor([batcher.encode(text, 256)])
        acts = sae.encode(runner.capture(ids, None, [HOOK])[HOOK][0])  # [T, F]
        ordinary = ~torch.isin(ids[0], batcher.special)
        per_doc.append((ids[0].numpy(), acts.where(ordinary[:, None], 0.0).numpy(), ordinary.numpy()))
    before, after = window
    out = {"top": {}, "random": {}, "counts": np.zeros(sae.n_features, np.int64)}
    for f in range(sae.n_features):
        maxima = [(float(a[:, f].max()), d, int(a[:, f].argmax())) for d, (_, a, _) in enumerate(per_doc)]
        ranked = sorted([m for m in maxima if m[0] > 0], key=lambda m: (-m[0], read[m[1]]))
        out["top"][f] = [(d, p, v) for v, d, p in ranked[:n_top]]
        items = [(d, p) for d, (_, a, _) in enumerate(per_doc) for p in np.flatnonzero(a[:, f] > 0)]
        out["counts"][f] = len(items)
        if items:
            keys = hash_keys(np.array([i[0] for i in items]), np.array([i[1] for i in items]), np.full(len(items), f), seed)
            out["random"][f] = [(items[i][0], items[i][1]) for i in np.argsort(-keys)[:n_random]]
        else:
            out["random"][f] = []
    return out, per_doc


@pytest.mark.parametrize("activation,n_random", [("jumprelu", 4), ("topk", 4), ("topk", 0)])
def test_streamed_contexts_equal_brute_force(tiny_llama, activation, n_random):
    model, tok = tiny_llama
    sae = make_sae(activation)
    window, n_top = (5, 2), 3
    ctx = top_contexts(sae, model=model, tokenizer=tok, dataset=CORPUS, tokens=10**6, n_top=n_top,
                       n_random=n_random, window=window, batch_size=3, context=256, progress=False)
    ref, per_doc = brute_force(model, tok, sae, DOCS, window, n_top, n_random)
    assert ctx.complete and ctx.docs == len(DOCS)
    assert ctx.tokens == sum(int(o.sum()) for _, _, o in per_doc)
    np.testing.assert_array_equal(ctx.counts, ref["counts"])
    fired = np.flatnonzero(ref["counts"])
    assert len(fired) > sae.n_features // 2  # the case is not trivial
    values = np.concatenate([a[o] for _, a, o in per_doc])  # [tokens, F] every ordinary token's activations
    for f in range(sae.n_features):  # half-octave bins 2^-10 .. 2^12, the ends open
        v = values[:, f][values[:, f] > 0]
        expected = np.bincount(np.clip(np.floor(2 * np.log2(v)).astype(int) + 20, 0, 43), minlength=44)
        np.testing.assert_array_equal(ctx.hist[f], expected, err_msg=f"feature {f}")
    table = ctx.table()
    for f in range(sae.n_features):
        top = table[(table.feature == f) & (table.kind == "top")]
        assert [(r.doc, r.position) for r in top.itertuples()] == [(d, p) for d, p, _ in ref["top"][f]]
        np.testing.assert_allclose(top["activation"], [v for *_, v in ref["top"][f]], rtol=1e-4, atol=1e-5)
        rnd = table[(table.feature == f) & (table.kind == "random")]
        assert sorted((r.doc, r.position) for r in rnd.itertuples()) == sorted(ref["random"][f])
        for r in table[table.feature == f].itertuples():  # every window: the document's tokens and activations
            ids, acts, ordinary = per_doc[r.doc]
            lo, hi = max(r.position - window[0], 0), min(r.position + window[1] + 1, len(ids))
            keep = ordinary[lo:hi]
            assert r.tokens == [tok.decode([int(i)]) for i in ids[lo:hi][keep]]
            np.testing.assert_allclose(r.acts, acts[lo:hi, f][keep], rtol=1e-4, atol=1e-5)
            assert r.title == f"Doc {r.doc}" and "«" in r.text


def test_budget_resume_and_files(tiny_llama, tmp_path):
    model, tok = tiny_llama
    sae = make_sae()
    kw = dict(model=model, tokenizer=tok, dataset=CORPUS, n_top=3, n_random=2, window=(4, 1), batch_size=2,
              context=256, progress=False)
    full = top_contexts(sae, tokens=10**6, **kw)
    part = top_contexts(sae, tokens=40, out=tmp_path / "c", **kw)
    assert 40 <= part.tokens < full.tokens and not part.complete and 0 < part.docs < len(DOCS)
    resumed = top_contexts(sae, tokens=10**6, out=tmp_path / "c", resume=True, **kw)
    loaded = TopContexts.load(tmp_path / "c")
    for got in (resumed, loaded):
        assert (got.tokens, got.docs, got.complete) == (full.tokens, full.docs, True)
        for name in ("doc", "pos", "tokens"):  # scores: equal up to rounding (other documents share a batch)
            np.testing.assert_array_equal(getattr(got.top, name), getattr(full.top, name))
            np.testing.assert_array_equal(getattr(got.random, name), getattr(full.random, name))
        np.testing.assert_allclose(got.top.score, full.top.score, rtol=1e-5)
        np.testing.assert_array_equal(got.counts, full.counts)
        np.testing.assert_array_equal(got.hist, full.hist)
        np.testing.assert_array_equal(got.token_counts, full.token_counts)
    assert loaded.table(range(5))[["doc", "position", "text"]].equals(full.table(range(5))[["doc", "position", "text"]])
    assert (tmp_path / "c" / "firing.csv").is_file() and (tmp_path / "c" / "contexts.json").is_file()
    with pytest.raises(ContextsError, match="other settings"):
        top_contexts(sae, tokens=10**6, out=tmp_path / "c", resume=True, **{**kw, "n_top": 4})
    older = TopContexts.load(tmp_path / "c")  # as an older version saved it: no histogram
    del older.settings["histogram"]
    older.hist = None
    older.save(tmp_path / "old")
    upgraded = top_contexts(sae, tokens=10**6, out=tmp_path / "old", resume=True, **kw)
    np.testing.assert_array_equal(upgraded.hist, full.hist)
    retrained = make_sae(seed=1)  # same name, other weights
    with pytest.raises(ContextsError, match=r"other settings \(fingerprint\)"):
        top_contexts(retrained, tokens=10**6, out=tmp_path / "c", resume=True, **kw)
    name = sae.meta.name
    refreshed = collect_contexts({name: retrained}, tokens=10**6, out={name: tmp_path / "c"}, resume=True, refresh=True,
                                 **kw)[name]
    fresh = top_contexts(retrained, tokens=10**6, **kw)
    np.testing.assert_array_equal(refreshed.counts, fresh.counts)
    np.testing.assert_array_equal(refreshed.top.doc, fresh.top.doc)
    assert TopContexts.load(tmp_path / "c").settings["fingerprint"] == fresh.settings["fingerprint"]
    before_dtype = TopContexts.load(tmp_path / "c")  # an older version's contexts of the old weights: no model_dtype
    del before_dtype.settings["model_dtype"]
    before_dtype.settings["fingerprint"] = older.settings["fingerprint"]
    before_dtype.save(tmp_path / "c")
    again = collect_contexts({name: retrained}, tokens=10**6, out={name: tmp_path / "c"}, resume=True, refresh=True,
                             **kw)[name]
    np.testing.assert_array_equal(again.top.doc, fresh.top.doc)
    assert again.settings["model_dtype"] == "float32"
    with pytest.raises(ContextsError, match="other settings"):  # refresh forgives new weights, not new settings
        collect_contexts({name: retrained}, tokens=10**6, out={name: tmp_path / "c"}, resume=True, refresh=True,
                         **{**kw, "n_top": 4})
    (tmp_path / "c" / "contexts.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(SAEFileError, match="corrupt"):
        TopContexts.load(tmp_path / "c")
    with pytest.raises(ShapeError, match="d_in"):
        wrong = SparseAutoencoder(32, 8, activation="relu", meta=SAEMeta(name="w", hook_in=HOOK))
        top_contexts(wrong, tokens=10, **kw)
    with pytest.raises(ContextsError, match="out of range"):
        full.table([sae.n_features])


def test_hash_keys_are_uniform():
    n = 200_000
    keys = hash_keys(np.arange(n) // 50, np.arange(n) % 50, np.full(n, 7))
    assert keys.min() >= 0 and keys.max() < 1
    hist = np.histogram(keys, bins=10, range=(0, 1))[0] / n
    assert np.abs(hist - 0.1).max() < 0.005  # binomial sd ~0.0007
    assert not np.array_equal(keys, hash_keys(np.arange(n) // 50, np.arange(n) % 50, np.full(n, 7), seed=1))


@pytest.mark.real_model
def test_contexts_on_the_embedded_model(smollm2, tmp_path):
    """A planted word: a feature reading the embeddings (blocks.0 resid_pre) that fires on one token."""
    model, tok = smollm2
    word = tok(" volcano", add_special_tokens=False)["input_ids"]
    assert len(word) == 1
    emb = model.get_input_embeddings().weight[word[0]]
    sae = SparseAutoencoder(576, 2, activation="jumprelu", meta=SAEMeta(name="planted", hook_in="blocks.0.hook_resid_pre"))
    with torch.no_grad():
        sae.W_enc[:, 0] = emb / emb.norm() ** 2  # 1.0 on the planted token
        sae.W_enc[:, 1] = -emb / emb.norm() ** 2
        sae.threshold.fill_(0.9)
        sae.W_dec.normal_()
    sae.requires_grad_(False)
    docs = ["Mount Etna is an active volcano in Sicily.", "The cat sleeps.", "A volcano erupted; the volcano was loud."]
    ctx = top_contexts(sae, model=model, tokenizer=tok, dataset=docs, tokens=1000, n_top=5, n_random=5,
                       progress=False, out=tmp_path)
    table = ctx.table([0])
    assert ctx.counts.tolist() == [3, 0]
    assert sorted(table.loc[table.kind == "top", "doc"]) == [0, 2]
    assert all("« volcano»" in t for t in table["text"]) and len(table[table.kind == "random"]) == 3
    # the embedded corpus's titles come along (a feature firing on every token: each document is a top one)
    with torch.no_grad():
        sae.b_enc.fill_(2.0)
    ctx = top_contexts(sae, model=model, tokenizer=tok, dataset="embedded-heldout", tokens=300, n_top=50,
                       progress=False)
    top = ctx.table([0]).query("kind == 'top'")
    documents = corpus_documents("heldout")
    assert len(top) == ctx.docs >= 2 and all(r.title == documents[r.doc][0] != "" for r in top.itertuples())


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out
    assert all(opt in helptext for opt in ("--n-random", "--resume", "--window", "--tokens"))
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: main(["demo:L99R-8x", "--out", str(tmp_path)]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error:") and len(err.splitlines()) == 1
