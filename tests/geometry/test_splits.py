"""Split trees across a width ladder: planted ground truth, the causal check on a tiny Llama, the CLI."""

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
from geometry.splits import main, split_effects, split_trees
from sae.model import SAEMeta, SparseAutoencoder

REPO = Path(__file__).resolve().parents[2]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def planted_ladder(seed: int = 0, d: int = 512):
    """A [60, d] -> B [~100, d] -> C [~170, d]: per step some rows split into 2-3 children (cos ~0.8 to the
    parent, ~0.64 among themselves), some are copied, the rest get no child; new random rows pad B and C."""
    g = torch.Generator().manual_seed(seed)
    u = lambda n: _unit(torch.randn(n, d, generator=g))  # noqa: E731
    A = u(60)
    truth = []  # per step: {parent: n_children}
    rungs = [A]
    for step, n_split in enumerate((15, 20)):
        P = rungs[-1]
        n_copy = len(P) // 2
        rows, kids = [], {}
        for f in range(len(P)):
            if f < n_split:
                k = 2 + f % 2
                rows.append(_unit(P[f] + 0.75 * u(k)))  # cos ~0.8 to the parent, ~0.64 to each other
                kids[f] = k
            elif f < n_split + n_copy:
                rows.append(P[f][None].clone())
                kids[f] = 1
        rows.append(u(30))  # new directions
        B = torch.cat(rows)
        B = B[torch.randperm(len(B), generator=g)]
        truth.append(kids)
        rungs.append(B)
    return rungs, truth


def test_split_trees_finds_the_planted_splits():
    rungs, truth = planted_ladder()
    t = split_trees(rungs, names=["A", "B", "C"])
    for step, kids in enumerate(truth):
        s = t.steps.iloc[step]
        n_split = sum(k >= 2 for k in kids.values())
        assert s.n_split == n_split and s.n_one_child == sum(k == 1 for k in kids.values())
        assert s.n_live_parents == len(rungs[step])
        assert s.share_split == pytest.approx(n_split / len(rungs[step]))
        assert s.mean_children == pytest.approx(np.mean([k for k in kids.values() if k >= 2]))
        e = t.edges[t.edges["step"] == step]
        assert e.groupby("parent").size().to_dict() == kids
        assert (e["cos"] >= 0.7).all()
        # every edge is a planted parent -> child pair: the child lies closer to its parent than to any other
        P, Cn = rungs[step], rungs[step + 1]
        assert (torch.einsum("nd,nd->n", P[e["parent"].tolist()], Cn[e["child"].tolist()]).numpy()
                == pytest.approx(e["cos"].to_numpy(), abs=1e-5))
    # chains: a root split at both steps counts all its descendants
    roots = t.chains[t.chains["level"] == 0].set_index("feature")
    assert len(roots) == 60
    assert roots.loc[0, "n_children"] == 2 and roots.loc[0, "splits"] >= 1
    assert int(roots["n_descendants"].sum()) == len(t.chains) - 60


def test_dead_features_and_labels(tmp_path):
    rungs, truth = planted_ladder(seed=1)
    dead_a = np.zeros(60, bool)
    dead_a[:3] = True  # three split parents
    labels = {"A": pd.DataFrame({"feature": np.arange(60), "label": [f"a{i}" for i in range(60)]})}
    t = split_trees(rungs, names=["A", "B", "C"], dead={"A": dead_a}, labels=labels)
    assert t.steps.iloc[0].n_live_parents == 57 and t.steps.iloc[0].n_split == 12
    assert not t.edges[t.edges["step"] == 0]["parent"].isin([0, 1, 2]).any()
    assert t.chains.loc[t.chains["sae"] == "A", "label"].tolist()[:2] == ["a3", "a4"]
    t.write(tmp_path)
    for name in ("edges.csv", "steps.csv", "chains.csv", "summary.json", "trees.html"):
        assert (tmp_path / name).is_file()
    page = (tmp_path / "trees.html").read_text()
    assert "<script src" not in page and "http" not in page.split("<body>")[1]
    assert "omitted" in page and "a5" in page


def test_split_trees_refuses_a_narrowing_ladder():
    from sae.errors import SAEError

    rungs, _ = planted_ladder()
    with pytest.raises(SAEError, match="widths must increase"):
        split_trees([rungs[1], rungs[0]])
    with pytest.raises(SAEError, match="different d"):
        split_trees([rungs[0], torch.randn(200, 64)])


def _tiny_saes(d: int, layer: int = 1, n_a: int = 16, n_b: int = 40, seed: int = 0):
    """A: ReLU SAE; B: its feature 0 split into children 0 and 1 (decoder rows = A's row 0, encoder columns
    = half of A's column 0, so b_0 + b_1 = a_0 and the two ablations are identical); B's other rows random."""
    g = torch.Generator().manual_seed(seed)
    meta = SAEMeta(name="tiny", hook_in=f"blocks.{layer}.hook_resid_post", hook_out=f"blocks.{layer}.hook_resid_post")
    W_enc = torch.randn(d, n_a, generator=g) / d**0.5
    A = SparseAutoencoder.from_weights(W_enc, torch.zeros(n_a), _unit(torch.randn(n_a, d, generator=g)),
                                       torch.zeros(d), activation="relu", meta=meta)
    W_enc_b = torch.randn(d, n_b, generator=g) / d**0.5
    W_dec_b = _unit(torch.randn(n_b, d, generator=g))
    W_enc_b[:, :2] = A.W_enc.detach()[:, :1] / 2
    W_dec_b[:2] = A.W_dec.detach()[0]
    B = SparseAutoencoder.from_weights(W_enc_b, torch.zeros(n_b), W_dec_b, torch.zeros(d), activation="relu",
                                       meta=meta)
    return A, B


def test_split_effects_identical_split_correlates_one(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    A, B = _tiny_saes(model.config.hidden_size)
    df = split_effects(A, B, [0], model=model, tokenizer=tok, texts=tiny_corpus, n_positions=3, tokens=400,
                       context=48, progress=False)
    row = df.set_index("parent").loc[0]
    assert row.children == "0 1" and row.n_positions == 3
    assert row.corr_children == pytest.approx(1.0, abs=1e-4)
    assert row.corr_random < 0.9
    assert df.attrs["summary"]["median_corr_children"] == pytest.approx(1.0, abs=1e-4)


def test_split_effects_unrelated_children_correlate_less(tiny_llama, tiny_corpus):
    model, tok = tiny_llama
    A, B = _tiny_saes(model.config.hidden_size)
    df = split_effects(A, B, [0], model=model, tokenizer=tok, texts=tiny_corpus, n_positions=3, tokens=400,
                       context=48, children={0: [5, 6]}, progress=False)
    assert df.loc[0, "corr_children"] < 0.9


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geometry.splits", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _save(tmp_path: Path, name: str, n: int, d: int = 32) -> str:
    s = SparseAutoencoder(d, n, activation="relu")
    with torch.no_grad():
        s.W_dec.normal_()
    folder = tmp_path / name
    sae.save(s, folder)
    return str(folder)


@pytest.mark.parametrize("case", ["narrowing", "missing", "cut", "d", "freq"])
def test_cli_bad_input(tmp_path, case):
    wide, narrow = _save(tmp_path, "wide", 64), _save(tmp_path, "narrow", 16)
    args = {"narrowing": [wide, narrow], "missing": [narrow, str(tmp_path / "nope")],
            "cut": [narrow, wide, "--cut", "1.5"], "d": [narrow, _save(tmp_path, "other", 64, d=48)],
            "freq": [narrow, wide, "--freq", "demo:L15R-8x=x.csv"]}[case]
    r = _cli([*args, "--out", str(tmp_path / "out"), "--quiet"])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    if case == "narrowing":
        assert "widths must increase" in lines[0]


def test_cli_writes_files(tmp_path):
    narrow, wide = _save(tmp_path, "narrow", 16), _save(tmp_path, "wide", 64)
    assert main([narrow, wide, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["widths"] == [16, 64]


@pytest.mark.real_model
def test_cli_on_the_tiny_demo(tiny_demo, tmp_path):
    cache, _out, _ = tiny_demo
    r = _cli(["demo:L15R-8x", "demo:L15R-32x", "--causal", "2", "--tokens", "512", "--out", str(tmp_path), "--quiet"],
             env={"SAE_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("edges.csv", "steps.csv", "chains.csv", "summary.json", "trees.html"):
        assert (tmp_path / name).is_file()
    steps = pd.read_csv(tmp_path / "steps.csv")
    assert len(steps) == 1 and steps.loc[0, "n_live_parents"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    if steps.loc[0, "n_split"]:  # a tiny demo may have no split at all; then there is nothing to ablate
        assert "causal" in summary and (tmp_path / "effects.csv").is_file()
