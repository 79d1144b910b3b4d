"""`geometry.atlas.neuronpedia`: the Neuronpedia batch export of an atlas SAE, and its format check."""

import copy
import json
import math
from dataclasses import replace

import pytest

from geometry.atlas.neuronpedia import (
    ACTIVATION_KEYS,
    BATCH_KEYS,
    FEATURE_KEYS,
    export_neuronpedia,
    validate_batch,
)
from geometry.atlas.records import example_saes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Example SAE "A" (40 features) exported in batches of 16, with the records it was exported from
    (the example draws fresh random contexts on every call, so they are fixed once here)."""
    sae = example_saes()[0]
    records = sae.records(0, sae.n_features)
    sae = replace(sae, records=lambda start, stop: copy.deepcopy(records[start:stop]))
    folder = tmp_path_factory.mktemp("np")
    paths = export_neuronpedia(sae, folder, model_id="example-model", sae_set="atlas-A", batch_size=16)
    batches = [json.loads(p.read_text()) for p in paths]
    return sae, records, folder, paths, batches


def test_batches_are_valid_and_hold_every_feature_in_order(exported):
    sae, records, folder, paths, batches = exported
    assert [p.name for p in paths] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    assert [len(b["features"]) for b in batches] == [16, 16, 8]
    for b in batches:
        assert validate_batch(b) == []
        assert set(b) == set(BATCH_KEYS)
        assert (b["model_id"], b["layer"], b["sae_set"]) == ("example-model", 1, "atlas-A")
        assert all(set(f) == set(FEATURE_KEYS) for f in b["features"])
    ids = [f["feature_index"] for b in batches for f in b["features"]]
    assert ids == list(range(sae.n_features))


def features(batches):
    return [f for b in batches for f in b["features"]]


def test_activations_follow_the_converter_bins(exported):
    sae, records, _, _, batches = exported
    for rec, f in zip(records, features(batches)):
        n_top, samples = len(rec["top"]), rec["samples"]
        assert len(f["activations"]) == n_top + sum(len(s["contexts"]) for s in samples)
        for act, ctx in zip(f["activations"][:n_top], rec["top"]):
            assert set(act) == set(ACTIVATION_KEYS)
            assert (act["bin_min"], act["bin_max"], act["bin_contains"]) == (-1, rec["max"], -1)
            assert act["tokens"] == ctx["tokens"]
            assert act["values"] == [round(a, 3) for a in ctx["acts"]]
        sampled = f["activations"][n_top:]
        expected = [(s["lo"], s["hi"], s["share"], c) for s in samples for c in s["contexts"]]
        for act, (lo, hi, share, ctx) in zip(sampled, expected):
            assert (act["bin_min"], act["bin_max"], act["bin_contains"]) == (lo, hi, share)
            assert act["tokens"] == ctx["tokens"]
        for act in f["activations"]:
            assert len(act["tokens"]) == len(act["values"])


def test_histogram_logits_frequency_and_meta(exported):
    sae, records, _, _, batches = exported
    for rec, f in zip(records, features(batches)):
        edges = rec["hist"]["edges"]
        assert f["freq_hist_data_bar_heights"] == rec["hist"]["counts"]
        centres = f["freq_hist_data_bar_values"]
        assert len(centres) == len(edges) - 1
        assert all(lo <= c <= hi for c, lo, hi in zip(centres, edges[:-1], edges[1:]))
        assert centres[0] == pytest.approx(edges[1] / 2, abs=1e-3)  # low edge 0: arithmetic mean
        assert centres[1] == pytest.approx(math.sqrt(edges[1] * edges[2]), abs=1e-3)  # geometric mean
        assert f["pos_str"] == [t for t, _ in rec["logits"]["top"]]
        assert f["pos_values"] == [v for _, v in rec["logits"]["top"]]
        assert f["neg_str"] == [t for t, _ in rec["logits"]["bottom"]]
        assert f["neg_values"] == [v for _, v in rec["logits"]["bottom"]]
        assert f["logits_hist_data_bar_values"] == f["logits_hist_data_bar_heights"] == []
        assert f["frac_nonzero"] == rec["frequency"]
        assert (f["n_tokens_in_prompt"], f["n_prompts_total"], f["dataset"]) == (32, 0, "example")


def test_never_fired_features_are_exported_without_activations(exported):
    _, records, _, _, batches = exported
    never = [f for rec, f in zip(records, features(batches)) if rec["count"] == 0]
    assert [f["feature_index"] for f in never] == list(range(0, 40, 7))
    assert all(f["activations"] == [] and f["frac_nonzero"] == 0 for f in never)


def test_validate_batch_catches_planted_mistakes(exported):
    batch = exported[4][0]
    broken = copy.deepcopy(batch)
    del broken["features"][2]["pos_values"]
    broken["features"][3]["activations"][0]["values"].pop()
    broken["features"][4]["feature_index"] = "4"
    broken["features"][5]["surprise"] = 1
    del broken["sae_set"]
    problems = validate_batch(broken)
    assert any("features[2]" in p and "missing key 'pos_values'" in p for p in problems)
    assert any("features[3].activations[0]" in p and "tokens has 9 items, values 8" in p for p in problems)
    assert any("features[4].feature_index" in p for p in problems)
    assert any("features[5]" in p and "unexpected key 'surprise'" in p for p in problems)
    assert any(p == "batch: missing key 'sae_set'" for p in problems)
    assert validate_batch(batch) == []


def test_reexport_replaces_stale_batches_and_rejects_bad_batch_size(exported, tmp_path):
    sae = exported[0]
    assert len(export_neuronpedia(sae, tmp_path, model_id="m", sae_set="s", batch_size=8)) == 5
    paths = export_neuronpedia(sae, tmp_path, model_id="m", sae_set="s", batch_size=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-0.json"] == [p.name for p in paths]
    assert json.loads(paths[0].read_text())["layer"] == 1
    with pytest.raises(ValueError):
        export_neuronpedia(sae, tmp_path, model_id="m", sae_set="s", batch_size=0)
    no_layer = replace(sae, meta={**sae.meta, "layer": None})
    assert json.loads(export_neuronpedia(no_layer, tmp_path, model_id="m", sae_set="s")[0].read_text())["layer"] == 0
