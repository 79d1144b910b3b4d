"""geometry.stitch: stitched SAEs against brute force, a planted dictionary, the tiny Llama, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import sae
from geometry.novelty import insertion_test
from geometry.options import GeometryError
from geometry.stitch import class_table, sample_insertions, stitch_effects, stitched
from sae.data.synthetic import SyntheticData
from sae.model import SAEMeta, SparseAutoencoder

REPO = Path(__file__).resolve().parents[2]


def _random_sae(d: int, n: int, seed: int, *, activation: str = "jumprelu", meta: SAEMeta | None = None,
                dtype=torch.float64) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    s = SparseAutoencoder.from_weights(
        (torch.randn(d, n, generator=g) / d**0.5).to(dtype), (0.1 * torch.randn(n, generator=g)).to(dtype),
        torch.randn(n, d, generator=g).to(dtype), (0.1 * torch.randn(d, generator=g)).to(dtype),
        (0.3 * torch.rand(n, generator=g)).to(dtype), activation=activation, k=4, meta=meta)
    return s.requires_grad_(False)


def test_stitched_zero_decoder_feature_reconstructs_bitwise_as_a():
    A, B = _random_sae(24, 16, 0, dtype=torch.float32), _random_sae(24, 40, 1, dtype=torch.float32)
    with torch.no_grad():
        B.W_dec[5] = 0.0
    x = torch.randn(200, 24)
    assert torch.equal(stitched(A, B, [5])(x), A(x))


def test_stitched_is_a_plus_added_minus_removed():
    d = 24
    A, B = _random_sae(d, 16, 0), _random_sae(d, 40, 1)
    x = torch.randn(300, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    add, remove = [3, 17, 39, 0], [5, 11]
    s = stitched(A, B, add, remove)
    assert s.n_features == 16 - 2 + 4 and s.activation == "jumprelu"
    a, b = A.encode(x), B.encode(x)  # [n, F] dense codes
    expected = A(x) + b[:, add] @ B.W_dec[add] - a[:, remove] @ A.W_dec[remove]
    torch.testing.assert_close(s(x), expected, rtol=1e-10, atol=1e-10)
    keep = [i for i in range(16) if i not in remove]
    torch.testing.assert_close(s.encode(x), torch.cat([a[:, keep], b[:, add]], 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stitched(A, B)(x), A(x), rtol=0, atol=0)  # nothing in, nothing out: A itself
    assert torch.equal(s.b_dec, A.b_dec)


def test_stitched_refuses_what_it_cannot_define():
    A, B = _random_sae(24, 16, 0), _random_sae(24, 40, 1)
    with pytest.raises(GeometryError, match="one width"):
        stitched(A, _random_sae(20, 40, 1), [0])
    with pytest.raises(GeometryError, match="0..39"):
        stitched(A, B, [40])
    with pytest.raises(GeometryError, match="distinct"):
        stitched(A, B, [1, 1])
    topk = _random_sae(24, 40, 1, activation="topk")
    with torch.no_grad():
        topk.threshold.zero_()
    with pytest.raises(GeometryError, match="TopK"):
        stitched(A, topk, [0])
    ra, rb = (_random_sae(24, n, i, meta=SAEMeta(hook_in=h, hook_out=h))
              for i, (n, h) in enumerate([(16, "blocks.1.hook_resid_post"), (40, "blocks.2.hook_resid_post")]))
    with pytest.raises(GeometryError, match="one site"):
        stitched(ra, rb, [0])


def test_topk_with_thresholds_stitches_as_its_jumprelu_variant():
    A, B = _random_sae(24, 16, 0, activation="topk"), _random_sae(24, 40, 1)
    x = torch.randn(100, 24, dtype=torch.float64)
    s = stitched(A, B, [2])
    jr = _random_sae(24, 16, 0)  # the same weights and thresholds, JumpReLU
    torch.testing.assert_close(s(x), jr(x) + B.encode(x)[:, [2]] @ B.W_dec[[2]], rtol=1e-10, atol=1e-10)


def _planted(seed: int = 0):
    """x from a known dictionary D (24 unit rows in R^64). A: every direction but the planted one (23), encoder
    = pseudo-inverse of its decoder; B: all 24 (the planted one is B's row 23), encoder = pinv(D), plus a copy of
    A's feature 0 as B's row 24."""
    data = SyntheticData(d=64, n_parents=24, children_per_parent=0, noise=0.01, freq_min=0.1, freq_max=0.3, seed=seed)
    x = data.sample(4000, torch.Generator().manual_seed(seed)).double()
    D = data.features.double()  # [24, 64]
    planted = 23
    D_a = D[:planted]
    thr = 0.2

    def make(dec: torch.Tensor, enc: torch.Tensor) -> SparseAutoencoder:
        n = dec.shape[0]
        return SparseAutoencoder.from_weights(enc.clone(), torch.zeros(n, dtype=torch.float64), dec.clone(),
                                              torch.zeros(64, dtype=torch.float64),
                                              torch.full((n,), thr, dtype=torch.float64),
                                              activation="jumprelu").requires_grad_(False)

    A = make(D_a, torch.linalg.pinv(D_a))
    enc_b = torch.cat([torch.linalg.pinv(D), A.W_enc.detach()[:, :1]], 1)
    B = make(torch.cat([D, D_a[:1]]), enc_b)
    return A, B, x, planted


def _mse(s: SparseAutoencoder, x: torch.Tensor) -> float:
    return float(((x - s(x)) ** 2).sum(-1).mean())


def test_planted_new_direction_lowers_the_mse_and_a_copy_raises_it():
    A, B, x, planted = _planted()
    base = _mse(A, x)
    d_new = _mse(stitched(A, B, [planted]), x) - base
    d_copy = _mse(stitched(A, B, [24]), x) - base
    assert d_new < -0.1 * base  # the missing direction: a large share of A's error goes
    assert d_copy > 0
    ins = insertion_test(A, B, x)
    assert ins["exact"]
    brute = np.array([_mse(stitched(A, B, [j]), x) - base for j in range(B.n_features)])
    np.testing.assert_allclose(ins["dmse"], brute, rtol=1e-4, atol=1e-6 * base)


def _tiny_pair(d: int, layer: int = 1):
    """A (12 features) and B (30) at one site of the tiny Llama; B's feature 0 has a zero decoder row and fires
    everywhere; B's features 1..3 are a split family of A's feature 4."""
    meta = SAEMeta(name="tiny", hook_in=f"blocks.{layer}.hook_resid_post", hook_out=f"blocks.{layer}.hook_resid_post")
    A = _random_sae(d, 12, 0, meta=meta, dtype=torch.float32)
    B = _random_sae(d, 30, 1, meta=meta, dtype=torch.float32)
    with torch.no_grad():
        A.W_dec.mul_(0.1)
        B.W_dec.mul_(0.1)
        B.W_dec[0] = 0.0
        B.b_enc[0], B.threshold[0] = 10.0, 0.0
    cls = np.array(["novel"] * 30, dtype=object)
    cls[0], cls[1:4], cls[10:14] = "same", "refined", "composite"
    table = pd.DataFrame({"feature": np.arange(30), "class": cls, "family": np.where(np.isin(np.arange(30), [1, 2, 3]),
                                                                                         7, np.arange(30) + 100),
                          "family_type": np.where(np.isin(np.arange(30), [1, 2, 3]), "split", "novel"),
                          "best_match": np.where(np.isin(np.arange(30), [1, 2, 3]), 4, -1)})
    return A, B, table


def test_sample_insertions_per_class_and_families():
    _, _, table = _tiny_pair(16)
    plan = sample_insertions(table, per_class=3, families=5, seed=1)
    kinds = pd.Series([p.cls for p in plan]).value_counts()
    assert kinds["same"] == 1 and kinds["refined"] == 3 and kinds["composite"] == 3 and kinds["novel"] == 3
    fam = [p for p in plan if p.kind == "family"]
    assert len(fam) == 1 and fam[0].add == (1, 2, 3) and fam[0].remove == (4,)
    assert plan == sample_insertions(table, per_class=3, families=5, seed=1)
    fires = np.ones(30)
    fires[10:13] = 0  # three of the four composite features never fire, and neither do the family's children
    fires[1:4] = 0
    plan = sample_insertions(table, per_class=3, families=5, seed=1, fires=fires, min_fires=1)
    assert [p.add for p in plan if p.cls == "composite"] == [(13,)]
    assert not [p for p in plan if p.kind == "family" or p.cls == "refined"]
    with pytest.raises(GeometryError, match="another SAE"):
        class_table(table, 31)


def test_stitch_effects_on_the_tiny_llama(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    A, B, table = _tiny_pair(model.config.hidden_size)
    r = stitch_effects(A, B, classes=table, per_class=3, families=1, tokens=400, lm_tokens=200, model=model,
                       tokenizer=tok, dataset=tiny_corpus, context=48, chunk=5, progress=False)
    e = r.effects
    assert len(e) == 1 + 3 + 3 + 3 + 1 and set(e["kind"]) == {"feature", "family"}
    assert np.isfinite(e[["d_mse", "d_lm_loss", "d_kl"]].to_numpy()).all()
    zero = e[e["b_features"] == "0"].iloc[0]
    assert zero["freq_b"] == 1.0  # it fires at every position, and changes nothing
    # Zero up to float32 rounding: evaluate decodes sparsely (embedding_bag over the active rows in topk order),
    # and one more active feature reorders that sum (the dense reconstruction is bitwise A's).
    assert abs(zero["d_lm_loss"]) < 1e-6 and abs(zero["d_kl"]) < 1e-6 and abs(zero["d_mse"]) < 1e-6
    single = e[e["kind"] == "feature"]
    np.testing.assert_allclose(single["d_mse"], single["insertion_dmse"], rtol=1e-3, atol=1e-6)
    assert (e.loc[e["kind"] == "family", "a_parent"] == 4).all()
    assert np.isnan(e.loc[e["kind"] == "family", "insertion_dmse"]).all()
    assert r.summary["tokens"] == 400 and r.summary["lm_tokens"] == 200 and r.summary["activation_tokens"] == 400
    assert set(r.crosstab["class"]) == {"same", "refined", "composite", "novel", "family swap"}
    assert {"median_d_lm_loss", "share_lower_lm"} <= set(r.crosstab.columns)


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geometry.stitch", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _save(tmp_path: Path, name: str, n: int, d: int = 32) -> str:
    folder = tmp_path / name
    sae.save(_random_sae(d, n, 0, dtype=torch.float32), folder)
    return str(folder)


@pytest.mark.parametrize("case", ["missing", "d", "per-class", "compare"])
def test_cli_bad_input(tmp_path, case):
    narrow, wide = _save(tmp_path, "narrow", 16), _save(tmp_path, "wide", 64)
    args = {"missing": [narrow, str(tmp_path / "nope")], "d": [narrow, _save(tmp_path, "other", 64, d=48)],
            "per-class": [narrow, wide, "--per-class", "0"],
            "compare": [narrow, wide, "--compare", str(tmp_path / "no_compare")]}[case]
    r = _cli([*args, "--out", str(tmp_path / "out"), "--quiet"])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    assert {"d": "one width", "per-class": "--per-class", "compare": "features_b.csv"}.get(case, "") in lines[0]


@pytest.mark.real_model
def test_cli_on_the_tiny_demo(tiny_demo, tmp_path):
    cache, out, _ = tiny_demo
    r = _cli(["demo:L15R-8x", "demo:L15R-32x", "--compare", str(out / "compare"), "--per-class", "2", "--families",
              "1", "--tokens", "512", "--lm-tokens", "256", "--out", str(tmp_path), "--quiet"],
             env={"SAE_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    effects = pd.read_csv(tmp_path / "effects.csv")
    assert len(effects) >= 2 and np.isfinite(effects[["d_mse", "d_lm_loss", "d_kl"]].to_numpy()).all()
    assert (pd.read_csv(tmp_path / "crosstab.csv")["n"] <= 2).any()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tokens"] == 512 and summary["lm_tokens"] == 256
