"""The tree view of `geometry.splits`: one self-contained HTML page (no scripts from the network), the
split roots of the narrowest SAE as nested <details>, sorted by their number of descendants."""

from __future__ import annotations

import html

import pandas as pd

MAX_ROOTS = 1500  # roots shown at most; the page says how many more split and were left out

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;max-width:70em;color:#222}
details{margin-left:1.2em;border-left:1px solid #ddd;padding-left:.4em}
summary{cursor:pointer} .sae{color:#555;font-size:90%} .id{font-family:monospace;font-weight:600}
.cos{color:#07a;font-family:monospace} .n{color:#a50;font-size:90%} .leaf{margin-left:2.2em}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
#q{width:24em;margin:.5em 0}"""

JS = """function filt(){const q=document.getElementById('q').value.toLowerCase();
for(const d of document.querySelectorAll('#trees>details')){d.style.display=!q||d.textContent.toLowerCase().includes(q)?'':'none'}}
function all(open){for(const d of document.querySelectorAll('#trees details'))d.open=open}"""


def _node(sae: str, feature: int, label: str, cos: float | None, n_desc: int) -> str:
    cos_text = f' <span class="cos">cos {cos:.2f}</span>' if cos is not None else ""
    n_text = f' <span class="n">{n_desc} below</span>' if n_desc else ""
    return (f'<span class="sae">{html.escape(sae)}</span> <span class="id">#{feature}</span>{cos_text}{n_text} '
            f"{html.escape(label)}")


def trees_html(chains: pd.DataFrame, steps: pd.DataFrame, names: list[str], cut: float,
               max_roots: int = MAX_ROOTS) -> str:
    """The page: `chains` (root, level, sae, feature, parent, cos, label, n_children, n_descendants,
    splits) of `split_trees`; only roots with a split somewhere below them are drawn."""
    split_roots = chains[(chains["level"] == 0) & (chains["splits"] > 0)].sort_values(
        ["n_descendants", "root"], ascending=[False, True], kind="stable")
    n_roots = int((chains["level"] == 0).sum())
    shown = split_roots.head(max_roots)
    rows = chains[chains["root"].isin(set(shown["root"]))]
    kids: dict[tuple[int, int], list[tuple]] = {}
    by_root: dict[int, tuple] = {}
    for r in rows.itertuples(index=False):
        if r.level == 0:
            by_root[r.root] = r
        else:
            kids.setdefault((r.level - 1, int(r.parent)), []).append(r)

    def draw(r) -> str:
        cos = None if r.level == 0 else float(r.cos)
        head = _node(r.sae, int(r.feature), r.label, cos, int(r.n_descendants))
        below = sorted(kids.get((r.level, int(r.feature)), []), key=lambda c: (-c.n_descendants, -c.cos))
        if not below:
            return f'<div class="leaf">{head}</div>'
        inner = "".join(draw(c) for c in below)
        return f"<details{' open' if r.level > 0 else ''}><summary>{head}</summary>{inner}</details>"

    step_rows = "".join(
        f"<tr><td>{html.escape(s.parent_sae)} &rarr; {html.escape(s.child_sae)}</td><td>{s.n_live_parents:,}</td>"
        f"<td>{s.n_split:,}</td><td>{s.n_one_child:,}</td><td>{s.n_no_child:,}</td><td>{s.share_split:.3f}</td>"
        f"<td>{s.mean_children:.2f}</td></tr>" for s in steps.itertuples(index=False))
    omitted = n_roots - len(shown)
    note = (f"{len(split_roots):,} of {n_roots:,} features of {html.escape(names[0])} split somewhere below them; "
            f"{len(shown):,} are shown, {omitted:,} omitted ({n_roots - len(split_roots):,} without any split"
            + (f", {len(split_roots) - len(shown):,} smaller split trees past the first {max_roots:,}" if
               len(split_roots) > len(shown) else "") + ").")
    body = "".join(draw(by_root[r]) for r in shown["root"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Split trees</title><style>{CSS}</style>
<script>{JS}</script></head><body><h1>Split trees: {' &rarr; '.join(html.escape(n) for n in names)}</h1>
<p>A child is a wider SAE's feature whose best match in the next narrower SAE is its parent, at decoder cosine
&ge; {cut:g}. A parent splits when it has two or more children.</p>
<table><tr><th>step</th><th>live parents</th><th>split (&ge;2)</th><th>one child</th><th>no child</th>
<th>share split</th><th>children per split parent</th></tr>{step_rows}</table>
<p>{note}</p><input id="q" placeholder="filter by label or id" oninput="filt()">
<button onclick="all(true)">open all</button> <button onclick="all(false)">close all</button>
<div id="trees">{body}</div></body></html>
"""
