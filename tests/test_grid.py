"""The figure grid on a tiny budget (one layer, real model and corpus, isolated cache)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sae.errors import SAEError
from sae.grid import GridConfig, build, layer_names, main


def test_layer_names():
    config = GridConfig(all_position_layers=(3,), vanilla_layers=(7,))
    assert layer_names(3, config) == ["L3R-8x", "L3R-32x", "L3A-8x", "L3A-32x", "L3M-8x", "L3M-32x", "L3TC-8x", "L3TC-32x"]
    assert layer_names(7, config) == ["L7R-8x", "L7R-32x", "L7R-8x-Vanilla", "L7R-32x-Vanilla"]


def test_bad_layer_is_refused():
    with pytest.raises(SAEError, match="layers 0-29"):
        main(["--layers", "3,30"])


@pytest.mark.real_model
def test_tiny_grid_writes_consistent_tables(isolated_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_CACHE", str(isolated_cache))
    config = GridConfig(layers=(0,), all_position_layers=(0,), vanilla_layers=(0,), distinct_tokens=2048, epochs=2, batch_size=1024,
                        anneal_tokens=20480, alive_window=2048, eval_tokens=512, lm_tokens=128, long_context=512,
                        long_tokens=1024)
    paths = build(config, tmp_path)
    ev = pd.read_csv(paths["eval.csv"])
    names = layer_names(0, config)
    plain = ev[ev["dataset"] == "embedded-heldout"]
    assert set(plain["sae"]) == set(names)
    topk = plain[~plain["sae"].str.endswith("Vanilla")]
    assert set(topk["mode"]) == {"native", "topk"} and len(topk) == 16
    assert (topk.loc[topk["mode"] == "topk", "l0"] <= 50 + 1e-9).all()  # TopK inference at k = 50
    chat = ev[ev["dataset"].str.contains("chat template")]
    assert set(chat["sae"]) == {"L0R-8x", "L0R-32x", "L0R-8x-Vanilla", "L0R-32x-Vanilla"}
    assert set(ev["position"]) == {"R", "A", "M", "TC"}

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

    again = build(config, tmp_path / "again")  # everything trained: only the tables are redone
    pd.testing.assert_frame_equal(pd.read_csv(again["training_log.csv"]), log)
