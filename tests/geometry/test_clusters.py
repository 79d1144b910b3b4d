"""geometry.clusters: planted clusters are recovered (adjusted Rand >= 0.9) by Leiden and HDBSCAN; the
kNN graph equals a dense computation; composition tables; the WebGL figure; files; the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from geometry.clusters import feature_map, knn_graph, main
from geometry.options import GeometryError
from geometry.similarity import unit_rows
from sae import save
from sae.errors import run_cli
from sae.model import SAEMeta, SparseAutoencoder

K, PER, D = 15, 50, 64


def planted_clusters(seed: int = 0):
    """K clusters of PER directions each (cos ~0.74 to their centre), split at random into SAEs A (300) and B."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(K, D, generator=g)
    truth = np.repeat(np.arange(K), PER)
    x = unit_rows(centres)[truth] + 0.9 * unit_rows(torch.randn(K * PER, D, generator=g))
    perm = torch.randperm(K * PER, generator=g).numpy()
    a, b = perm[:300], perm[300:]
    return {"A": x[a], "B": x[b]}, np.concatenate([truth[a], truth[b]])


@pytest.fixture(scope="module")
def leiden_map():
    rows, truth = planted_clusters()
    labels = {"A": pd.DataFrame({"feature": np.arange(300), "label": [f"c{t}" for t in truth[:300]],
                                 "top_tokens": [f"word{t}, common" for t in truth[:300]]})}
    return feature_map(rows, labels=labels, pca_dims=16, cache=False), rows, truth


def test_leiden_recovers_planted_clusters_and_counts_composition(leiden_map):
    m, rows, truth = leiden_map
    p = m.points
    assert p[["sae", "feature"]].values.tolist() == [["A", i] for i in range(300)] + [["B", i] for i in range(450)]
    assert adjusted_rand_score(truth, p["cluster"]) >= 0.9
    assert m.summary["n_clusters"] == p["cluster"].nunique() and m.summary["params"]["pca_dims"] == 16
    c = m.clusters
    assert c["size"].is_monotonic_decreasing and c["size"].sum() == 750
    brute = pd.crosstab(p["cluster"], p["sae"])
    np.testing.assert_array_equal(c[["n_A", "n_B"]].to_numpy(), brute[["A", "B"]].to_numpy())
    np.testing.assert_allclose(c["share_A"], brute["A"] / 300)
    np.testing.assert_allclose(c["enrichment_B"], brute["B"] / brute.sum(axis=1) / (450 / 750))
    # top labels: every A member of a recovered cluster carries its cluster's word
    top = c.iloc[0]
    words = top["top_labels"].split(", ")
    assert words[0].startswith(("common", "word")) and any(w.startswith("word") for w in words)
    assert (p.loc[p.sae == "A", "label"] != "").all() and (p.loc[p.sae == "B", "label"] == "").all()


def test_hdbscan_recovers_planted_clusters_and_layout_is_deterministic(leiden_map):
    m, rows, truth = leiden_map
    h = feature_map(rows, method="hdbscan", min_cluster_size=20, pca_dims=16, cache=False)
    real = h.points["cluster"] >= 0
    assert real.mean() >= 0.9  # little noise
    assert adjusted_rand_score(truth[real], h.points["cluster"][real]) >= 0.9
    np.testing.assert_array_equal(h.points[["x", "y"]], m.points[["x", "y"]])  # same seed, same kNN: same layout


def test_knn_graph_equals_dense_topk():
    rows, _ = planted_clusters(1)
    z = unit_rows(torch.cat(list(rows.values())))
    idx, dist = knn_graph(z, 7, cache=False)
    cos = (z @ z.T).numpy()
    np.fill_diagonal(cos, -np.inf)
    ref = np.sort(cos, 1)[:, ::-1][:, :7]
    assert (idx[:, 0] == np.arange(len(z))).all() and np.allclose(dist[:, 0], 0, atol=1e-6)
    np.testing.assert_allclose(1 - dist[:, 1:], ref, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(cos, idx[:, 1:], 1), ref, atol=1e-5)


def test_figure_and_files(leiden_map, tmp_path):
    m, _, _ = leiden_map
    fig = m.figure()
    assert [t.type for t in fig.data] == ["scattergl", "scattergl"] and [t.name for t in fig.data] == ["A", "B"]
    assert sum(len(t.x) for t in fig.data) == 750
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["colour: cluster", "colour: SAE"]
    assert len(buttons[0].args[0]["marker.color"][0]) == 300 and buttons[1].args[0]["marker.color"] == ["#1f77b4", "#d62728"]
    assert len(fig.layout.annotations) == min(25, m.summary["n_clusters"])
    m.write(tmp_path)
    assert pd.read_csv(tmp_path / "points.csv").shape == (750, 6)
    assert "scattergl" in (tmp_path / "map.html").read_text() and (tmp_path / "summary.json").is_file()


def test_bad_inputs():
    rows, _ = planted_clusters()
    with pytest.raises(GeometryError, match="method"):
        feature_map(rows, method="kmeans")
    with pytest.raises(Exception, match="different d"):
        feature_map({"A": rows["A"], "C": torch.randn(5, 32)})
    with pytest.raises(GeometryError, match="at least 4"):
        feature_map({"A": rows["A"][:3]}, cache=False)


def test_cli(tmp_path, capsys):
    rows, truth = planted_clusters()
    for name, w in rows.items():
        s = SparseAutoencoder(D, len(w), activation="relu", meta=SAEMeta(name=name, hook_in="blocks.1.hook_resid_post"))
        with torch.no_grad():
            s.W_dec.copy_(w)
        save(s, tmp_path / name)
    (tmp_path / "labels").mkdir()
    pd.DataFrame({"feature": [0, 1], "label": ["zero", "one"]}).to_csv(tmp_path / "labels" / "A.csv", index=False)
    args = [str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "map"), "--no-cache", "--pca-dims", "0"]
    assert main(args[:1] + args[2:] + ["--labels-dir", str(tmp_path / "labels")]) == 0
    assert "clusters (leiden)" in capsys.readouterr().out
    points = pd.read_csv(tmp_path / "map" / "points.csv", keep_default_na=False)
    assert points["label"].tolist()[:3] == ["zero", "one", ""]
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: main(args + ["--labels-dir", str(tmp_path / "nowhere")]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: no such labels folder") and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out
    assert all(opt in helptext for opt in ("--method", "--resolution", "--pca-dims", "--labels-dir", "--n-neighbors"))
