"""ActivationStream: aligned multi-site batches, the half-refilled shuffle buffer, norms, disk cache."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from sae.data.stream import ActivationStream
from sae.data.text import token_batches
from sae.errors import SAEError
from sae.lm.runner import SiteRunner
from sae.lm.sites import SiteError

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out"]


def _literal(model, tok, corpus, hooks, max_tokens=None, context=256):
    """Activations of ordinary tokens in corpus order, by a plain capture per token batch."""
    runner = SiteRunner(model)
    out = {h: [] for h in hooks}
    for batch in token_batches(corpus, tok, batch_size=8, max_tokens=max_tokens, context=context):
        acts = runner.capture(batch.input_ids, batch.attention_mask, hooks)
        for h in hooks:
            out[h].append(acts[h][batch.mask])
    return {h: torch.cat(v) for h, v in out.items()}


def _collect(stream):
    batches = list(stream)
    return batches, {h: torch.cat([b[h] for b in batches]) for h in batches[0]}


def test_unshuffled_stream_equals_literal_capture(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    stream = ActivationStream(model, tok, source=tiny_corpus, hooks=HOOKS, batch_size=100, shuffle=False, progress=False)
    assert stream.dims() == {h: 64 for h in HOOKS}
    batches, got = _collect(stream)
    ref = _literal(model, tok, tiny_corpus, HOOKS)
    assert all(b[HOOKS[0]].shape[0] == 100 for b in batches[:-1])
    for h in HOOKS:
        torch.testing.assert_close(got[h], ref[h])
        assert got[h].dtype == torch.float32


def test_shuffle_is_a_seeded_permutation_with_rows_aligned(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    kw = dict(source=tiny_corpus, hooks=HOOKS, batch_size=64, buffer_tokens=512, progress=False)
    _, a = _collect(ActivationStream(model, tok, seed=1, **kw))
    _, b = _collect(ActivationStream(model, tok, seed=1, **kw))
    _, c = _collect(ActivationStream(model, tok, seed=2, **kw))
    ref = _literal(model, tok, tiny_corpus, HOOKS)
    for h in HOOKS:
        assert torch.equal(a[h], b[h])
        assert not torch.equal(a[h], c[h])
        assert not torch.equal(a[h], ref[h])
    # the same rows, and each row's sites belong to the same token
    key = lambda t: t[:, 0]  # noqa: E731
    order_a, order_ref = key(a[HOOKS[0]]).argsort(), key(ref[HOOKS[0]]).argsort()
    for h in HOOKS:
        torch.testing.assert_close(a[h][order_a], ref[h][order_ref])


def test_buffer_is_refilled_at_half(tiny_llama, tiny_corpus):
    """Until the buffer is half empty, every row comes from the first buffer_tokens tokens."""
    model, tok = tiny_llama
    buffer, bs = 400, 50
    stream = ActivationStream(model, tok, source=tiny_corpus, hooks=HOOKS[:1], batch_size=bs, buffer_tokens=buffer,
                              seed=0, progress=False)
    batches, _ = _collect(stream)
    ref = _literal(model, tok, tiny_corpus, HOOKS[:1])[HOOKS[0]]
    n_chunk_first = None
    # the buffer is filled by whole token batches: find how many tokens the first fill took
    sizes = [int(b.mask.sum()) for b in token_batches(tiny_corpus, tok, batch_size=8, context=256)]
    total = 0
    for s in sizes:
        total += s
        if total >= buffer:
            n_chunk_first = total
            break
    first_fill = ref[:n_chunk_first]
    first, last = {}, {}  # the corpus repeats documents: identical rows have several indices
    for i, r in enumerate(ref):
        first.setdefault(tuple(r.tolist()), i)
        last[tuple(r.tolist())] = i
    handed_out_before_refill = (n_chunk_first - buffer // 2) // bs
    for b in batches[:handed_out_before_refill]:
        for row in b[HOOKS[0]]:
            assert first[tuple(row.tolist())] < first_fill.shape[0]
    later = torch.cat([b[HOOKS[0]] for b in batches[handed_out_before_refill:]])
    assert any(last[tuple(r.tolist())] >= first_fill.shape[0] for r in later)


def test_mean_norms_exclude_special_tokens(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    stream = ActivationStream(model, tok, source=tiny_corpus, hooks=HOOKS, norm_tokens=300, progress=False)
    norms = stream.mean_norms()
    ref = _literal(model, tok, tiny_corpus, HOOKS, max_tokens=300)
    for h in HOOKS:
        assert norms[h] == pytest.approx(float(ref[h].double().norm(dim=-1).mean()), rel=1e-6)
    assert norms[HOOKS[1]] == pytest.approx(8.0, rel=1e-3)  # TC input: sqrt(64)


def test_max_tokens_and_drop_last(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    s = ActivationStream(model, tok, source=tiny_corpus, hooks=HOOKS[:1], batch_size=64, max_tokens=1000, progress=False)
    _, got = _collect(s)
    assert got[HOOKS[0]].shape[0] == 1000
    s = ActivationStream(model, tok, source=tiny_corpus, hooks=HOOKS[:1], batch_size=64, max_tokens=1000,
                         drop_last=True, progress=False)
    batches, got = _collect(s)
    assert got[HOOKS[0]].shape[0] == 960 and all(b[HOOKS[0]].shape[0] == 64 for b in batches)


def test_disk_cache_skips_the_model(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    corpus = tmp_path / "corpus.jsonl"
    import json

    from conftest import TINY_CORPUS

    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_CORPUS))
    kw = dict(source=corpus, hooks=HOOKS, batch_size=128, max_tokens=1500, cache=tmp_path / "acts", progress=False)
    first = ActivationStream(model, tok, **kw)
    batches1, _ = _collect(first)
    norms1 = first.mean_norms()
    assert list((tmp_path / "acts").glob("*/index.json"))

    second = ActivationStream(model, tok, **kw)
    monkeypatch.setattr(second.runner, "capture", lambda *a, **k: pytest.fail("the model ran despite the cache"))
    batches2, _ = _collect(second)
    assert len(batches1) == len(batches2)
    for b1, b2 in zip(batches1, batches2):
        for h in HOOKS:
            assert torch.equal(b1[h], b2[h])
    assert second.mean_norms() == pytest.approx(norms1)
    # a smaller request is served from the same cache; another hook set is a different cache
    smaller = ActivationStream(model, tok, **{**kw, "max_tokens": 700})
    monkeypatch.setattr(smaller.runner, "capture", lambda *a, **k: pytest.fail("the model ran despite the cache"))
    assert sum(b[HOOKS[0]].shape[0] for b in smaller) == 700
    other = ActivationStream(model, tok, **{**kw, "hooks": HOOKS[:1]})
    assert other.cache_folder != first.cache_folder


def test_cache_needs_a_named_source(tiny_llama, tiny_corpus, tmp_path):
    model, tok = tiny_llama
    with pytest.raises(SAEError, match="named source"):
        ActivationStream(model, tok, source=tiny_corpus, hooks=HOOKS, cache=tmp_path)


def test_nan_activations_say_where(tiny_corpus, tiny_tokenizer):
    model = make_tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    stream = ActivationStream(model, tiny_tokenizer, source=tiny_corpus, hooks=["blocks.2.hook_resid_post"], progress=False)
    with pytest.raises(SiteError, match=r"non-finite .* at blocks.2.hook_resid_post \(token batch 0\).*batch row 0, token position 1"):
        list(stream)


def test_bad_requests(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    with pytest.raises(SiteError, match="unknown site"):
        ActivationStream(model, tok, source=tiny_corpus, hooks=["blocks.1.hook_z"])
    with pytest.raises(SiteError, match="out of range"):
        ActivationStream(model, tok, source=tiny_corpus, hooks=["blocks.9.hook_resid_post"])
    with pytest.raises(SAEError, match="longer than the model allows"):
        ActivationStream(model, tok, source=tiny_corpus, hooks=HOOKS, context=4096)
    with pytest.raises(SAEError, match="empty"):
        list(ActivationStream(model, tok, source=[], hooks=HOOKS, progress=False))


def test_stream_feeds_the_trainer_data_source(tiny_llama, tiny_corpus):
    train = pytest.importorskip("sae.train")
    model, tok = tiny_llama
    stream = ActivationStream(model, tok, source=tiny_corpus, hooks=HOOKS[:2], batch_size=100, progress=False)
    data = train.DataSource(stream, 64)
    assert data.dims() == {h: 64 for h in HOOKS[:2]}
    norms = data.mean_norms(HOOKS[:2], 500)
    assert norms[HOOKS[1]] == pytest.approx(8.0, rel=1e-3)
    first = next(iter(data.batches(0)))
    assert set(first) == set(HOOKS[:2]) and first[HOOKS[0]].shape == (64, 64)


@pytest.mark.real_model
def test_stream_on_smollm2(smollm2):
    model, tok = smollm2
    stream = ActivationStream(model, tok, source="embedded-heldout", hooks=["blocks.3.hook_resid_post", "blocks.3.ln2.hook_normalized"],
                              batch_size=128, max_tokens=400, norm_tokens=400, progress=False)
    batches = list(stream)
    assert sum(b["blocks.3.hook_resid_post"].shape[0] for b in batches) == 400
    norms = stream.mean_norms()
    assert norms["blocks.3.ln2.hook_normalized"] == pytest.approx(24.0, rel=2e-3)
    assert 1 < norms["blocks.3.hook_resid_post"] < 1000


@pytest.mark.real_model
def test_loaded_embedded_model_shares_the_named_cache(smollm2, tmp_path):
    """train.py post-processes with the model object the training stream loaded: same cache, no second capture."""
    model, tok = smollm2
    kw = dict(source="embedded-heldout", hooks=["blocks.1.hook_resid_post"], max_tokens=64, cache=tmp_path, progress=False)
    by_name = ActivationStream("embedded", model_dtype=model.dtype, **kw)  # the cache key holds the dtype
    by_object = ActivationStream(model, tok, **kw)
    assert by_object.model_label == by_name.model_label == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert by_object.cache_folder == by_name.cache_folder
