"""Evaluation: identity and zero SAEs, every metric against a literal computation, tables, CLI, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_D, make_tiny_llama
from saes import site_sae

import sae
from sae import SAEMeta, SparseAutoencoder, save
from sae.data.text import token_batches
from sae.eval.cli import build_parser, main
from sae.eval.evaluate import evaluate
from sae.eval.tables import EVAL_COLUMNS, FREQUENCY_COLUMNS, POSITION_COLUMNS
from sae.lm.sites import SiteError

D = TINY_D


def identity_sae(hook_in: str, hook_out: str | None = None, activation: str = "relu") -> SparseAutoencoder:
    """x -> relu(x) - relu(-x) = x exactly: W_enc = [I, -I], W_dec = [I; -I], zero biases."""
    eye = torch.eye(D)
    return SparseAutoencoder.from_weights(
        torch.cat([eye, -eye], 1), torch.zeros(2 * D), torch.cat([eye, -eye], 0), torch.zeros(D),
        activation=activation, k=D, meta=SAEMeta(hook_in=hook_in, hook_out=hook_out or hook_in),
    )


def zero_sae(hook_in: str, hook_out: str | None = None) -> SparseAutoencoder:
    return SparseAutoencoder(D, 2 * D, activation="relu", meta=SAEMeta(hook_in=hook_in, hook_out=hook_out or hook_in))


KW = dict(tokens=600, lm_tokens=None, batch_size=4, progress=False)


def test_identity_sae_gives_zero_delta_lm_and_full_ev(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    saes = {
        "idR": identity_sae("blocks.1.hook_resid_post"),
        "idA": identity_sae("blocks.2.hook_attn_out"),
        "idM": identity_sae("blocks.0.hook_mlp_out"),
        "idLast": identity_sae("blocks.3.hook_resid_post"),
    }
    res = evaluate(saes, model, tiny_corpus, tokenizer=tok, **KW)
    ev = res.eval.set_index("sae")
    for name in saes:
        r = ev.loc[name]
        assert r.tokens == 600 and r.mse == 0 and r.l0 == pytest.approx(D)
        assert r.explained_variance_uncentred == 1 and r.explained_variance_centred == 1
        assert r.delta_lm_loss == 0 and r.kl_div == 0 and r.ce_loss_recovered == 1
        assert r.ce_zero_ablation != r.ce_clean


def test_zero_sae_reproduces_zero_ablation(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    saes = {"zM": zero_sae("blocks.1.hook_mlp_out"), "zR": zero_sae("blocks.2.hook_resid_post"),
            "zTC": zero_sae("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")}
    ev = evaluate(saes, model, tiny_corpus, tokenizer=tok, **KW).eval.set_index("sae")
    for name in saes:
        r = ev.loc[name]
        assert r.ce_spliced == r.ce_zero_ablation and r.ce_loss_recovered == 0
        assert r.l0 == 0 and r.explained_variance_uncentred == 0 and r.never_fired_fraction == 1
    assert ev.loc["zM"].ce_zero_ablation == ev.loc["zTC"].ce_zero_ablation  # the same output site


def _literal_metrics(model, tok, corpus, s: SparseAutoencoder, layer: int, kind: str, tokens: int, edges):
    """Every metric by hand: transformers' own forward with a module hook, no SiteRunner."""
    block = model.model.layers[layer]
    xs, ys, yhats, l0s, positions, ce_c, ce_s, ce_z, kls = [], [], [], [], [], [], [], [], []
    for batch in token_batches(corpus, tok, batch_size=4, max_tokens=tokens, context=256):
        ids, attn, mask = batch.input_ids, batch.attention_mask, batch.mask
        store = {}

        def tc_pre(m, args):
            x = args[0]
            store["tc"] = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)

        def replace(m, args, out, fn):
            value = out[0] if isinstance(out, tuple) else out
            new = torch.where(mask[..., None], fn(value), value)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        def run(fn=None):
            hooks = [block.post_attention_layernorm.register_forward_pre_hook(tc_pre)]
            module = {"mlp": block.mlp, "attn": block.self_attn, "resid": block}[kind]
            capture = lambda m, a, o: store.__setitem__("y", o[0] if isinstance(o, tuple) else o)  # noqa: E731
            hooks.append(module.register_forward_hook(capture))
            if fn is not None:
                hooks.append(module.register_forward_hook(lambda m, a, o: replace(m, a, o, fn)))
            try:
                return model(ids, attention_mask=attn).logits
            finally:
                for h in hooks:
                    h.remove()

        clean = run()
        y = store["y"]
        x = store["tc"] if s.meta.hook_in.endswith("ln2.hook_normalized") else y
        code = s.encode(x)
        y_hat = s.decode(code)
        spliced = run(lambda v: s.decode(s.encode(store["tc"] if x is not y else v)))
        zero = run(lambda v: torch.zeros_like(v))
        score = mask[:, :-1] & mask[:, 1:]
        tgt = ids[:, 1:][score]
        lc, ls, lz = (F.log_softmax(t[:, :-1][score], -1) for t in (clean, spliced, zero))
        ce_c.append(F.nll_loss(lc, tgt, reduction="none"))
        ce_s.append(F.nll_loss(ls, tgt, reduction="none"))
        ce_z.append(F.nll_loss(lz, tgt, reduction="none"))
        kls.append((lc.exp() * (lc - ls)).sum(-1))
        xs.append(x[mask]), ys.append(y[mask]), yhats.append(y_hat[mask]), l0s.append((code[mask] != 0).sum(-1))
        positions.append(torch.arange(ids.shape[1]).expand_as(ids)[mask])
    y, y_hat, l0, pos = torch.cat(ys).double(), torch.cat(yhats).double(), torch.cat(l0s).double(), torch.cat(positions)
    code_all = torch.cat([s.encode(x) for x in xs])
    sse = (y - y_hat).pow(2).sum()
    c, sp, z = torch.cat(ce_c).mean(), torch.cat(ce_s).mean(), torch.cat(ce_z).mean()
    out = {
        "l0": float(l0.mean()), "mse": float(sse / y.numel()),
        "explained_variance_uncentred": float(1 - sse / y.pow(2).sum()),
        "explained_variance_centred": float(1 - sse / (y - y.mean(0)).pow(2).sum()),
        "ce_clean": float(c), "ce_spliced": float(sp), "delta_lm_loss": float(sp - c),
        "kl_div": float(torch.cat(kls).mean()), "ce_zero_ablation": float(z),
        "ce_loss_recovered": float((z - sp) / (z - c)),
        "fires": (code_all != 0).sum(0), "tokens": y.shape[0],
    }
    out["positions"] = {
        (lo, hi): (float(l0[(pos >= lo) & (pos < hi)].mean()),
                   float((y - y_hat).pow(2).sum(-1)[(pos >= lo) & (pos < hi)].sum() / (((pos >= lo) & (pos < hi)).sum() * D)))
        for lo, hi in zip(edges[:-1], edges[1:]) if ((pos >= lo) & (pos < hi)).any()
    }
    return out


@pytest.mark.parametrize("hook_in,hook_out,kind,activation", [
    ("blocks.2.hook_mlp_out", None, "mlp", "topk"),
    ("blocks.1.hook_attn_out", None, "attn", "relu"),
    ("blocks.1.hook_resid_post", None, "resid", "jumprelu"),
    ("blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out", "mlp", "topk"),
])
def test_every_metric_equals_a_literal_computation(tiny_llama, tiny_corpus, hook_in, hook_out, kind, activation):
    model, tok = tiny_llama
    s = site_sae(hook_in, hook_out, activation=activation)
    layer = int(hook_in.split(".")[1])
    res = evaluate({"s": s}, model, tiny_corpus, tokenizer=tok, tokens=500, lm_tokens=None, batch_size=4,
                   position_buckets="1,8,32,300", progress=False)
    lit = _literal_metrics(model, tok, tiny_corpus, s, layer, kind, 500, [1, 8, 32, 300])
    row = res.eval.iloc[0]
    for key in ("l0", "mse", "explained_variance_uncentred", "explained_variance_centred", "ce_clean", "ce_spliced",
                "delta_lm_loss", "kl_div", "ce_zero_ablation", "ce_loss_recovered"):
        assert row[key] == pytest.approx(lit[key], rel=1e-4, abs=1e-6), key
    assert row.tokens == lit["tokens"] == 500
    assert 0 < row.l0 < 256 and row.delta_lm_loss != 0
    freq = res.frequencies
    assert freq.fires.tolist() == lit["fires"].tolist()
    assert row.never_fired_fraction == pytest.approx(float((lit["fires"] == 0).double().mean()))
    assert row.dense_fraction == pytest.approx(float((lit["fires"] / 500 > 0.1).double().mean()))
    assert math.isnan(row.dead_fraction)  # 500 < 100,000 tokens
    pos = res.positions
    assert pos.tokens.sum() == 500
    for _, p in pos.iterrows():
        l0, mse = lit["positions"][(p.bucket_start, p.bucket_end)]
        assert p.l0 == pytest.approx(l0) and p.mse == pytest.approx(mse, rel=1e-4, abs=1e-7)


def test_topk_and_jumprelu_inference_of_one_sae(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    s = site_sae("blocks.1.hook_resid_post", activation="jumprelu", k=5, threshold=0.2)
    res = evaluate({"s": s}, model, tiny_corpus, tokenizer=tok, modes=["native", "topk", "relu"], tokens=300,
                   lm_tokens=0, batch_size=4, progress=False)
    ev = res.eval.set_index("mode")
    assert list(ev.index) == ["native", "topk", "relu"]
    assert (ev.arch == "jumprelu").all()
    assert ev.loc["topk"].l0 <= 5 and ev.loc["topk"].k == 5
    assert ev.loc["relu"].l0 >= ev.loc["native"].l0
    assert ev.loc["native"].l0 != ev.loc["topk"].l0
    # LM metrics were not asked for
    assert ev.ce_spliced.isna().all() and (ev.lm_tokens == 0).all()
    assert set(res.frequencies["mode"]) == {"native", "topk", "relu"}


def test_sharing_the_clean_forward_changes_nothing(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    saes = {
        "a": site_sae("blocks.1.hook_resid_post", seed=1), "b": site_sae("blocks.1.hook_mlp_out", seed=2),
        "c": site_sae("blocks.3.hook_attn_out", seed=3),
        "d": site_sae("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", seed=4),
    }
    together = evaluate(saes, model, tiny_corpus, tokenizer=tok, **KW).eval.set_index("sae")
    for name, s in saes.items():
        alone = evaluate({name: s}, model, tiny_corpus, tokenizer=tok, **KW).eval.iloc[0]
        for col in ("l0", "mse", "explained_variance_centred", "ce_spliced", "kl_div", "ce_zero_ablation"):
            assert together.loc[name, col] == pytest.approx(alone[col], rel=1e-6, abs=1e-9), (name, col)


def test_modes_sharing_one_encoder_matmul_change_nothing(tiny_llama, tiny_corpus):
    """All modes of two SAEs in one run (one encoder matmul per SAE) equal each mode of each SAE alone."""
    model, tok = tiny_llama
    saes = {"j": site_sae("blocks.1.hook_resid_post", activation="jumprelu", k=5, threshold=0.2, seed=5),
            "t": site_sae("blocks.2.hook_resid_post", k=5, seed=6)}
    modes = ["native", "topk", "relu"]
    together = evaluate(saes, model, tiny_corpus, tokenizer=tok, modes=modes, **KW).eval.set_index(["sae", "mode"])
    assert len(together) == 6
    for name, s in saes.items():
        for mode in modes:
            alone = evaluate({name: s}, model, tiny_corpus, tokenizer=tok, modes=[mode], **KW).eval.iloc[0]
            for col in ("l0", "mse", "explained_variance_centred", "ce_spliced", "kl_div"):
                got = together.loc[(name, mode), col]
                assert got == pytest.approx(alone[col], rel=1e-6, abs=1e-9), (name, mode, col)


def test_lm_metrics_need_no_forward_past_the_layer_when_off(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    calls = []
    h = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    h2 = model.model.layers[3].register_forward_hook(lambda *a: calls.append(3))
    try:
        evaluate({"s": site_sae("blocks.1.hook_resid_post")}, model, tiny_corpus, tokenizer=tok, tokens=200,
                 lm_tokens=0, progress=False)
    finally:
        h.remove(), h2.remove()
    assert calls == []


def test_two_models_give_two_sets_of_rows(tiny_tokenizer, tiny_corpus):
    m1, m2 = make_tiny_llama(seed=0), make_tiny_llama(seed=1)
    m1.config._name_or_path, m2.config._name_or_path = "base", "instruct"
    res = evaluate({"s": site_sae("blocks.1.hook_resid_post")}, [m1, m2], tiny_corpus, tokenizer=tiny_tokenizer,
                   tokens=200, progress=False)
    assert res.eval.model.tolist() == ["base", "instruct"]
    assert res.eval.ce_clean.iloc[0] != res.eval.ce_clean.iloc[1]


def test_tables_follow_the_documented_schema(tiny_llama, tiny_corpus, tmp_path):
    model, tok = tiny_llama
    s = site_sae("blocks.1.hook_resid_post")
    s.meta.name = "L1R-4x"
    res = evaluate([s], model, tiny_corpus, tokenizer=tok, tokens=300, progress=False)
    assert list(res.eval.columns) == EVAL_COLUMNS
    assert list(res.frequencies.columns) == FREQUENCY_COLUMNS
    assert list(res.positions.columns) == POSITION_COLUMNS
    r = res.eval.iloc[0]
    assert (r.sae, r.layer, r.position, r.width, r.n_features, r.arch, r["mode"]) == ("L1R-4x", 1, "R", "4x", 256, "topk", "native")
    assert len(res.frequencies) == 256
    paths = res.write(tmp_path / "out")
    for name in ("eval", "frequencies", "positions"):
        back = pd.read_csv(paths[name])
        assert list(back.columns) == list(getattr(res, name).columns)
    assert json.loads(paths["run"].read_text())["tokens"] == 300
    # every column is documented in docs/evaluation.md
    readme = (Path(__file__).parents[2] / "docs" / "evaluation.md").read_text()
    for col in EVAL_COLUMNS + FREQUENCY_COLUMNS + POSITION_COLUMNS:
        assert f"`{col}`" in readme, col


def test_bad_input_is_a_clear_error(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    kw = dict(tokenizer=tok, tokens=100, progress=False)
    wide = SparseAutoencoder(32, 64, meta=SAEMeta(hook_in="blocks.1.hook_resid_post"), k=4)
    with pytest.raises(sae.ShapeError, match="d_in=32.*has width 64"):
        evaluate([wide], model, tiny_corpus, **kw)
    with pytest.raises(SiteError, match="unknown site"):
        evaluate([SparseAutoencoder(D, 64, k=4, meta=SAEMeta(hook_in="blocks.1.hook_q"))], model, tiny_corpus, **kw)
    with pytest.raises(SiteError, match="out of range"):
        evaluate([site_sae("blocks.8.hook_resid_post")], model, tiny_corpus, **kw)
    with pytest.raises(sae.SAEError, match="does not say where it reads"):
        evaluate([SparseAutoencoder(D, 64, k=4)], model, tiny_corpus, **kw)
    with pytest.raises(sae.SAEError, match="corpus is empty"):
        evaluate([site_sae("blocks.1.hook_resid_post")], model, [], **kw)
    with pytest.raises(sae.SAEError, match="longer than the model allows"):
        evaluate([site_sae("blocks.1.hook_resid_post")], model, tiny_corpus, context=5000, **kw)
    with pytest.raises(sae.SAEError, match="unknown inference mode"):
        evaluate([site_sae("blocks.1.hook_resid_post")], model, tiny_corpus, modes=["gelu"], **kw)
    bad = make_tiny_llama()
    with torch.no_grad():
        bad.model.layers[0].self_attn.o_proj.weight.fill_(float("nan"))
    with pytest.raises(SiteError, match="non-finite .* blocks.1.hook_resid_post"):
        evaluate([site_sae("blocks.1.hook_resid_post")], bad, tiny_corpus, **kw)
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(SiteError, match="supported model types: llama"):
        evaluate([site_sae("blocks.0.hook_resid_post")], GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2)),
                 tiny_corpus, **kw)


def test_help_documents_every_option():
    parser = build_parser()
    help_text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15, action.dest
            assert action.option_strings[-1] in help_text


def test_cli_writes_tables(tiny_llama_dir, tmp_path, tiny_corpus, capsys):
    s = site_sae("blocks.2.hook_resid_post")
    folder = save(s, tmp_path / "sae")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus))
    out = tmp_path / "tables"
    assert main([str(folder), "--model", str(tiny_llama_dir), "--dataset", str(data), "--tokens", "300",
                 "--modes", "native,jumprelu", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    ev = pd.read_csv(out / "eval.csv")
    assert ev["mode"].tolist() == ["native", "jumprelu"] and (ev.tokens == 300).all()
    assert ev.model.iloc[0] == str(tiny_llama_dir)
    assert (out / "frequencies.csv").is_file() and (out / "positions.csv").is_file()
    assert "delta_lm_loss" in capsys.readouterr().out


def test_cli_error_is_one_line(tiny_llama_dir, tmp_path):
    wide = SparseAutoencoder(32, 64, k=4, meta=SAEMeta(hook_in="blocks.1.hook_resid_post"))
    folder = save(wide, tmp_path / "wide")
    proc = subprocess.run([sys.executable, "-m", "sae.evaluate", str(folder), "--model", str(tiny_llama_dir),
                           "--dataset", str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no progress bars
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert "d_in=32" in proc.stderr


@pytest.mark.real_model
def test_evaluate_on_smollm2(smollm2):
    model, tok = smollm2
    eye = torch.eye(576)
    ident = SparseAutoencoder.from_weights(torch.cat([eye, -eye], 1), torch.zeros(1152), torch.cat([eye, -eye], 0),
                                           torch.zeros(576), activation="relu", k=None,
                                           meta=SAEMeta(hook_in="blocks.20.hook_resid_post"))
    zero = SparseAutoencoder(576, 1152, activation="relu", meta=SAEMeta(layer=20, position="M"))
    saes = {"identity": ident, "zero": zero}
    res = evaluate(saes, model, "embedded-heldout", tokenizer=tok, tokens=300, lm_tokens=None, batch_size=4,
                   progress=False, model_label="SmolLM2-135M-Instruct")
    ev = res.eval.set_index("sae")
    assert 1.0 < ev.loc["identity"].ce_clean < 4.0  # a real model on real text
    assert ev.loc["identity"].delta_lm_loss == 0 and ev.loc["identity"].explained_variance_uncentred == 1
    assert ev.loc["zero"].ce_spliced == ev.loc["zero"].ce_zero_ablation
    assert ev.loc["zero"].delta_lm_loss > 0
