"""The figure grid on a tiny budget (one layer, real model and corpus, isolated cache)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sae.errors import SAEError
from sae.pipelines.demo import DemoSettings
from sae.pipelines.grid import GridSettings, build, layer_specs, main


def test_layer_specs():
    grid, recipe = GridSettings(layers="3,7,15", position_layers="3", sweep_layer=15), DemoSettings()
    assert [s.name for s in layer_specs(3, grid, recipe)] == ["L3R-8x", "L3R-32x", "L3R-8x-Vanilla", "L3A-8x",
                                                             "L3M-8x", "L3TC-8x"]
    assert [s.name for s in layer_specs(7, grid, recipe)] == ["L7R-8x", "L7R-32x", "L7R-8x-Vanilla"]
    sweep = {s.name: s for s in layer_specs(15, grid, recipe)}
    assert sweep["L15R-8x-k20"].k == 20 and sweep["L15R-8x-k100"].k == 100
    assert sweep["L15R-8x-Vanilla-l1-0.0007"].l1_coefficient == 7e-4 and "L15R-8x-Vanilla-l1-0.0014" not in sweep
    tc = layer_specs(3, grid, recipe)[-1]
    assert tc.transcoder and tc.hook_in != tc.out_hook


@pytest.mark.parametrize("argv, message", [(["--layers", "3,30"], "layers 0-29"),
                                           (["--layers", "3", "--sweep-layer", "15"], "among --layers"),
                                           (["--k-sweep", "20,x"], "comma-separated")])
def test_bad_grid_is_refused(argv, message):
    with pytest.raises(SAEError, match=message):
        main(argv)


@pytest.mark.real_model
def test_tiny_grid_writes_consistent_tables(isolated_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_CACHE", str(isolated_cache))
    grid = GridSettings(layers="0", position_layers="0", sweep_layer=0, k_sweep="20", l1_sweep="3e-3",
                        anneal_tokens=20480, alive_window=2048, eval_tokens=512, lm_tokens=128, long_context=512,
                        long_tokens=1024)
    recipe = DemoSettings(distinct_tokens=2048, epochs=2, threshold_tokens=2048)
    paths = build(grid, recipe, tmp_path)
    ev = pd.read_csv(paths["eval.csv"])
    names = ["L0R-8x", "L0R-32x", "L0R-8x-Vanilla", "L0A-8x", "L0M-8x", "L0TC-8x"]
    plain = ev[ev["dataset"] == "embedded-heldout"]
    assert set(plain["sae"]) == set(names)
    topk = plain[~plain["sae"].str.endswith("Vanilla")]
    assert set(topk["mode"]) == {"native", "topk"} and len(topk) == 10
    assert (topk.loc[topk["mode"] == "topk", "l0"] <= 50 + 1e-9).all()  # TopK inference at k = 50
    chat = ev[ev["dataset"].str.contains("chat template")]
    assert set(chat["sae"]) == {"L0R-8x", "L0R-32x", "L0R-8x-Vanilla"}
    assert set(ev["position"]) == {"R", "A", "M", "TC"}

    sweep = pd.read_csv(paths["sweep.csv"])
    assert set(sweep["sae"]) == {"L0R-8x-k20", "L0R-8x-Vanilla-l1-0.003"}
    k20 = sweep[(sweep["sae"] == "L0R-8x-k20") & (sweep["mode"] == "topk")]
    assert k20["k"].item() == 20 and k20["l0"].item() <= 20 + 1e-9

    # frequencies and eval are two views of the same count: L0 = sum over features of the frequency
    freq = pd.read_csv(paths["frequencies.csv"])
    assert set(freq["sae"]) == {"L0R-8x", "L0R-32x"}
    for name, rows in freq.groupby("sae"):
        l0 = plain[(plain["sae"] == name) & (plain["mode"] == "native")]["l0"].item()
        assert np.isclose(rows["frequency"].sum(), l0, rtol=1e-4)
        assert len(rows) == (4608 if name == "L0R-8x" else 18432)

    pos = pd.read_csv(paths["positions.csv"])
    assert pos["bucket_end"].max() > 256  # packed rows: positions past one short article
    assert pos["dataset"].str.contains("packed").all()

    log = pd.read_csv(paths["training_log.csv"])
    assert set(log["run"]) == {"k-anneal", "no-anneal"}
    first = log.sort_values("step").groupby("run")["k"].first()
    assert first["k-anneal"] > 50 and first["no-anneal"] == 50

    again = build(grid, recipe, tmp_path / "again")  # everything trained: only the tables are redone
    pd.testing.assert_frame_equal(pd.read_csv(again["training_log.csv"]), log)
