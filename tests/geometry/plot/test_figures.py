"""Paper figures from tables (geometry.plot): every figure on small synthetic tables (traces, axes,
labels and the numbers they carry, checked against the tables), bad tables, draw_all, the CLI and
`make figures`; and the figures drawn from tables that sae.eval.evaluate / geometry.compare really wrote."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geometry.compare import compare
from geometry.plot import draw, export, tables
from geometry.plot import figures as F
from sae.errors import FormatError, SAEError, SAEFileError
from sae.eval.tables import EVAL_COLUMNS, FREQUENCY_COLUMNS, POSITION_COLUMNS
from sae.lm.sites import POSITIONS
from sae.train import LOG_FIELDS

REPO = Path(__file__).resolve().parents[3]
GRID_LAYERS = (3, 7, 11, 15, 19, 23, 27)
FIG2_LAYERS = (7, 15, 23)
WIDTHS = {"8x": 64, "32x": 256}  # features per SAE in the synthetic frequency table


# ---- synthetic tables (the layout the lead's grid writes into figures/data/) -----------------------------
def synthetic_eval(seed: int = 0, models=("base", "instruct"), datasets=("heldout",)) -> pd.DataFrame:
    """eval.csv rows: TopK SAEs (post-processed: arch jumprelu) at every position of GRID_LAYERS in
    native and topk mode, Vanilla (relu) SAEs at R of layers 7/15/23, for each model and dataset."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for dataset in datasets:
            for layer in GRID_LAYERS:
                for pos in POSITIONS:
                    for width, n in WIDTHS.items():
                        kinds = [("", "jumprelu", ("native", "topk"))]
                        if pos == "R" and layer in FIG2_LAYERS:
                            kinds.append(("-Vanilla", "relu", ("native",)))
                        for suffix, arch, modes in kinds:
                            for mode in modes:
                                rows.append({
                                    "sae": f"L{layer}{pos}-{width}{suffix}", "model": model, "dataset": dataset,
                                    "mode": mode, "arch": arch, "layer": layer, "position": pos, "width": width,
                                    "n_features": n, "tokens": 10_000, "l0": rng.uniform(10, 300),
                                    "mse": rng.uniform(0.01, 1), "explained_variance_uncentred": rng.uniform(0.5, 1),
                                    "explained_variance_centred": rng.uniform(0.3, 1), "delta_lm_loss": rng.uniform(0, 1),
                                })
    return pd.DataFrame(rows).reindex(columns=EVAL_COLUMNS)


def synthetic_frequencies(ev: pd.DataFrame, seed: int = 0, tokens: int = 10_000) -> pd.DataFrame:
    """frequencies.csv rows for every native SAE at R of layers 7/15/23 of the first model; about a
    tenth of the features never fire."""
    rng = np.random.default_rng(seed)
    saes = ev[(ev["mode"] == "native") & (ev["position"] == "R") & ev["layer"].isin(FIG2_LAYERS)
              & (ev["model"] == ev["model"].iloc[0])]
    parts = []
    for r in saes.itertuples():
        n = WIDTHS[r.width]
        fires = rng.integers(1, tokens, n) // rng.integers(1, 1000, n)
        fires[rng.random(n) < 0.1] = 0
        parts.append(pd.DataFrame({"sae": r.sae, "model": r.model, "dataset": r.dataset, "mode": "native",
                                   "layer": r.layer, "position": "R", "feature": np.arange(n), "fires": fires,
                                   "tokens": tokens, "frequency": fires / tokens}))
    return pd.concat(parts, ignore_index=True)[FREQUENCY_COLUMNS]


def synthetic_positions(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for sae_label, layer in (("L7R-8x", 7), ("L15R-8x", 15)):
        for start in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]:
            rows.append({"sae": sae_label, "model": "base", "dataset": "heldout", "mode": "native", "layer": layer,
                         "position": "R", "bucket_start": start, "bucket_end": 2 * start, "tokens": 10 * start,
                         "l0": rng.uniform(40, 60), "mse": rng.uniform(0.1, 0.2),
                         "explained_variance_uncentred": rng.uniform(0.7, 0.9)})
    return pd.DataFrame(rows)[POSITION_COLUMNS]


def synthetic_log(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for run in ("k-anneal", "no-anneal"):
        steps = np.arange(0, 200, 10)
        df = pd.DataFrame({c: rng.uniform(0, 1, len(steps)) for c in LOG_FIELDS})
        df["step"] = steps
        df["tokens"] = steps * 4096
        df["mse"] = np.exp(-steps / 100) + rng.uniform(0, 0.05, len(steps))
        parts.append(df.assign(sae="L15R-8x", run=run))
    return pd.concat(parts, ignore_index=True)


def synthetic_neighborhood() -> tuple[pd.DataFrame, pd.DataFrame]:
    """members.csv and edges.csv as geometry.neighborhood writes them."""
    members = pd.DataFrame({"sae": ["8x", "8x", "32x"], "feature": [1, 2, 3], "is_seed": [True, False, False],
                            "cos_to_seed": [1.0, 0.5, 0.4], "label": ["war", "pandemic", "crisis"],
                            "x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 0.5], "class": ["", "", "refined"]})
    edges = pd.DataFrame({"sae_a": ["8x"], "feature_a": [1], "sae_b": ["32x"], "feature_b": [3], "cos": [0.75]})
    return members, edges


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """features_b.csv + summary.json written by a real geometry.compare of two small dictionaries."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(96, 32, generator=g)
    b = torch.cat([a + 0.1 * torch.randn(96, 32, generator=g), torch.randn(160, 32, generator=g)])
    b[5] = 0  # a zero row: left out ('excluded'), not counted in the CDF
    folder = tmp_path_factory.mktemp("compare")
    compare(a, b, cache=False).write(folder)
    return folder


@pytest.fixture
def data_dir(tmp_path, comparison):
    """A complete figures/data folder of synthetic tables."""
    d = tmp_path / "data"
    d.mkdir()
    ev = synthetic_eval()
    ev.to_csv(d / "eval.csv", index=False)
    synthetic_frequencies(ev).to_csv(d / "frequencies.csv", index=False)
    synthetic_positions().to_csv(d / "positions.csv", index=False)
    synthetic_log().to_csv(d / "training_log.csv", index=False)
    (d / "compare").mkdir()
    for name in ("features_b.csv", "summary.json"):
        shutil.copy(comparison / name, d / "compare" / name)
    (d / "neighborhood").mkdir()
    for name, df in zip(("members", "edges"), synthetic_neighborhood()):
        df.to_csv(d / "neighborhood" / f"{name}.csv", index=False)
    return d


def points(trace) -> dict[str, tuple[float, float]]:
    """{hover label: (x, y)} of a trace whose `text` holds the SAE labels."""
    return {t: (float(x), float(y)) for t, x, y in zip(trace.text, trace.x, trace.y)}


def annotations(fig) -> set[str]:
    return {a.text for a in fig.layout.annotations}


# ---- the schemas match what the writers write ------------------------------------------------------------
def test_schemas_are_the_writers_columns():
    assert set(tables.SCHEMAS["eval"][0]) <= set(EVAL_COLUMNS)
    assert set(tables.SCHEMAS["frequencies"][0]) <= set(FREQUENCY_COLUMNS)
    assert set(tables.SCHEMAS["positions"][0]) <= set(POSITION_COLUMNS)
    assert set(tables.SCHEMAS["training_log"][0]) <= set(LOG_FIELDS) | {"sae", "run"}


def test_features_b_and_summary_are_what_compare_writes(comparison):
    fb = pd.read_csv(comparison / "features_b.csv")
    assert set(tables.SCHEMAS["features_b"][0]) <= set(fb.columns)
    tables.read_summary(comparison / "summary.json")  # raises if a key Fig. 8 reads is missing


# ---- each figure ----------------------------------------------------------------------------------------
def test_fig2_points_are_each_saes_l0_ev_and_delta_lm():
    ev = synthetic_eval()
    fig = F.ev_delta_lm_vs_l0(ev)
    assert annotations(fig) >= {"L7R", "L15R", "L23R"}
    assert {t.name for t in fig.data} == {"TopK 8x", "TopK 32x", "Vanilla 8x", "Vanilla 32x"}
    assert fig.layout.xaxis4.title.text == "L0"
    assert "explained variance" in fig.layout.yaxis.title.text and "delta LM" in fig.layout.yaxis4.title.text
    want = ev[(ev["model"] == "base") & (ev["mode"] == "native") & (ev["position"] == "R")
              & ev["layer"].isin(FIG2_LAYERS)]
    assert len(want) == 12
    for r in want.itertuples():
        col = FIG2_LAYERS.index(r.layer) + 1
        name = f"{'Vanilla' if r.arch == 'relu' else 'TopK'} {r.width}"
        (top,) = fig.select_traces(selector={"name": name}, row=1, col=col)
        (bottom,) = fig.select_traces(selector={"name": name}, row=2, col=col)
        assert points(top) == {r.sae: (r.l0, r.explained_variance_uncentred)}
        assert points(bottom) == {r.sae: (r.l0, r.delta_lm_loss)}
    # another model, the centred EV, chosen layers
    fig = F.ev_delta_lm_vs_l0(ev, model="instruct", ev="centred", layers=[15])
    r = ev[(ev["model"] == "instruct") & (ev["sae"] == "L15R-32x") & (ev["mode"] == "native")].iloc[0]
    (top,) = fig.select_traces(selector={"name": "TopK 32x"}, row=1, col=1)
    assert points(top) == {"L15R-32x": (r.l0, r.explained_variance_centred)}
    assert annotations(fig) == {"L15R"}


def test_fig2_uses_all_layers_when_the_papers_are_absent_and_fails_clearly():
    ev = synthetic_eval()
    ev = ev[~ev["layer"].isin(FIG2_LAYERS)]
    fig = F.ev_delta_lm_vs_l0(ev)
    assert annotations(fig) == {f"L{x}R" for x in (3, 11, 19, 27)}
    with pytest.raises(tables.FigureDataError, match="none of layers"):
        F.ev_delta_lm_vs_l0(ev, layers=[7])
    with pytest.raises(tables.FigureDataError, match="no rows with model 'other'"):
        F.ev_delta_lm_vs_l0(ev, model="other")
    with pytest.raises(SAEError, match="uncentred"):
        F.ev_delta_lm_vs_l0(ev, ev="pooled")


def test_fig4_bars_are_the_histogram_of_log10_frequency_with_never_fired_apart():
    ev = synthetic_eval()
    freq = synthetic_frequencies(ev)
    fig = F.firing_frequencies(freq, ev, bins=20)
    assert annotations(fig) == {"L7R", "L15R", "L23R"}
    assert F.NEVER in fig.layout.xaxis.ticktext and fig.layout.xaxis.title.text == "firing frequency (log10)"
    assert fig.layout.yaxis.title.text == "fraction of features"
    assert {t.name for t in fig.data} == {"8x", "32x"}  # TopK only: no Vanilla bars
    lo = np.floor(np.log10(1 / 10_000))
    for c, layer in enumerate(FIG2_LAYERS, start=1):
        for width, n in WIDTHS.items():
            f = freq.loc[freq["sae"] == f"L{layer}R-{width}", "frequency"].to_numpy()
            hist, never = fig.select_traces(selector={"name": width}, row=1, col=c)
            assert list(hist.hovertext) == [f"L{layer}R-{width}"] * 20 and len(hist.x) == 20
            # brute force: which of 20 equal bins on [lo, 0] each firing feature's log10 frequency falls in
            counts = np.zeros(20)
            for v in f[f > 0]:
                counts[min(int((np.log10(v) - lo) / (-lo / 20)), 19)] += 1
            np.testing.assert_allclose(hist.y, counts / n)
            assert never.y[0] == pytest.approx(np.sum(f == 0) / n) and never.y[0] > 0
            assert never.x[0] < lo
            assert sum(hist.y) + never.y[0] == pytest.approx(1)


def test_fig4_needs_the_eval_rows_of_its_saes():
    ev = synthetic_eval()
    freq = synthetic_frequencies(ev)
    with pytest.raises(tables.FigureDataError, match="also in the eval table"):
        F.firing_frequencies(freq, ev[ev["position"] != "R"])


def test_fig5_mse_and_l0_by_position_bucket():
    pos = synthetic_positions()
    fig = F.by_token_position(pos)
    assert fig.layout.xaxis.type == fig.layout.xaxis2.type == "log" and "token position" in fig.layout.xaxis2.title.text
    assert fig.layout.yaxis.title.text == "MSE (log)" and fig.layout.yaxis.type == "log"
    assert fig.layout.yaxis2.title.text == "L0"
    for label in ("L7R-8x", "L15R-8x"):
        g = pos[pos["sae"] == label]
        mse, l0 = fig.select_traces(selector={"name": label.replace("-", " ", 1)})
        np.testing.assert_allclose(mse.x, (g["bucket_start"] + g["bucket_end"] - 1) / 2)
        np.testing.assert_allclose(mse.y, g["mse"])
        np.testing.assert_allclose(l0.y, g["l0"])
    (a,), (b,) = (fig.select_traces(selector={"name": n}, row=1) for n in ("L7R 8x", "L15R 8x"))
    assert a.line.color != b.line.color and a.line.dash == b.line.dash  # colour: site, dash: kind
    fig = F.by_token_position(pos, saes=["L15R-8x"])
    assert {t.name for t in fig.data} == {"L15R 8x"}
    other = pos.assign(sae=pos["sae"].map({"L7R-8x": "runs/mine", "L15R-8x": "L15R-8x-Vanilla"}))
    assert {t.name for t in F.by_token_position(other).data} == {"runs/mine", "L15R 8x-Vanilla"}


def test_fig6_by_model_and_by_dataset():
    ev = synthetic_eval()
    fig = F.conditions_by_layer(ev)
    assert {t.name for t in fig.data} == {"base · 8x", "base · 32x", "instruct · 8x", "instruct · 32x"}
    assert fig.layout.yaxis.title.text == "L0" and "delta LM" in fig.layout.yaxis2.title.text
    assert fig.layout.xaxis2.title.text == "layer"
    for model in ("base", "instruct"):
        want = ev[(ev["model"] == model) & (ev["sae"].str.fullmatch(r"L\d+R-8x")) & (ev["mode"] == "native")]
        l0, dlm = fig.select_traces(selector={"name": f"{model} · 8x"})
        assert list(l0.x) == sorted(want["layer"]) == list(GRID_LAYERS)
        np.testing.assert_allclose(l0.y, want.sort_values("layer")["l0"])
        np.testing.assert_allclose(dlm.y, want.sort_values("layer")["delta_lm_loss"])
    ev2 = synthetic_eval(models=("m",), datasets=("wiki", "chat"))
    fig = F.conditions_by_layer(ev2, by="dataset")
    assert {t.name for t in fig.data} == {"wiki · 8x", "wiki · 32x", "chat · 8x", "chat · 32x"}
    with pytest.raises(tables.FigureDataError, match="needs two values of 'model'"):
        F.conditions_by_layer(ev2, by="model")


def test_fig8_cdf_of_live_features_against_the_summary_baselines(comparison):
    fb = pd.read_csv(comparison / "features_b.csv")
    summary = json.loads((comparison / "summary.json").read_text())
    fig = F.max_cos_cdf(fb, summary)
    observed, baseline, isotropic = fig.data
    live = fb.loc[fb["excluded"].isna(), "best_cos"]
    assert len(live) == len(fb) - 1  # the zero row is left out
    np.testing.assert_allclose(observed.x, np.sort(live))  # under 400 points: every feature
    assert observed.y[0] == 0 and observed.y[-1] == 1 and np.all(np.diff(observed.y) > 0)
    q = summary["max_cos"]["baseline_b_to_a"]["quantiles"]
    np.testing.assert_allclose(baseline.x, [q[k] for k in sorted(q, key=float)])
    np.testing.assert_allclose(baseline.y, sorted(float(k) for k in q))
    assert isotropic.name == "isotropic random"
    assert f"median {np.median(live):.3f}" in observed.name
    assert fig.layout.shapes[0].x0 == pytest.approx(summary["epsilon"]["a"])
    assert fig.layout.xaxis.title.text == "max cosine to A" and fig.layout.yaxis.title.text == "fraction of features"
    bad = {k: v for k, v in summary.items() if k != "epsilon"}
    with pytest.raises(FormatError, match="not a geometry.compare summary"):
        F.max_cos_cdf(fb, bad)


def test_fig10_every_topk_sae_by_layer_per_position():
    ev = synthetic_eval()
    fig = F.all_saes_by_layer(ev)
    assert annotations(fig) == {f"position {p}" for p in POSITIONS}
    assert {t.name for t in fig.data} == {"8x", "32x"}
    titles = [fig.layout[f"yaxis{i if i > 1 else ''}"].title.text for i in (1, 5, 9)]
    assert titles == ["L0", "EV (uncentred)", "delta LM loss"]
    for c, pos in enumerate(POSITIONS, start=1):
        want = ev[(ev["model"] == "base") & (ev["position"] == pos) & (ev["width"] == "32x")
                  & (ev["mode"] == "native") & (ev["arch"] != "relu")].sort_values("layer")
        (l0,), (evar,), (dlm,) = (list(fig.select_traces(selector={"name": "32x"}, row=r, col=c)) for r in (1, 2, 3))
        assert list(l0.x) == list(want["layer"])
        np.testing.assert_allclose(l0.y, want["l0"])
        np.testing.assert_allclose(evar.y, want["explained_variance_uncentred"])
        np.testing.assert_allclose(dlm.y, want["delta_lm_loss"])


def test_fig11_topk_against_jumprelu_inference():
    ev = synthetic_eval()
    fig = F.inference_modes(ev)
    assert {t.name for t in fig.data} == {"topk · 8x", "topk · 32x", "jumprelu · 8x", "jumprelu · 32x"}
    assert fig.layout.yaxis.title.text == "L0" and fig.layout.yaxis2.title.text == "MSE"
    base = ev[(ev["model"] == "base") & (ev["position"] == "R") & (ev["arch"] == "jumprelu") & (ev["width"] == "8x")]
    for mode, rows in (("topk", base[base["mode"] == "topk"]), ("jumprelu", base[base["mode"] == "native"])):
        l0, mse = fig.select_traces(selector={"name": f"{mode} · 8x"})
        rows = rows.sort_values("layer")
        np.testing.assert_allclose(l0.y, rows["l0"])
        np.testing.assert_allclose(mse.y, rows["mse"])
    with pytest.raises(tables.FigureDataError, match="no rows in topk mode"):
        F.inference_modes(ev[ev["mode"] != "topk"])


def test_fig12_mse_and_alive_by_step_per_run():
    log = synthetic_log()
    fig = F.k_annealing(log)
    assert {t.name for t in fig.data} == {"k-anneal", "no-anneal"}
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis2.title.text == "training step"
    assert fig.layout.yaxis2.title.text == "fraction of features alive"
    for run in ("k-anneal", "no-anneal"):
        g = log[log["run"] == run]
        mse, alive = fig.select_traces(selector={"name": run})
        np.testing.assert_allclose(mse.x, g["step"])
        np.testing.assert_allclose(mse.y, g["mse"])
        np.testing.assert_allclose(alive.y, g["alive"])
    two = pd.concat([log, log.assign(sae="L15R-32x")])
    assert {t.name for t in F.k_annealing(two).data} == {f"{s} · {r}" for s in ("L15R-8x", "L15R-32x")
                                                        for r in ("k-anneal", "no-anneal")}


def test_fig12_from_real_training_logs(tmp_path):
    """sae.train's own log.csv of two tiny runs (with and without K-annealing) draws Fig. 12."""
    from sae.data.synthetic import SyntheticData
    from sae.train import SAESpec, TrainConfig, read_log, train

    data = SyntheticData(d=32, n_parents=24, seed=0).sample(4096)
    specs = [SAESpec(name=run, n_features=128, k=4, k_anneal=run == "k-anneal") for run in ("k-anneal", "no-anneal")]
    train(data, specs, TrainConfig(total_tokens=4096, batch_size=256, log_every=1, alive_window=1024), out_dir=tmp_path,
          progress=False)
    log = pd.concat([read_log(tmp_path / run).assign(sae="s", run=run) for run in ("k-anneal", "no-anneal")])
    fig = F.k_annealing(log)
    for run in ("k-anneal", "no-anneal"):
        g = log[log["run"] == run]
        mse, alive = fig.select_traces(selector={"name": run})
        np.testing.assert_allclose(mse.x, g["step"])
        np.testing.assert_allclose(alive.y, g["alive"])
    k = {run: log.loc[log["run"] == run, "k"] for run in ("k-anneal", "no-anneal")}
    assert k["k-anneal"].iloc[0] > 4 and k["k-anneal"].iloc[-1] == 4 and (k["no-anneal"] == 4).all()


def test_fig7_redraws_a_neighborhood_from_its_tables():
    pytest.importorskip("geometry.neighborhood")
    members, edges = synthetic_neighborhood()
    fig = F.neighborhood_figure(members, edges, title="threats")
    assert fig.data and "threats" in fig.layout.title.text
    xs = np.concatenate([np.asarray(t.x, dtype=float) for t in fig.data if t.x is not None])
    assert set(members["x"]) <= set(xs)


# ---- bad tables -----------------------------------------------------------------------------------------
def test_malformed_tables_raise_one_clear_error(tmp_path):
    ev = synthetic_eval()
    with pytest.raises(FormatError, match="missing column.*delta_lm_loss"):
        F.ev_delta_lm_vs_l0(ev.drop(columns="delta_lm_loss"))
    bad = ev.astype({"l0": object})
    bad.loc[3, "l0"] = "many"
    with pytest.raises(FormatError, match="'l0' holds a non-numeric value \\('many'\\)"):
        F.all_saes_by_layer(bad)
    with pytest.raises(FormatError, match="no rows"):
        F.k_annealing(synthetic_log().iloc[:0])
    freq = synthetic_frequencies(ev)
    freq.loc[0, "frequency"] = 1.5
    with pytest.raises(FormatError, match=r"\[0, 1\]"):
        F.firing_frequencies(freq, ev)
    (tmp_path / "x.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SAEFileError, match="not a readable CSV"):
        tables.read_table(tmp_path / "x.csv", "eval")
    with pytest.raises(SAEFileError, match="missing table"):
        tables.read_table(tmp_path / "none.csv", "eval")
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        tables.read_summary(tmp_path / "s.json")


# ---- draw_all and the command line ----------------------------------------------------------------------
def test_draw_all_writes_html_and_skips_what_is_missing(data_dir, tmp_path):
    out = tmp_path / "figs"
    res = draw.draw_all(data_dir, out, formats=["html"])
    status = dict(zip(res["figure"], res["status"]))
    has_fig7 = importlib.util.find_spec("geometry.neighborhood") is not None
    assert status == {2: "written", 4: "written", 5: "written", 6: "written", 7: "written" if has_fig7 else "skipped",
                      8: "written", 10: "written", 11: "written", 12: "written"}
    for r in res[res["status"] == "written"].itertuples():
        (path,) = r.paths
        assert Path(path) == out / f"fig{r.figure}_{r.name}.html"
        page = Path(path).read_text()
        assert '<script charset="utf-8" src="plotly.min.js"></script>' in page and len(page) < 1_000_000
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # one shared copy
    if not has_fig7:
        assert res.set_index("figure").loc[7, "note"] == "needs geometry.neighborhood, which this installation lacks"
    # a missing table skips only its figures; --only; a single-model table skips Fig. 6
    (data_dir / "positions.csv").unlink()
    synthetic_eval(models=("base",)).to_csv(data_dir / "eval.csv", index=False)
    res = draw.draw_all(data_dir, out, only=[5, 6, 2], formats=["html"], plotlyjs="inline").set_index("figure")
    assert list(res.index) == [5, 6, 2]
    assert res.loc[5, "status"] == "skipped" and res.loc[5, "note"] == f"needs {data_dir / 'positions.csv'}"
    assert res.loc[6, "status"] == "skipped" and "two models or two datasets" in res.loc[6, "note"]
    assert res.loc[2, "status"] == "written" and len(Path(res.loc[2, "paths"][0]).read_text()) > 3_000_000  # inline
    with pytest.raises(SAEError, match="no figure 3"):
        draw.draw_all(data_dir, out, only=[3])
    with pytest.raises(SAEError, match="unknown format"):
        draw.draw_all(data_dir, out, formats=["gif"])
    with pytest.raises(SAEFileError, match="no data folder"):
        draw.draw_all(tmp_path / "nowhere", out)


def test_draw_all_raises_on_a_malformed_table(data_dir, tmp_path):
    pd.read_csv(data_dir / "training_log.csv").drop(columns="alive").to_csv(data_dir / "training_log.csv", index=False)
    with pytest.raises(FormatError, match="training_log.csv: missing column"):
        draw.draw_all(data_dir, tmp_path / "figs", formats=["html"])


def test_without_a_browser_the_html_is_written_and_the_note_says_why(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "find_browser", lambda: None)
    res = draw.draw_all(data_dir, tmp_path / "figs", only=[12], formats=["svg"]).iloc[0]
    assert res.status == "written" and "no Chrome/Chromium found" in res.note
    assert res.paths == [str(tmp_path / "figs" / "fig12_k_annealing.html")] and Path(res.paths[0]).is_file()
    assert not (tmp_path / "figs" / "fig12_k_annealing.svg").exists()


def test_static_export_through_kaleido(data_dir, tmp_path):
    pytest.importorskip("kaleido")
    if not export.find_browser():
        pytest.skip("no Chrome/Chromium here (Debian: apt-get install chromium)")
    res = draw.draw_all(data_dir, tmp_path / "figs", only=[2, 12], formats=["html", "png", "svg"])
    for r in res.itertuples():
        assert r.note == "" and [Path(p).suffix for p in r.paths] == [".html", ".png", ".svg"]
        png, svg = Path(r.paths[1]).read_bytes(), Path(r.paths[2]).read_text()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        assert "<svg" in svg and ("training step" if r.figure == 12 else "L15R") in svg
    assert not list((tmp_path / "figs").glob(".*.tmp"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geometry.figures", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_prints_one_line_per_figure_and_errors_without_traceback(data_dir, tmp_path):
    (data_dir / "frequencies.csv").unlink()
    r = run_cli("--data", str(data_dir), "--out", str(tmp_path / "f"), "--only", "4,12", "--format", "html")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"fig 4: skipped, needs {data_dir / 'frequencies.csv'}",
                                     f"fig 12: {tmp_path / 'f' / 'fig12_k_annealing.html'}"]
    (data_dir / "eval.csv").write_text("sae,model\nx,y\n")
    r = run_cli("--data", str(data_dir), "--out", str(tmp_path / "f"), "--only", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: ") and "eval.csv: missing column" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("--only", "2,x")
    assert r.returncode == 2 and "figure numbers" in r.stderr


def test_cli_help_documents_every_option():
    r = run_cli("--help")
    for opt in ("--data", "--out", "--only", "--format", "--plotlyjs", "--model", "--dataset", "--quiet"):
        assert opt in r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_figures(data_dir, tmp_path):
    out = tmp_path / "made"
    # -o: never (re)install the venv from a test; BIN: the interpreter running the tests
    r = subprocess.run(["make", "-s", "-o", ".venv/.installed", "figures", f"BIN={Path(sys.executable).parent}",
                        f"FIGURES_DATA={data_dir}", f"FIGURES_OUT={out}", "FIGURES_FORMAT=html"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert f"fig 2: {out / 'fig2_ev_delta_lm_vs_l0.html'}" in r.stdout.splitlines()
    assert {p.name for p in out.glob("*.html")} >= {f"fig{n}_{s.name}.html" for s in draw.FIGURES for n in [s.number]
                                                    if n != 7}


# ---- figures from tables the project's own tools wrote ---------------------------------------------------
def test_figures_from_a_real_evaluation(tiny_llama, tiny_corpus, tmp_path):
    """sae.eval.evaluate on a tiny random Llama writes eval/frequencies/positions tables; Figs. 2, 4, 5, 10
    and 11 draw from them and carry their numbers."""
    from conftest import TINY_D
    from saes import site_sae as random_sae

    from sae.eval.evaluate import evaluate

    model, tok = tiny_llama
    saes = {f"L{layer}R-{w}x{suffix}": random_sae(f"blocks.{layer}.hook_resid_post", activation=arch, seed=layer + w,
                                                 n=w * TINY_D)
            for layer in (1, 2) for w in (8, 32) for suffix, arch in (("", "jumprelu"), ("-Vanilla", "relu"))}
    res = evaluate(saes, model, tiny_corpus, tokenizer=tok, modes=("native", "topk"), tokens=200, lm_tokens=40,
                   batch_size=4, progress=False)
    res.write(tmp_path / "data")
    data = tmp_path / "data"
    out = draw.draw_all(data, tmp_path / "figs", only=[2, 4, 5, 10, 11], formats=["html"]).set_index("figure")
    assert (out["status"] == "written").all(), out["note"].to_dict()
    ev = tables.read_table(data / "eval.csv", "eval")
    fig = F.ev_delta_lm_vs_l0(ev)
    r = ev[(ev["sae"] == "L2R-32x-Vanilla") & (ev["mode"] == "native")].iloc[0]
    (trace,) = fig.select_traces(selector={"name": "Vanilla 32x"}, row=2, col=2)
    assert points(trace)["L2R-32x-Vanilla"] == (r.l0, r.delta_lm_loss)
    freq = tables.read_table(data / "frequencies.csv", "frequencies")
    fig4 = F.firing_frequencies(freq, ev)
    f = freq.loc[(freq["sae"] == "L1R-8x") & (freq["mode"] == "native"), "frequency"].to_numpy()
    _, never = fig4.select_traces(selector={"name": "8x"}, row=1, col=1)
    assert never.y[0] == pytest.approx(np.mean(f == 0))


@pytest.mark.real_model
def test_figures_from_the_embedded_model(smollm2, tmp_path):
    """A few hundred held-out tokens of SmolLM2 through a demo-suite-shaped SAE: Figs. 2 and 5."""
    from sae import SAEMeta, SparseAutoencoder
    from sae.eval.evaluate import evaluate

    model, tok = smollm2
    g = torch.Generator().manual_seed(0)
    s = SparseAutoencoder.from_weights(torch.randn(576, 1024, generator=g) / 24, torch.zeros(1024),
                                       torch.randn(1024, 576, generator=g) / 32, torch.zeros(576), activation="topk",
                                       k=50, meta=SAEMeta(hook_in="blocks.15.hook_resid_post"))
    res = evaluate({"L15R-8x": s}, model, "embedded-heldout", tokenizer=tok, tokens=300, lm_tokens=0, batch_size=4,
                   progress=False)
    fig = F.ev_delta_lm_vs_l0(res.eval)
    r = res.eval.iloc[0]
    assert points(fig.data[0])["L15R-8x"] == (r.l0, r.explained_variance_uncentred) and r.l0 == pytest.approx(50)
    fig5 = F.by_token_position(res.positions)
    np.testing.assert_allclose(fig5.data[1].y, res.positions["l0"])


def test_an_empty_edge_table_is_a_neighbourhood_without_edges():
    pytest.importorskip("geometry.neighborhood")
    members = pd.DataFrame({"sae": ["a", "b"], "feature": [0, 1], "is_seed": [True, False], "cos_to_seed": [1.0, 0.3],
                            "label": ["x", "y"], "x": [0.0, 1.0], "y": [0.0, 1.0], "class": ["", "novel"]})
    edges = pd.DataFrame(columns=["sae_a", "feature_a", "sae_b", "feature_b", "cos"])
    fig = F.neighborhood_figure(members, edges)
    points = sum(len(t.x) for t in fig.data if t.mode and "markers" in t.mode)
    assert points == 2
