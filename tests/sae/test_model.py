import pytest
import torch
from saes import random_sae

from sae import SAEMeta, ShapeError, SparseAutoencoder


def literal(sae, x):
    """The three activations written out from their definitions, one token at a time."""
    rows = []
    sae = sae.requires_grad_(False)
    for xi in x.double():
        pre = xi @ sae.W_enc.double() + sae.b_enc.double()
        relu = pre.clamp_min(0)
        if sae.activation == "relu":
            f = relu
        elif sae.activation == "jumprelu":
            f = torch.where(pre > sae.threshold.double(), relu, torch.zeros_like(pre))
        else:
            norms = sae.W_dec.double().norm(dim=1)
            order = sorted(range(len(pre)), key=lambda i: -float(relu[i] * norms[i]))[: sae.k]
            f = torch.zeros_like(pre)
            f[order] = relu[order]
        rows.append(f)
    f = torch.stack(rows)
    return f, f @ sae.W_dec.double() + sae.b_dec.double()


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_encode_decode_match_definitions(activation):
    sae = random_sae(activation, threshold=1.0)
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(1))
    f_ref, y_ref = literal(sae, x)
    assert torch.allclose(sae.encode(x).double(), f_ref, atol=1e-4)
    assert torch.allclose(sae(x).double(), y_ref, atol=1e-3)
    values, idx = sae.encode_sparse(x)
    dense = torch.zeros(20, 48).scatter_(1, idx, values)
    assert torch.allclose(dense.double(), f_ref, atol=1e-4)
    assert torch.allclose(sae.decode(sae.encode_sparse(x)), sae.decode(sae.encode(x)), atol=1e-4)
    assert sae.mean_l0(x) == pytest.approx(float((f_ref > 0).sum(1).double().mean()))


@pytest.mark.parametrize("activation,threshold", [("relu", 1.0), ("jumprelu", 1.0), ("jumprelu", -5.0)])
def test_threshold_code_pads_with_distinct_inactive_features(activation, threshold):
    """Each row: its active features once each, then other features of the row at value 0, no repeats;
    a negative JumpReLU threshold acts as 0 (ReLU first), so most rows are nearly full."""
    sae = random_sae(activation, threshold=threshold)
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(3))
    f_ref, _ = literal(sae, x)
    values, idx = sae.encode_sparse(x)
    assert idx.shape[1] == int((f_ref > 0).sum(1).max())
    for r in range(40):
        assert len(set(idx[r].tolist())) == idx.shape[1]
        assert set(idx[r][values[r] > 0].tolist()) == set((f_ref[r] > 0).nonzero().flatten().tolist())
        assert (f_ref[r, idx[r][values[r] == 0]] == 0).all()


def test_modes_share_pre_activations():
    """sparse_code on one pre-activation tensor gives every inference mode's encode_sparse."""
    from sae.eval.resolve import inference_variant

    sae = random_sae("jumprelu", threshold=0.5)
    sae.k = 5
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(4))
    pre = sae.pre_acts(x)
    before = pre.clone()
    for mode in ("native", "topk", "relu"):
        variant = inference_variant(sae, mode)
        got, want = variant.sparse_code(pre), variant.encode_sparse(x)
        assert torch.equal(got.values, want.values) and torch.equal(got.indices, want.indices)
    assert torch.equal(pre, before)


def test_topk_ranks_by_decoder_norm():
    sae = SparseAutoencoder(2, 2, k=1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 0.75]])
    # Plain top-1 of the activations would keep feature 0 (1.0 > 0.75); 0.75 x 2 beats 1.0 x 1.
    assert sae.encode(x).tolist() == [[0.0, 0.75]]
    sae.topk_by_decoder_norm = False
    assert sae.encode(x).tolist() == [[1.0, 0.0]]


def test_leading_dims_and_shapes():
    sae = random_sae("topk", d_out=7)
    x = torch.randn(2, 3, 12)
    assert sae.encode(x).shape == (2, 3, 48)
    assert sae(x).shape == (2, 3, 7)
    assert sae.encode_sparse(x).values.shape == (2, 3, 5)
    with pytest.raises(ShapeError, match="d_in=12"):
        sae.encode(torch.randn(4, 11))
    with pytest.raises(ShapeError, match="k"):
        SparseAutoencoder(4, 8, k=9)


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_output_preserving_transforms(activation):
    sae = random_sae(activation, d_out=9, threshold=0.7)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(2))
    y = sae(x)
    f = sae.encode(x)
    c = 0.1 + 5 * torch.rand(48, generator=torch.Generator().manual_seed(3))
    sae.scale_features(c)
    assert torch.allclose(sae(x), y, atol=1e-4)
    assert torch.allclose(sae.encode(x), f * c, atol=1e-4)
    sae.set_unit_decoder_norms()
    assert torch.allclose(sae.decoder_norms(), torch.ones(48), atol=1e-5)
    assert torch.allclose(sae(x), y, atol=1e-4)


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_fold_scales_reads_raw_and_returns_raw(activation):
    sae = random_sae(activation, d_out=9, threshold=0.7)
    s_in, s_out = 3.7, 0.21
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(4))
    expected = sae(s_in * x) / s_out  # trained in normalised space: reads s_in x, predicts s_out y
    sae.fold_scales(s_in, s_out)
    assert torch.allclose(sae(x), expected, atol=1e-3)


def test_feature_directions_unit_rows_and_zero_rows():
    sae = random_sae("relu")
    with torch.no_grad():
        sae.W_dec[3] = 0
    u = sae.feature_directions()
    norms = u.norm(dim=1)
    assert norms[3] == 0
    assert torch.allclose(norms[torch.arange(48) != 3], torch.ones(47), atol=1e-6)
    assert torch.allclose(u[5] * sae.W_dec[5].norm(), sae.W_dec[5], atol=1e-6)


def test_mean_l0_mask_excludes_positions():
    sae = random_sae("relu")
    x = torch.randn(10, 12)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 5]] = True
    l0 = (sae.encode(x) > 0).sum(1).float()
    assert sae.mean_l0(x, mask) == pytest.approx(float(l0[mask].mean()))


def test_meta_round_trip_dict():
    meta = SAEMeta(name="L3R-8x", layer=3, position="R", provenance={"steps": 10})
    assert SAEMeta.from_dict({**meta.to_dict(), "unknown": 1}) == meta
