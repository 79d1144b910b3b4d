"""`compare` and `python -m geometry.compare`: outputs, bad inputs, the insertion test."""

import json
import os
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sae
from geometry.compare import compare, main
from geometry.options import GeometryError, Options
from geometry.planted import planted
from sae import save
from sae.errors import run_cli


def random_sae(d, n, seed, activation="jumprelu", w_dec=None):
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(n, d, generator=g) if w_dec is None else w_dec
    model = sae.SparseAutoencoder.from_weights(
        w_dec.T.clone() + 0.1 * torch.randn(d, n, generator=g), torch.zeros(n), w_dec.clone(), torch.zeros(d),
        threshold=0.5, activation=activation, k=min(8, n),
    )
    model.meta.name = f"rand{seed}"
    return model


@pytest.fixture(scope="module")
def pair():
    p = planted(200, 128, n_b=500, seed=3, dead_frac=0.02)
    return random_sae(128, 200, 0, w_dec=p.a), random_sae(128, 500, 1, w_dec=p.b)


def test_self_comparison_is_all_same():
    a = torch.randn(300, 64, generator=torch.Generator().manual_seed(0))
    c = compare(a, a, cache=False)
    assert set(c.features_b["class"]) == {"same"}
    mc = c.summary["max_cos"]  # random data: the measured baseline agrees with the closed form
    assert abs(mc["baseline_b_to_a"]["quantiles"]["0.5"] - mc["isotropic_b_to_a"]["quantiles"]["0.5"]) < 0.03
    assert c.summary["families"]["1:1"] == len(a) and c.summary["assignment"]["matched_fraction_a"] == 1.0


def test_inputs_saes_and_encoder_rows(pair, tmp_path):
    a, b = pair
    c = compare(a, b, cache=tmp_path)
    assert c.summary["a"]["name"] == "rand0" and c.summary["b"]["n_features"] == 500
    assert not c.summary["similarity"]["cached"]
    assert compare(a, b, cache=tmp_path).summary["similarity"]["cached"]  # the pass is reused
    enc = compare(a, b, rows="encoder", cache=False)
    assert len(enc.features_b) == 500


def test_bad_inputs():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 16, generator=g), torch.randn(60, 32, generator=g)
    with pytest.raises(sae.ShapeError, match="d=16 .* d=32"):
        compare(a, b, cache=False)
    with pytest.raises(sae.ShapeError, match="no live features"):
        compare(torch.zeros(10, 16), a, cache=False)
    with pytest.raises(sae.ShapeError, match="no live features"):
        compare(a, a, freq_b=np.zeros(50), cache=False)  # dead-only
    with pytest.raises(GeometryError, match="unknown option"):
        compare(a, a, cutt=0.5)
    bad = a.clone()
    bad[3] = float("nan")
    bad[7] = 0
    c = compare(a, bad, cache=False)
    assert c.summary["b"]["n_nonfinite"] == 1 and c.summary["b"]["n_zero"] == 1
    assert c.features_b.loc[3, "excluded"] == "nonfinite" and c.features_b.loc[3, "class"] == "dead"


def test_insertion_test_closed_form_matches_brute_force(pair):
    a, b = pair
    x = torch.randn(400, 128, generator=torch.Generator().manual_seed(5)) * 2
    c = compare(a, b, activations=x, cache=False)
    fb = c.features_b
    assert c.summary["functional"]["exact"] and c.agreement is not None
    base = ((x - a(x)) ** 2).sum(1).mean()
    for j in fb.index[fb["freq"] > 0][:5]:  # insert B's latent j into A for real
        big = sae.SparseAutoencoder.from_weights(
            torch.cat([a.W_enc, b.W_enc[:, j : j + 1]], 1), torch.cat([a.b_enc, b.b_enc[j : j + 1]]),
            torch.cat([a.W_dec, b.W_dec[j : j + 1]]), a.b_dec, torch.cat([a.threshold, b.threshold[j : j + 1]]),
            activation="jumprelu",
        )
        with torch.no_grad():
            want = float(((x - big(x)) ** 2).sum(1).mean() - base)
        assert fb.loc[j, "dmse"] == pytest.approx(want, rel=1e-3, abs=1e-4)
    silent = fb["freq"] == 0
    assert (fb.loc[silent, "class"] == "dead").all()  # never firing on these tokens: left out as dead


def test_cli_on_paths_writes_json_csv_html(pair, tmp_path, capsys):
    a, b = pair
    pa, pb = save(a, tmp_path / "a"), save(b, tmp_path / "b")
    acts = tmp_path / "acts.safetensors"
    save_file({"activations": torch.randn(300, 128)}, acts)
    out = tmp_path / "out"
    main([str(pa), str(pb), "--json", str(tmp_path / "s.json"), "--out", str(out), "--no-cache",
          "--activations", str(acts), "--cut", "0.65", "--k", "12"])
    printed = capsys.readouterr().out
    assert "B classes:" in printed and "families:" in printed
    s = json.loads((tmp_path / "s.json").read_text())
    for key in ("a", "b", "max_cos", "epsilon", "classes_b", "families", "split_factor", "assignment",
                "options", "timings_s", "functional"):
        assert key in s
    assert s["options"]["cut"] == 0.65 and s["a"]["d"] == 128
    assert set(s["max_cos"]) >= {"b_to_a", "a_to_b", "baseline_b_to_a", "isotropic_a_to_b"}
    for name in ("features_a", "features_b", "families", "edges", "assignment", "agreement"):
        assert (out / f"{name}.csv").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "Plotly.newPlot" in page and '<script src="http' not in page and len(page) > 1_000_000  # plotly.js inline


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for f in fields(Options):
        assert f"--{f.name.replace('_', '-')}" in text


def test_cli_errors_are_one_line(pair, tmp_path, capsys):
    def one_line_error(args, text):
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: main(args))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error:") and text in err and err.count("\n") <= 6, err

    one_line_error(["L99R-8x", "L15R-32x"], "L99R-8x")  # an unknown name
    one_line_error([str(tmp_path / "missing"), str(tmp_path / "missing")], "missing")
    a, b = pair
    pa, narrow = save(a, tmp_path / "a"), save(random_sae(64, 100, 2), tmp_path / "narrow")
    one_line_error([str(pa), str(narrow)], "d=128")  # different d_model
    np.save(tmp_path / "f.npy", np.ones(3))
    one_line_error([str(pa), str(pa), "--freq-a", str(tmp_path / "f.npy")], "3 firing frequencies")
    one_line_error([str(pa), str(pa), "--candidates", "0"], "--candidates 0: must be >= 1")


def test_cli_offline_without_cache(tmp_path):
    """sae.load's FetchError, printed by run_cli in a fresh process: one message, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "LLAMA_SCOPE_DIR": ""}
    r = subprocess.run([sys.executable, "-m", "geometry.compare", "L15R-8x", "L15R-32x"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "hf download" in r.stderr
    assert "Traceback" not in r.stderr
