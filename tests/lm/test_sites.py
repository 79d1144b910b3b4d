"""Sites R / A / M / TC on Llama-family models, checked against transformers' own outputs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_D, TINY_LAYERS, make_tiny_llama

from sae.lm.runner import SiteRunner, Splice
from sae.lm.sites import Site, SiteError, check_finite, parse_site, position_sites


def _ids(batch=3, T=20, seed=0, pad_row=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (batch, T), generator=g)
    ids[:, 0] = 1
    attn = torch.ones_like(ids)
    if pad_row:  # right padding on one row
        ids[1, T - 7 :] = 2
        attn[1, T - 7 :] = 0
    return ids, attn


def test_parse_site_names():
    assert parse_site("blocks.15.hook_resid_post") == Site(15, "resid_post")
    assert parse_site("blocks.3.ln2.hook_normalized") == Site(3, "tc_in")
    assert parse_site("L7A") == Site(7, "attn_out")
    assert parse_site("L7TC") == Site(7, "tc_in")
    assert parse_site("L2M").hook == "blocks.2.hook_mlp_out"
    assert position_sites(5, "TC") == (Site(5, "tc_in"), Site(5, "mlp_out"))
    with pytest.raises(SiteError, match="unknown site"):
        parse_site("blocks.1.hook_q")
    with pytest.raises(SiteError, match="out of range"):
        parse_site("L9R", n_layers=4)


def test_captured_R_equals_hidden_states(tiny_llama):
    model, _ = tiny_llama
    runner = SiteRunner(model)
    ids, attn = _ids()
    ref = model(ids, attention_mask=attn, output_hidden_states=True)
    acts = runner.capture(ids, attn, [f"L{L}R" for L in range(TINY_LAYERS)] + ["L0resid_pre"])
    for L in range(TINY_LAYERS - 1):
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"], ref.hidden_states[L + 1], rtol=0, atol=0)
    # transformers applies the final norm to its last hidden state; R is the raw residual
    last = acts[f"blocks.{TINY_LAYERS - 1}.hook_resid_post"]
    torch.testing.assert_close(model.model.norm(last), ref.hidden_states[-1])
    torch.testing.assert_close(acts["blocks.0.hook_resid_pre"], ref.hidden_states[0], rtol=0, atol=0)


def test_attention_plus_mlp_plus_residual_in_is_R(tiny_llama):
    model, _ = tiny_llama
    runner = SiteRunner(model)
    ids, attn = _ids()
    for L in range(TINY_LAYERS):
        acts = runner.capture(ids, attn, [f"L{L}resid_pre", f"L{L}A", f"L{L}M", f"L{L}R"])
        pre, a, m, r = (acts[f"blocks.{L}.{h}"] for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"))
        torch.testing.assert_close(pre + a + m, r, rtol=1e-6, atol=1e-5)
        assert a.abs().mean() > 1e-3 and m.abs().mean() > 1e-3  # both carry signal


def test_tc_input_is_rms_normalised_pre_mlp_residual(tiny_llama):
    model, _ = tiny_llama
    runner = SiteRunner(model)
    ids, attn = _ids()
    L = 2
    seen = {}
    h = model.model.layers[L].post_attention_layernorm.register_forward_hook(lambda m, a, o: seen.update(out=o, inp=a[0]))
    try:
        acts = runner.capture(ids, attn, ["L2TC", "L2resid_pre", "L2A"])
    finally:
        h.remove()
    tc = acts["blocks.2.ln2.hook_normalized"]
    norms = tc.norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, math.sqrt(TINY_D)), rtol=1e-3)
    # the norm's output is TC input x its weight; its input is resid_pre + A
    torch.testing.assert_close(tc * model.model.layers[L].post_attention_layernorm.weight, seen["out"])
    torch.testing.assert_close(acts["blocks.2.hook_resid_pre"] + acts["blocks.2.hook_attn_out"], seen["inp"])


def test_identity_splice_leaves_logits_unchanged(tiny_llama):
    model, _ = tiny_llama
    runner = SiteRunner(model)
    ids, attn = _ids()
    clean = model(ids, attention_mask=attn).logits
    logits, _ = runner.forward(ids, attn)
    torch.testing.assert_close(logits, clean, rtol=0, atol=0)
    for site in ("L0R", "L1A", "L2M", "L3R", "L1resid_pre"):
        logits, _ = runner.forward(ids, attn, splices=[Splice(site, lambda x: x.clone(), keep=attn.bool())])
        torch.testing.assert_close(logits, clean, rtol=0, atol=0)
    # a transcoder-style splice: M replaced by a function of the TC input
    logits, _ = runner.forward(ids, attn, splices=[Splice("L1M", lambda x: x * 0, inp="L1TC")])
    assert not torch.allclose(logits, clean)


def test_splice_matches_a_module_hook_and_keeps_special_positions(tiny_llama):
    model, _ = tiny_llama
    runner = SiteRunner(model)
    ids, attn = _ids()
    keep = attn.bool().clone()
    keep[:, 0] = False  # BOS untouched
    f = lambda x: 0.5 * x + 0.1  # noqa: E731

    def hook(module, args, out):
        return torch.where(keep[..., None], f(out), out)

    h = model.model.layers[1].mlp.register_forward_hook(hook)
    try:
        expected = model(ids, attention_mask=attn).logits
    finally:
        h.remove()
    got, _ = runner.forward(ids, attn, splices=[Splice("L1M", f, keep=keep)])
    torch.testing.assert_close(got, expected)
    clean = model(ids, attention_mask=attn).logits
    torch.testing.assert_close(got[:, 0], clean[:, 0], rtol=0, atol=0)  # position 0 only sees BOS


def test_capture_stops_after_the_last_layer_needed(tiny_llama):
    model, _ = tiny_llama
    runner = SiteRunner(model)
    calls = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(model.model.layers)]
    handles.append(model.lm_head.register_forward_hook(lambda m, a, o: calls.append("head")))
    handles.append(model.model.norm.register_forward_hook(lambda m, a, o: calls.append("norm")))
    try:
        runner.capture(*_ids(), ["L1A", "L0R", "L1TC"])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]


def test_padding_does_not_change_real_positions(tiny_llama):
    model, _ = tiny_llama
    runner = SiteRunner(model)
    ids, attn = _ids()
    batched = runner.capture(ids, attn, ["L2R", "L2TC"])
    n = int(attn[1].sum())
    alone = runner.capture(ids[1:2, :n], None, ["L2R", "L2TC"])
    for k in batched:
        torch.testing.assert_close(batched[k][1, :n], alone[k][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3"])
def test_other_llama_layout_models(model_type):
    model = make_tiny_llama(model_type=model_type)
    runner = SiteRunner(model)
    ids, attn = _ids()
    ref = model(ids, attention_mask=attn, output_hidden_states=True)
    acts = runner.capture(ids, attn, ["L1R", "L1resid_pre", "L1A", "L1M"])
    torch.testing.assert_close(acts["blocks.1.hook_resid_post"], ref.hidden_states[2], rtol=0, atol=0)
    torch.testing.assert_close(
        acts["blocks.1.hook_resid_pre"] + acts["blocks.1.hook_attn_out"] + acts["blocks.1.hook_mlp_out"],
        acts["blocks.1.hook_resid_post"], rtol=1e-6, atol=1e-5)
    logits, _ = runner.forward(ids, attn, splices=[Splice("L2R", lambda x: x.clone())])
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=0)


def test_unsupported_architecture_lists_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(SiteError, match="supported model types: llama, mistral, qwen2, qwen3"):
        SiteRunner(model)


def test_bad_requests(tiny_llama):
    model, _ = tiny_llama
    runner = SiteRunner(model)
    ids, attn = _ids()
    with pytest.raises(SiteError, match="out of range"):
        runner.capture(ids, attn, ["L7R"])
    with pytest.raises(SiteError, match="input-only"):
        runner.forward(ids, attn, splices=[Splice("L1TC", lambda x: x)])
    with pytest.raises(SiteError, match="must read a site of its own block"):
        runner.forward(ids, attn, splices=[Splice("L1A", lambda x: x, inp="L1M")])
    with pytest.raises(SiteError, match="longer than the model allows"):
        runner.capture(torch.ones(1, 300, dtype=torch.long), None, ["L0R"])
    with pytest.raises(Exception, match="shape"):
        runner.forward(ids, attn, splices=[Splice("L1M", lambda x: x[..., :3])])


def test_check_finite_says_where():
    x = torch.zeros(2, 5, 4)
    x[1, 3, 2] = float("nan")
    with pytest.raises(SiteError, match=r"blocks.1.hook_mlp_out: 1 position\(s\), first at batch row 1, token position 3"):
        check_finite("blocks.1.hook_mlp_out", x)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3] = False
    check_finite("masked", x, mask)  # a NaN at a masked-out position is ignored


@pytest.mark.real_model
def test_sites_on_smollm2(smollm2):
    from sae.data.text import token_batches

    model, tok = smollm2
    runner = SiteRunner(model)
    batch = next(token_batches("embedded-heldout", tok, batch_size=2, max_tokens=300))
    ref = model(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    acts = runner.capture(batch.input_ids, batch.attention_mask, ["L5R", "L5resid_pre", "L5A", "L5M", "L5TC"])
    torch.testing.assert_close(acts["blocks.5.hook_resid_post"], ref.hidden_states[6], rtol=0, atol=0)
    m = batch.mask
    torch.testing.assert_close(
        (acts["blocks.5.hook_resid_pre"] + acts["blocks.5.hook_attn_out"] + acts["blocks.5.hook_mlp_out"])[m],
        acts["blocks.5.hook_resid_post"][m], rtol=1e-5, atol=1e-3)
    tc_norm = acts["blocks.5.ln2.hook_normalized"][m].norm(dim=-1)
    assert abs(float(tc_norm.mean()) - 24.0) < 0.05  # sqrt(576)
    logits, _ = runner.forward(batch.input_ids, batch.attention_mask,
                               splices=[Splice("L12M", lambda x: x.clone(), keep=m)])
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=0)


def test_mixed_attention_types_are_refused():
    model = make_tiny_llama(model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2)
    if len(set(getattr(model.config, "layer_types", None) or ())) < 2:
        pytest.skip("this transformers version has no per-layer attention types")
    with pytest.raises(SiteError, match="mixes attention types"):
        SiteRunner(model)
