"""What the atlas's writers (the static site, the Neuronpedia export) are given: one `SiteSAE` per SAE,
its index table and a function returning feature records (plain JSON-able dicts, described in
docs/atlas.md). `example_saes` builds a small, fully specified pair for tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Record = dict[str, Any]


@dataclass
class SiteSAE:
    """One SAE of the atlas: its index table (`columns`, `rows`: one per feature) and its feature records."""

    name: str  # display name, e.g. "L15R-8x"
    slug: str  # its folder in the site (letters, digits, - _ . only)
    description: str  # one line: spec, model, site, width, activation
    columns: list[str]  # the index table's columns; columns[0] == "feature"
    rows: list[list]  # one per feature, JSON-able
    n_features: int
    records: Callable[[int, int], list[Record]]  # records(start, stop): features start..stop-1, in order
    meta: dict[str, Any] = field(default_factory=dict)  # model, hook, layer, dataset, tokens, context


def example_saes(n_a: int = 40, n_b: int = 80, seed: int = 0) -> list[SiteSAE]:
    """Two small SAEs ("A", 8 features per 1, and a wider "B") with every field of a record filled, token
    texts with spaces, newlines and HTML characters, features that never fired, and cross links."""
    rng = np.random.default_rng(seed)
    words = ["The", " cat", " sat", " on", " <b>mat</b>", " &", "\n", " war", " pandemic", " é", " 1969", "."]

    def context(rank: int) -> dict:
        n = 9
        toks = [words[i] for i in rng.integers(0, len(words), n)]
        acts = np.round(np.abs(rng.normal(size=n)) * (rng.random(n) > 0.5), 3).tolist()
        acts[4] = round(3.0 - 0.1 * rank, 3)
        return {"tokens": toks, "acts": acts, "centre": 4, "title": f"Article {rank}", "value": acts[4]}

    def make(name: str, n: int, other: str, other_n: int, wider: bool) -> SiteSAE:
        never = set(range(0, n, 7))

        def record(i: int) -> Record:
            fired = i not in never
            edges = [0.0] + [round(2 ** (k / 2), 4) for k in range(-4, 5)]
            counts = rng.integers(0, 50, len(edges) - 1).tolist() if fired else [0] * (len(edges) - 1)
            match = [[int(j), round(float(c), 3)] for j, c in zip(rng.choice(other_n, 5, replace=False),
                                                                   sorted(rng.random(5), reverse=True))]
            link = {"slug": other, "name": other, "parent": (match[0] if match[0][1] >= 0.7 else None) if wider else None,
                    "children": [] if wider else [m for m in match[:2] if m[1] >= 0.7], "matches": match,
                    "class": ["same", "split", "novel"][i % 3] if wider else None, "family": i // 2}
            return {
                "id": i, "label": f"{name} feature {i} <war & peace>" if fired else "", "count": 10 * i if fired else 0,
                "frequency": 0.001 * i if fired else 0.0, "max": 3.0 if fired else 0.0,
                "top": [context(r) for r in range(20)] if fired else [],
                "samples": [{"lo": 0.5 * b, "hi": 0.5 * (b + 1), "share": 0.25, "contexts": [context(b) for _ in range(3)]}
                            for b in range(4)] if fired else [],
                "hist": {"edges": edges, "counts": counts},
                "logits": {"top": [[w, round(1.0 - 0.1 * j, 2)] for j, w in enumerate(words[:10])],
                           "bottom": [[w, round(-1.0 + 0.1 * j, 2)] for j, w in enumerate(words[2:12])]},
                "nearest": [[(i + j) % n, round(0.9 - 0.1 * j, 2)] for j in range(1, 6)],
                "links": [link],
            }

        rows = [[i, f"{name} feature {i} <war & peace>" if i not in never else "", 0.001 * i, 3.0 * (i not in never),
                 ["same", "split", "novel"][i % 3]] for i in range(n)]
        return SiteSAE(name=name, slug=name, description=f"{name}: an example SAE of {n} features", n_features=n,
                       columns=["feature", "label", "frequency", "max_activation", f"class_vs_{other}"], rows=rows,
                       records=lambda start, stop: [record(i) for i in range(start, min(stop, n))],
                       meta={"model": "example-model", "hook": "blocks.1.hook_resid_post", "layer": 1,
                             "dataset": "example", "tokens": 1000, "context": 32})

    return [make("A", n_a, "B", n_b, wider=False), make("B", n_b, "A", n_a, wider=True)]
