"""Report points and neighbourhood members that open their feature's atlas page when clicked."""

from __future__ import annotations

import pandas as pd
import torch

from geometry.comparison import compare
from geometry.plot.links import OPEN_ON_CLICK, feature_urls
from geometry.plot.maps import neighborhood_map
from geometry.plot.report import report_html


def test_feature_urls_name_the_atlas_folder_of_the_sae():
    assert feature_urls("../atlas/", "demo:L15R-32x", [3, 7]) == ["../atlas/demo_L15R-32x/feature.html#3",
                                                                  "../atlas/demo_L15R-32x/feature.html#7"]
    assert feature_urls(None, "demo:L15R-32x", [3]) is None


def test_the_report_links_its_scatter_points_only_when_asked():
    g = torch.Generator().manual_seed(0)
    cmp = compare(torch.randn(20, 8, generator=g), torch.randn(40, 8, generator=g))
    name = cmp.summary["b"]["name"]
    linked, plain = report_html(cmp, atlas="../atlas"), report_html(cmp)
    assert "window.open(u" in linked and "window.open(u" not in plain  # plotly.js itself names plotly_click
    page = linked.replace("\\u002f", "/")  # plotly escapes / in its JSON
    shown = cmp.features_b[cmp.features_b["class"] != "dead"]["feature"]
    assert all(url in page for url in feature_urls("../atlas", name, shown))


def test_the_neighbourhood_map_carries_the_members_pages():
    members = pd.DataFrame({"sae": ["demo:L15R-8x", "demo:L15R-32x"], "feature": [5, 9], "is_seed": [True, False],
                            "cos_to_seed": [1.0, 0.8], "label": ["war", "war, army"], "x": [0.0, 1.0], "y": [0.0, 1.0]})
    edges = pd.DataFrame(columns=["sae_a", "feature_a", "sae_b", "feature_b", "cos"])
    fig = neighborhood_map(members, edges, atlas="../atlas")
    urls = [u for trace in fig.data if trace.customdata is not None for u in trace.customdata]
    assert sorted(urls) == ["../atlas/demo_L15R-32x/feature.html#9", "../atlas/demo_L15R-8x/feature.html#5"]
    assert "{plot_id}" in OPEN_ON_CLICK
