"""Planted structure is recovered: every class of B feature and every family type, at >= 95%."""

import pandas as pd
import pytest

from geometry.compare import compare
from geometry.planted import planted


@pytest.fixture(scope="module", params=[0, 1])
def result(request):
    p = planted(1000, 512, n_b=2500, seed=request.param)  # moderate noise (the defaults)
    return p, compare(p.a, p.b, freq_a=p.freq_a, freq_b=p.freq_b, cache=False, k=16)


def recovery(truth: pd.Series, found: pd.Series) -> dict:
    return {t: float((found[truth == t] == t).mean()) for t in truth.unique() if t != "-"}


def test_every_b_class_recovered(result):
    p, c = result
    rec = recovery(p.truth_b["cls"], c.features_b["class"])
    assert set(rec) == {"same", "refined", "composite", "novel", "dead"}
    assert min(rec.values()) >= 0.95, rec


def test_every_family_type_recovered(result):
    p, c = result
    rec_b = recovery(p.truth_b["family"], c.features_b["family_type"])
    rec_a = recovery(p.truth_a["family"], c.features_a["family_type"])
    assert set(rec_b) == {"1:1", "split", "merge", "tangled", "novel"} and set(rec_a) == {"1:1", "split", "merge", "tangled", "lost"}
    assert min(rec_b.values()) >= 0.95 and min(rec_a.values()) >= 0.95, (rec_a, rec_b)


def test_parents_composites_and_dead(result):
    p, c = result
    fb, tb = c.features_b, p.truth_b
    one = tb["sources"].map(len) == 1  # copies and children: the best match is the source
    assert (fb.loc[one, "best_match"] == tb.loc[one, "sources"].map(lambda s: s[0])).mean() >= 0.99
    mix = (tb["kind"] == "mixture") & (fb["class"] == "composite")
    atoms = fb.loc[mix, [f"atom_{i}" for i in range(1, 5)]].to_numpy()
    hit = [set(src) <= set(row) for src, row in zip(tb.loc[mix, "sources"], atoms.tolist())]
    assert sum(hit) / len(hit) >= 0.95
    s = c.summary
    assert s["b"]["n_dead"] + s["b"]["n_zero"] == (tb["kind"] == "dead").sum()
    assert s["a"]["n_zero"] == (p.truth_a["kind"] == "dead").sum()
    children = c.features_a.loc[p.truth_a["kind"] == "parent", "n_children"]
    assert children.between(2, 3).mean() >= 0.95
