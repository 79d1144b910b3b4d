"""geometry.neighborhood: members, edges and epsilon against a dense computation; UMAP determinism; the
figure's colouring; classes equal geometry.compare's; keyword and concept seeds; the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from saes import detector_sae

from geometry.compare import compare
from geometry.neighborhood import (
    NeighborhoodSettings,
    best_seeds,
    concept_seeds,
    find_seeds,
    keyword_pattern,
    main,
    member_classes,
    neighborhood,
    run_neighborhood,
)
from geometry.options import GeometryError
from geometry.planted import planted
from geometry.plot.maps import neighborhood_map
from geometry.similarity import unit_rows
from sae import save
from sae.errors import run_cli
from sae.interp.contexts import top_contexts
from sae.model import SAEMeta, SparseAutoencoder

D = 64
SEED = 5


def dictionaries(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three random dictionaries around one seed direction: near copies and noisy children of it."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda n: torch.randn(n, D, generator=g)  # noqa: E731
    s = rnd(300)
    base = unit_rows(s[SEED : SEED + 1])
    v = rnd(300)
    v[:3] = base + 0.3 * unit_rows(rnd(3))
    w = rnd(1200)
    w[:10] = base + 0.6 * unit_rows(rnd(10))
    return {"V": v, "S": s, "W": w}


@pytest.fixture(scope="module")
def nb_and_rows():
    rows = dictionaries()
    labels = {"W": pd.DataFrame({"feature": np.arange(1200), "label": [f"w-label {i}" for i in range(1200)]})}
    nb = neighborhood("S", SEED, {"V": 6, "S": 6, "W": 24}, rows, labels=labels, seed=0)
    return nb, {k: unit_rows(v) for k, v in rows.items()}


def test_members_edges_and_epsilon_equal_a_dense_computation(nb_and_rows):
    nb, unit = nb_and_rows
    m = nb.members
    assert m.groupby("sae", sort=False).size().to_dict() == {"V": 6, "S": 6, "W": 24}
    seed_dir = unit["S"][SEED]
    for name, n in (("V", 6), ("S", 6), ("W", 24)):
        cos = (unit[name] @ seed_dir).numpy()
        expected = np.argsort(-cos, kind="stable")[:n]
        got = m[m.sae == name]
        assert set(got.feature) == set(expected)
        np.testing.assert_allclose(got.cos_to_seed, cos[got.feature], atol=1e-6)
    seeds = m[m.is_seed]
    assert seeds[["sae", "feature"]].values.tolist() == [["S", SEED]] and seeds.cos_to_seed.iloc[0] == pytest.approx(1)
    # every cross-SAE pair at cos >= 0.7, and nothing else
    dirs = torch.stack([unit[s][f] for s, f in zip(m.sae, m.feature)])
    gram = (dirs @ dirs.T).numpy()
    want = {(m.sae[i], m.feature[i], m.sae[j], m.feature[j]) for i in range(len(m)) for j in range(i + 1, len(m))
            if m.sae[i] != m.sae[j] and gram[i, j] >= 0.7}
    assert {tuple(r) for r in nb.edges[["sae_a", "feature_a", "sae_b", "feature_b"]].itertuples(index=False)} == want
    assert len(want) >= 10  # the planted copies and children make edges
    assert nb.summary["min_pairwise_cos"] == pytest.approx(gram[np.triu_indices(len(m), 1)].min(), abs=1e-6)
    assert nb.summary["epsilon"]["W"] == pytest.approx(math.sqrt(12 * math.log(1200) / D))
    assert nb.summary["umap"]["random_state"] == 0 and nb.summary["umap"]["metric"] == "cosine"
    assert (m[m.sae == "W"].label == [f"w-label {f}" for f in m[m.sae == "W"].feature]).all()
    assert (m[m.sae != "W"].label == "").all()
    assert nb.summary["class_reference"] == {"V": None, "S": None, "W": "S"}  # W is wider than the seed SAE
    assert (m[m.sae == "W"]["class"] != "").all() and (m[m.sae != "W"]["class"] == "").all()


def test_members_come_from_live_features_only(nb_and_rows):
    _, unit = nb_and_rows
    seed_dir = unit["S"][SEED]
    cos = (unit["W"] @ seed_dir).numpy()
    live = np.ones(len(cos), bool)
    live[np.argsort(-cos, kind="stable")[:5]] = False  # the five nearest never fired
    nb = neighborhood("S", SEED, {"S": 6, "W": 24}, unit, live={"W": live}, seed=0)
    got = nb.members[nb.members.sae == "W"]
    expected = np.flatnonzero(live)[np.argsort(-cos[live], kind="stable")[:24]]  # the 24 nearest live ones
    assert set(got.feature) == set(expected) and live[got.feature].all()
    assert len(nb.members[nb.members.sae == "S"]) == 6  # no mask for S: every feature


def test_figure_colours_by_sae_and_redraws_from_csv(nb_and_rows, tmp_path):
    nb, _ = nb_and_rows
    fig = nb.figure()
    points = [t for t in fig.data if t.mode == "markers+text"]
    assert [t.name for t in points] == ["V (6)", "S (6)", "W (24)"]
    assert len({t.marker.color for t in points}) == 3
    assert [len(t.x) for t in points] == [6, 6, 24]
    assert list(points[1].marker.symbol).count("star") == 1
    assert any("w-label" in h for h in points[2].hovertext)
    (lines,) = [t for t in fig.data if t.mode == "lines"]
    assert len(lines.x) == 3 * len(nb.edges)
    nb.write(tmp_path)
    members, edges = pd.read_csv(tmp_path / "members.csv", keep_default_na=False), pd.read_csv(tmp_path / "edges.csv")
    again = neighborhood_map(members, edges, title="from CSV")
    assert [list(t.x) for t in again.data] == [list(t.x) for t in fig.data]
    assert "plotly" in (tmp_path / "neighborhood.html").read_text()[:200000]
    assert (tmp_path / "summary.json").is_file()


def test_umap_layout_is_deterministic_for_a_seed(nb_and_rows):
    nb, _ = nb_and_rows
    rows = dictionaries()
    again = neighborhood("S", SEED, {"V": 6, "S": 6, "W": 24}, rows, seed=0)
    other = neighborhood("S", SEED, {"V": 6, "S": 6, "W": 24}, rows, seed=1)
    np.testing.assert_array_equal(again.members[["x", "y"]], nb.members[["x", "y"]])
    assert not np.allclose(other.members[["x", "y"]], nb.members[["x", "y"]])


def test_member_classes_equal_compare():
    p = planted(300, 128, seed=1)
    full = compare(p.a, p.b, cache=False).features_b
    rng = np.random.default_rng(0)
    live = full.loc[full["class"] != "dead", "feature"].to_numpy()
    pick = np.sort(rng.choice(live, 80, replace=False))
    got = member_classes(unit_rows(p.a), unit_rows(p.b), pick)
    assert got.tolist() == full.set_index("feature").loc[pick, "class"].tolist()
    assert len(set(got)) >= 4  # several classes among the picked rows


def test_bad_inputs():
    rows = dictionaries()
    with pytest.raises(GeometryError, match="out of range"):
        neighborhood("S", 300, {"S": 3}, rows)
    with pytest.raises(GeometryError, match="no SAE given"):
        neighborhood("S", 1, {"X": 3}, rows)
    with pytest.raises(Exception, match="different d"):
        neighborhood("S", 1, {"S": 3, "Z": 3}, {**rows, "Z": torch.randn(10, 32)})
    with pytest.raises(GeometryError, match="at least 4"):
        neighborhood("S", 1, {"S": 3}, rows)


def test_keyword_pattern():
    pat = keyword_pattern("war")
    assert all(pat.search(t) for t in ("War", "two wars", "war-time", "the War."))
    assert not any(pat.search(t) for t in ("award", "warm", "Warsaw", "toward"))


def test_keyword_seeds_from_contexts_and_labels(tiny_llama):
    model, tok = tiny_llama
    z, q = tok.convert_tokens_to_ids(["Z", "Q"])
    docs = [{"title": "Zulu War" if i % 3 == 0 else f"Note {i}",
             "text": ("the Zulus came home" if i % 3 == 0 else "a quiet day") + (" in a Quiz" if i % 3 == 1 else "")}
            for i in range(18)]
    ctx = top_contexts(detector_sae(model, [z, q]), model=model, tokenizer=tok, dataset=docs, context=256, progress=False)
    hits = find_seeds(ctx, "zulu, war, quiz, pandemic")
    got = {(r.feature, r.keyword): (r.token_score, r.title_score) for r in hits.itertuples()}
    assert got[(0, "zulu")] == (1.0, 0.3)  # every Z is inside a matching word; 6 matching titles of n_top = 20
    assert got[(0, "war")] == (0.0, 0.3)  # no token matches, every top document's title does
    assert got[(1, "quiz")][0] == 1.0 and (1, "war") not in got and "pandemic" not in set(hits.keyword)
    assert hits.score.is_monotonic_decreasing and hits.label.str.startswith(("z", "q")).all()
    ranked = best_seeds(hits, 2)
    assert ranked.feature.tolist() == [0, 1] and ranked.n_keywords.tolist() == [2, 1]
    table = pd.DataFrame({"feature": [0, 1, 2, 3], "label": ["a", "b", "c", "d"], "n_contexts": [5, 5, 5, 2],
                          "top_tokens": ["plague, war", "wars", "cat", "war"], "top_titles": ["", "Cold War; Moon", "", ""]})
    hits = find_seeds(table, ["war"]).set_index("feature")
    assert hits.loc[0, "token_score"] == pytest.approx(0.5 / 1.5) and hits.loc[1, "token_score"] == 1.0
    assert hits.loc[1, "title_score"] == 0.5 and 2 not in hits.index and 3 not in hits.index  # 3: too few contexts
    assert 3 in find_seeds(table, ["war"], min_contexts=2).feature.tolist()
    with pytest.raises(GeometryError):
        find_seeds(table, " , ")


@pytest.mark.real_model
def test_concept_seeds_on_the_embedded_model(smollm2):
    model, tok = smollm2
    words = [" volcano", " mountain", " cat", " river"]
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
    emb = model.get_input_embeddings().weight
    sae = SparseAutoencoder(576, 4, activation="jumprelu", meta=SAEMeta(hook_in="blocks.0.hook_resid_pre"))
    with torch.no_grad():
        sae.W_dec.copy_(emb[ids])
    a = ["The volcano erupted.", "A volcano is a vent.", "Near the volcano we slept."]
    b = ["The mountain erupted.", "A mountain is a vent.", "Near the mountain we slept."]
    out = concept_seeds(sae.requires_grad_(False), a, b, model=model, tokenizer=tok, n=4)
    assert out.feature.tolist()[0] == 0 and out.feature.tolist()[-1] == 1
    assert out.cos.is_monotonic_decreasing


def save_dictionaries(folder) -> None:
    """The three dictionaries as SAE folders folder/V, folder/S, folder/W."""
    for name, w in dictionaries().items():
        s = SparseAutoencoder(D, len(w), activation="relu", meta=SAEMeta(name=name, hook_in="blocks.1.hook_resid_post"))
        with torch.no_grad():
            s.W_dec.copy_(w)
        save(s, folder / name)


def test_run_returns_the_tables_and_the_paths_it_wrote(tmp_path):
    save_dictionaries(tmp_path)
    members = {str(tmp_path / "V"): 6, str(tmp_path / "S"): 6, str(tmp_path / "W"): 24}
    settings = NeighborhoodSettings(str(tmp_path / "S"), members, tmp_path / "out", seeds=str(SEED), no_labels=True)
    run = run_neighborhood(settings)
    assert run.hits is None and run.seeds.feature.tolist() == [SEED] and run.note == ""
    assert len(run.neighborhood.members) == 36 and run.neighborhood.summary["seeds"] == [SEED]
    assert [p.name for p in run.paths] == ["members.csv", "edges.csv", "summary.json", "neighborhood.html"]
    assert all(p.is_file() for p in run.paths)
    pd.testing.assert_frame_equal(pd.read_csv(run.paths[0], keep_default_na=False)[["sae", "feature"]],
                                  run.neighborhood.members[["sae", "feature"]])
    with pytest.raises(GeometryError, match="exactly one of seeds, keywords and concept"):
        NeighborhoodSettings("S", members, tmp_path, seeds="1", keywords="war")
    with pytest.raises(GeometryError, match="drop --no-labels"):
        NeighborhoodSettings("S", members, tmp_path, keywords="war", no_labels=True)
    with pytest.raises(GeometryError, match="--seeds takes feature ids"):
        run_neighborhood(NeighborhoodSettings(str(tmp_path / "S"), members, tmp_path / "out", seeds="1,x",
                                              no_labels=True))


def test_cli(tmp_path, capsys):
    save_dictionaries(tmp_path)
    members = f"{tmp_path / 'V'}=6,{tmp_path / 'S'}=6,{tmp_path / 'W'}=24"
    args = [str(tmp_path / "S"), "--members", members, "--out", str(tmp_path / "out"), "--no-labels"]
    assert main(args + ["--seeds", str(SEED)]) == 0
    assert len(pd.read_csv(tmp_path / "out" / "members.csv")) == 36 and "min pairwise cos" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: main(args + ["--seeds", "999"]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: seed 999 out of range") and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out
    assert all(opt in helptext for opt in ("--keywords", "--concept", "--members", "--tokens", "--edge-cut"))
