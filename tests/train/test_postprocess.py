"""Post-processing: folding keeps outputs, the JumpReLU threshold is the (N k)-th largest pre-activation,
both inference modes are reported, the saved SAE keeps k, and the standalone command works."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae import load
from sae.data.synthetic import SyntheticData
from sae.train import SAESpec, TrainConfig, train
from sae.train.postprocess import fold_and_normalise, jumprelu_threshold, postprocess, postprocess_to

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained():
    data = SyntheticData(d=32, n_parents=32, children_per_parent=1, offset=3.0)
    cfg = TrainConfig(threads=1, total_tokens=120 * 512, batch_size=512, lr=4e-3)
    sae = train(data, SAESpec(name="s", n_features=128, k=6), cfg, progress=False).saes["s"]
    return data, sae


def test_fold_and_unit_norms_keep_outputs(trained):
    data, sae = trained
    x = data.batch(999, 500)
    s_in, s_out = sae.meta.provenance["scale_in"], sae.meta.provenance["scale_out"]
    assert s_in != 1.0
    out = fold_and_normalise(sae)
    assert torch.allclose(out.decoder_norms(), torch.ones(128), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(out(x), sae(x * s_in) / s_out, atol=1e-4)
    assert out.meta.provenance["space"] == "raw" and sae.meta.provenance["space"] == "normalised"


def test_threshold_is_the_nk_th_largest_pre_activation(trained):
    data, sae = trained
    out = fold_and_normalise(sae)
    xs = [data.batch(5, 300), data.batch(6, 200)]
    theta = jumprelu_threshold(out, xs, 6, chunk=64)  # streamed in small chunks
    with torch.no_grad():
        every = out.pre_acts(torch.cat(xs)).flatten()
    assert theta == float(every.sort(descending=True).values[500 * 6 - 1])


def test_postprocess_reports_both_modes_and_keeps_k(trained, tmp_path):
    data, sae = trained
    acts = (b for b in data.batches(1000, start=50))
    res = postprocess_to(sae, acts, tmp_path / "s", n_tokens=4096)
    rep = res.report.set_index("mode")
    assert set(rep.index) == {"topk", "jumprelu (global)", "jumprelu (per-feature)"}
    assert rep.loc["topk", "l0"] <= 6
    assert abs(rep.loc["jumprelu (global)", "l0"] - 6) < 0.01  # by construction on the threshold tokens
    assert rep.loc["topk", "ev"] > 0.5 and rep.loc["jumprelu (global)", "mse"] > 0
    assert res.calibration == "global" and back_calibration(tmp_path / "s") == "global"
    back = load(tmp_path / "s")
    assert back.activation == "jumprelu" and back.k == 6
    assert torch.allclose(back.threshold, torch.full((128,), res.threshold))
    assert torch.allclose(back.decoder_norms(), torch.ones(128), atol=1e-5)
    x = data.batch(3, 64)
    with torch.no_grad():
        back.activation = "topk"  # TopK inference stays available
        assert torch.allclose(back(x), sae(x * sae.meta.provenance["scale_in"]) / sae.meta.provenance["scale_out"], atol=1e-4)
    saved = json.loads((tmp_path / "s" / "postprocess.json").read_text())
    assert saved["n_tokens"] == 4096 and len(saved["report"]) == 3


def back_calibration(folder):
    return load(folder).meta.provenance["threshold_calibration"]


def test_per_feature_thresholds_give_each_feature_its_topk_rate(trained, tmp_path):
    data, sae = trained
    xs = [data.batch(40 + i, 512) for i in range(4)]
    res = postprocess_to(sae, iter(xs), tmp_path / "s", n_tokens=2048, calibration="per-feature")
    out = load(tmp_path / "s")
    assert out.activation == "jumprelu" and back_calibration(tmp_path / "s") == "per-feature"
    assert out.threshold.unique().numel() > 1 and bool((out.threshold >= 0).all())
    x = torch.cat(xs)
    with torch.no_grad():
        pre = out.pre_acts(x)  # [N, F]; unit decoder rows, so TopK ranks by the pre-activation itself
        kth = pre.relu().topk(6, dim=-1).values[:, -1:]
        topk_fires = ((pre >= kth) & (pre > 0)).sum(0)  # brute force, dense
        jump_fires = (out.encode(x) > 0).sum(0)
    assert torch.equal(jump_fires, topk_fires)  # every feature keeps its TopK firing count
    rep = res.report.set_index("mode")
    assert abs(rep.loc["jumprelu (per-feature)", "l0"] - 6) < 0.01
    assert rep.loc["jumprelu (per-feature)", "l0_p95"] >= rep.loc["jumprelu (per-feature)", "l0_p05"]


def test_postprocess_transcoder_uses_both_sites():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 16, generator=g) * 5
    b = torch.relu(a @ torch.randn(16, 8, generator=g))
    spec = SAESpec(name="tc", hook_in="a", hook_out="b", n_features=64, k=4)
    sae = train({"a": a, "b": b}, spec, TrainConfig(threads=1, total_tokens=4096 * 4, batch_size=512, lr=4e-3), progress=False).saes["tc"]
    res = postprocess(sae, {"a": a, "b": b}, n_tokens=2048)
    assert res.sae.d_in == 16 and res.sae.d_out == 8
    assert abs(res.report.set_index("mode").loc["jumprelu (global)", "l0"] - 4) < 0.01


def test_standalone_command(tmp_path):
    base = [sys.executable, "-m", "sae.train", "--dataset", "synthetic", "--synthetic", "d=16,n_parents=16",
            "--sae", "s=x", "--n-features", "64", "--k", "4", "--tokens", "20k", "--batch-size", "512",
            "--quiet", "--no-postprocess", "--out", str(tmp_path)]
    subprocess.run(base, check=True, cwd=ROOT, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "sae.postprocess", str(tmp_path / "s"), "--dataset", "synthetic",
                        "--synthetic", "d=16,n_parents=16", "--tokens", "2048"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "jumprelu" in r.stdout and "topk" in r.stdout
    assert load(tmp_path / "s").activation == "jumprelu"
    bad = subprocess.run([sys.executable, "-m", "sae.postprocess", str(tmp_path / "nothing")], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("error:")
