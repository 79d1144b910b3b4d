"""Fast capture: the dtype choice, bf16 activations against fp32, packed rows, and the massive-activation
rule in the stream and the evaluation, each against an independent computation."""

from __future__ import annotations

import copy

import pytest
import torch

from sae import SAEMeta, SparseAutoencoder, precision
from sae.data.massive import massive_positions
from sae.data.stream import ActivationStream
from sae.data.text import TokenBatcher, token_batches
from sae.errors import SAEError
from sae.eval.evaluate import evaluate
from sae.lm.runner import SiteRunner

SITES = ["blocks.2.hook_resid_post", "blocks.2.hook_attn_out", "blocks.2.hook_mlp_out", "blocks.2.ln2.hook_normalized"]


def test_auto_dtype_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "fast_bf16", lambda device=None: True)
    assert precision.resolve_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(precision, "fast_bf16", lambda device=None: False)
    assert precision.resolve_dtype("auto") == torch.float32
    assert precision.resolve_dtype("bfloat16") == torch.bfloat16 and precision.resolve_dtype(None) == torch.float32
    assert precision.resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(SAEError, match="unknown dtype 'fp8'"):
        precision.resolve_dtype("fp8")


def _relative_errors(model, tok, texts, sites) -> dict[str, float]:
    """Pooled ||a_bf16 - a_fp32|| / ||a_fp32|| per site over the ordinary tokens of `texts`."""
    low = copy.deepcopy(model).to(torch.bfloat16)
    errs = {}
    batch = next(token_batches(texts, tok, batch_size=len(texts)))
    ref = SiteRunner(model).capture(batch.input_ids, batch.attention_mask, sites)
    got = SiteRunner(low).capture(batch.input_ids, batch.attention_mask, sites)
    for s in sites:
        a, b = ref[s][batch.mask].double(), got[s][batch.mask].double()
        assert got[s].dtype == torch.bfloat16
        errs[s] = float((a - b).norm() / a.norm())
    return errs


def test_bf16_capture_is_close_to_fp32_on_a_tiny_model(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    errs = _relative_errors(model, tok, tiny_corpus[:6], SITES)
    assert max(errs.values()) < 0.03, errs  # bf16 keeps 8 mantissa bits: ~0.4% per rounding, a few layers deep
    assert min(errs.values()) > 0  # the two captures really ran in different dtypes


@pytest.mark.real_model
def test_bf16_capture_is_close_to_fp32_on_the_real_model(smollm2):
    model, tok = smollm2
    texts = ["The French Revolution was a period of political and societal change in France.",
             "Photosynthesis is the process by which plants turn light into chemical energy."]
    sites = [s.replace("blocks.2.", "blocks.15.") for s in SITES]
    errs = _relative_errors(model, tok, texts, sites)
    assert max(errs.values()) < 0.1, errs  # measured at L15 (docs/activations.md): R 2%, A 4%, M 6%, TC 2%


def test_packed_rows_keep_every_document_token_in_order(tiny_tokenizer, tiny_corpus):
    b = TokenBatcher(tiny_tokenizer, context=24, batch_size=4, pack=True)
    docs = tiny_corpus[:9]
    expected = [t for d in docs for t in b.encode(d)]  # [BOS] + tokens, document after document
    rows = [r for batch in b.batches(docs) for r in batch.input_ids[batch.attention_mask.bool()].view(-1).split(24)]
    flat, rebuilt = torch.cat(rows).tolist(), []
    for r in rows:  # a row that starts mid-document got a BOS of its own: drop it to compare
        rebuilt += r.tolist()[1:] if rebuilt and expected[len(rebuilt)] != b.bos else r.tolist()
    assert rebuilt == expected and all(r[0] == b.bos for r in rows)
    batches = list(b.batches(docs))
    masks = torch.cat([m[a.bool()] for batch in batches for m, a in zip(batch.mask, batch.attention_mask)])
    ids = torch.tensor(flat)
    assert torch.equal(masks, ids != b.bos)  # every BOS (document start or row start) is masked, nothing else
    assert all((batch.attention_mask[:-1] == 1).all() for batch in batches[:-1])  # full rows


def _brute_massive(acts: list[torch.Tensor], mask: torch.Tensor, factor: float) -> torch.Tensor:
    out = torch.zeros_like(mask)
    for a in acts:
        norms = [float(v.norm()) for v in a[mask]]
        median = sorted(norms)[(len(norms) - 1) // 2]  # torch's median: the lower of the two middle values
        out |= mask & (a.norm(dim=-1) > factor * median)
    return out


def test_massive_rule_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 20, 8, generator=g), torch.randn(3, 20, 4, generator=g)
    a[0, 1] *= 40  # a massive position at one site
    b[2, 5] *= 40  # and one at the other
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[:, 0] = False  # BOS
    a[1, 0] *= 1000  # a huge BOS is not counted: it is not an ordinary position
    got = massive_positions([a, b], mask)
    assert torch.equal(got, _brute_massive([a, b], mask, 10.0))
    assert got.sum() == 2 and got[0, 1] and got[2, 5]
    assert not massive_positions([a, b], mask, factor=0).any()


def test_stream_leaves_massive_positions_out(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    hooks = SITES[:2]
    factor = 1.3  # the random model has no massive activations: a low factor makes the rule bite
    stream = ActivationStream(model, tok, source=tiny_corpus, hooks=hooks, batch_size=64, shuffle=False,
                              massive_factor=factor, progress=False)
    got = torch.cat([c[hooks[0]] for c in stream.chunks()])
    runner, kept, dropped = SiteRunner(model), [], 0
    for batch in token_batches(tiny_corpus, tok, batch_size=8, context=stream.context):
        acts = runner.capture(batch.input_ids, batch.attention_mask, hooks)
        massive = _brute_massive([acts[h] for h in hooks], batch.mask, factor)
        dropped += int(massive.sum())
        kept.append(acts[hooks[0]][batch.mask & ~massive])
    assert dropped > 0 and stream.massive_tokens == dropped
    torch.testing.assert_close(got, torch.cat(kept))


def test_evaluation_reports_and_leaves_out_massive_positions(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    g = torch.Generator().manual_seed(1)
    sae = SparseAutoencoder.from_weights(torch.randn(64, 128, generator=g) / 8, torch.zeros(128),
                                         torch.randn(128, 64, generator=g) / 8, torch.zeros(64), activation="topk", k=8,
                                         meta=SAEMeta(name="s", hook_in=SITES[0]))
    full = evaluate([sae], model, tiny_corpus, tokenizer=tok, tokens=10_000, lm_tokens=0, massive_factor=0,
                    progress=False).eval.iloc[0]
    cut = evaluate([sae], model, tiny_corpus, tokenizer=tok, tokens=10_000, lm_tokens=0, massive_factor=1.3,
                   progress=False).eval.iloc[0]
    runner, sse, n = SiteRunner(model), 0.0, 0
    for batch in token_batches(tiny_corpus, tok, batch_size=8):
        x = runner.capture(batch.input_ids, batch.attention_mask, [SITES[0]])[SITES[0]]
        keep = batch.mask & ~_brute_massive([x], batch.mask, 1.3)
        with torch.no_grad():
            sse += float((sae(x[keep]) - x[keep]).double().pow(2).sum())
        n += int(keep.sum())
    assert full["massive_tokens"] == 0 and cut["massive_tokens"] > 0
    assert cut["tokens"] == n and cut["tokens"] + cut["massive_tokens"] == full["tokens"]
    assert cut["mse"] == pytest.approx(sse / (n * 64), rel=1e-5)


@pytest.mark.real_model
@pytest.mark.parametrize("fast", [True, False])
def test_evaluation_runs_the_named_model_in_the_auto_dtype(monkeypatch, fast):
    monkeypatch.setattr(precision, "fast_bf16", lambda device=None: fast)
    sae = SparseAutoencoder(576, 64, activation="topk", k=4, meta=SAEMeta(name="s", hook_in="blocks.1.hook_resid_post"))
    result = evaluate([sae], "embedded", "embedded-heldout", tokens=32, lm_tokens=0, progress=False)
    assert result.settings["model_dtypes"] == ["bfloat16" if fast else "float32"]
    forced = evaluate([sae], "embedded", "embedded-heldout", tokens=32, lm_tokens=0, dtype="float32", progress=False)
    assert forced.settings["model_dtypes"] == ["float32"]
