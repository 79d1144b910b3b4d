import json

import pytest
import torch
from llama_scope_fixture import authors_formula, write_fixture
from saes import random_sae
from safetensors.torch import save_file

import sae

FIXTURES = {  # name -> (position, theta, norm_in, norm_out): norms far from sqrt(32) ~ 5.7
    "R": ("R", 0.35546875, 10.8125, None),
    "TC": ("TC", 0.10400390625, 64.0, 3.390625),  # a transcoder: separate in/out norms, as L8TC-8x
}


def _x(n, d, scale, seed=5):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True) * scale  # activations at the dataset norm


@pytest.mark.parametrize("kind", FIXTURES)
def test_llama_scope_layout_matches_authors_formulas(tmp_path, kind):
    position, theta, norm_in, norm_out = FIXTURES[kind]
    folder = tmp_path / f"Llama3_1-8B-Base-L15{position}-8x"
    tensors = write_fixture(folder, position=position, theta=theta, norm_in=norm_in, norm_out=norm_out)
    model = sae.load(folder)
    assert model.activation == "jumprelu" and model.k == 50
    assert (model.meta.layer, model.meta.position) == (15, position)
    x = _x(300, 32, norm_in)
    f_ref, y_ref = authors_formula(tensors, x, theta=theta, norm_in=norm_in, norm_out=norm_out or norm_in)
    f = model.encode(x).double()
    near = ((f_ref - theta).abs() < 1e-4) | ((f - theta).abs() < 1e-4)  # fp32 vs fp64 at the gate
    assert ((f > 0) == (f_ref > 0))[~near].all()
    assert 0.01 < float((f_ref > 0).double().mean()) < 0.9  # the gate really selects
    assert torch.allclose(f, f_ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(model(x).double(), y_ref, atol=1e-3, rtol=1e-4)
    assert model.mean_l0(x) == pytest.approx(float((f_ref > 0).sum(1).double().mean()), abs=0.05)
    assert torch.allclose(model.decoder_norms(), torch.ones(256), atol=1e-5)


def test_llama_scope_load_from_weights_file_and_bf16(tmp_path):
    folder = tmp_path / "Llama3_1-8B-Base-L3A-8x"
    write_fixture(folder, position="A", layer=3)
    a = sae.load(folder / "checkpoints" / "final.safetensors")
    b = sae.load(folder, dtype="bfloat16")
    assert a.meta.name == "L3A-8x" and a.meta.hook_in == "blocks.3.hook_attn_out"
    assert b.W_enc.dtype == torch.bfloat16
    assert torch.allclose(a.W_dec.bfloat16().float(), b.W_dec.float())


@pytest.mark.parametrize("fmt", ["native", "saelens", "llama-scope"])
@pytest.mark.parametrize("activation,d_out", [("topk", None), ("relu", None), ("jumprelu", None), ("relu", 9), ("jumprelu", 9)])
def test_round_trips(tmp_path, fmt, activation, d_out):
    model = random_sae(activation, d_out=d_out, threshold=0.6)
    model.meta = sae.SAEMeta(name="L4M-8x", model="m", layer=4, position="M", hook_in="blocks.4.hook_mlp_out",
                             hook_out="blocks.4.hook_mlp_out", dataset_norm_in=3.0, dataset_norm_out=2.0)
    x = torch.randn(40, 12)
    if fmt == "llama-scope" and activation == "jumprelu":  # the layout's one threshold: unit-norm rows
        model.set_unit_decoder_norms().threshold.fill_(0.6)
    if fmt == "llama-scope" and activation != "jumprelu":
        with pytest.raises(sae.FormatError, match="scalar threshold"):
            sae.save(model, tmp_path / "x", format=fmt)
        return
    back = sae.load(sae.save(model, tmp_path / "x", format=fmt))
    assert torch.allclose(back(x), model(x), atol=1e-4)
    assert back.activation == activation and back.d_out == model.d_out
    if fmt == "native":
        for key, value in model.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), key
        assert back.meta.to_dict() == {**model.meta.to_dict(), "source": str(tmp_path / "x")}
        assert back.k == model.k


def test_topk_transcoder_refuses_saelens_but_saves_native(tmp_path):
    model = random_sae("topk", d_out=9)
    with pytest.raises(sae.FormatError, match="native"):
        sae.save(model, tmp_path / "s", format="saelens")
    assert torch.allclose(sae.load(sae.save(model, tmp_path / "n"))(torch.ones(2, 12)), model(torch.ones(2, 12)))


def write_saelens(folder, cfg, tensors):
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, folder / "sae_weights.safetensors")


def test_reads_saelens_written_file_with_its_semantics(tmp_path):
    """A file as SAELens writes it: standard ReLU SAE with apply_b_dec_to_input (encode x - b_dec)."""
    g = torch.Generator().manual_seed(0)
    t = {"W_enc": torch.randn(8, 32, generator=g), "b_enc": torch.randn(32, generator=g),
         "W_dec": torch.randn(32, 8, generator=g), "b_dec": torch.randn(8, generator=g)}
    cfg = {"architecture": "standard", "d_in": 8, "d_sae": 32, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none",
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post", "sae_lens_version": "6.5.0"}}
    write_saelens(tmp_path / "s", cfg, t)
    x = torch.randn(16, 8, generator=g)
    expected = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu() @ t["W_dec"] + t["b_dec"]
    model = sae.load(tmp_path / "s")
    assert torch.allclose(model(x), expected, atol=1e-4)
    assert (model.meta.layer, model.meta.position, model.meta.model) == (3, "R", "gpt2")


def test_reads_saelens_topk_without_decoder_norm_ranking(tmp_path):
    g = torch.Generator().manual_seed(1)
    t = {"W_enc": torch.randn(8, 32, generator=g), "b_enc": torch.zeros(32),
         "W_dec": torch.randn(32, 8, generator=g) * 3, "b_dec": torch.zeros(8)}
    cfg = {"architecture": "topk", "d_in": 8, "d_sae": 32, "k": 3, "apply_b_dec_to_input": False,
           "rescale_acts_by_decoder_norm": False, "metadata": {"sae_lens_version": "6.5.0"}}
    write_saelens(tmp_path / "s", cfg, t)
    x = torch.randn(16, 8, generator=g)
    pre = x @ t["W_enc"]
    top = pre.topk(3, dim=1)
    f = torch.zeros_like(pre).scatter_(1, top.indices, top.values.relu())
    assert torch.allclose(sae.load(tmp_path / "s")(x), f @ t["W_dec"], atol=1e-4)


def test_saelens_expected_average_norm_is_folded(tmp_path):
    g = torch.Generator().manual_seed(2)
    t = {"W_enc": torch.randn(8, 32, generator=g), "b_enc": torch.randn(32, generator=g),
         "W_dec": torch.randn(32, 8, generator=g), "b_dec": torch.randn(8, generator=g),
         "threshold": torch.rand(32, generator=g)}
    cfg = {"architecture": "jumprelu", "d_in": 8, "d_sae": 32, "apply_b_dec_to_input": False,
           "normalize_activations": "expected_average_only_in", "norm_scaling_factor": 7.5,
           "metadata": {"sae_lens_version": "6.5.0"}}
    write_saelens(tmp_path / "s", cfg, t)
    x = torch.randn(16, 8, generator=g)
    pre = (7.5 * x) @ t["W_enc"] + t["b_enc"]
    f = pre.relu() * (pre > t["threshold"])
    expected = (f @ t["W_dec"] + t["b_dec"]) / 7.5
    assert torch.allclose(sae.load(tmp_path / "s")(x), expected, atol=1e-4)
