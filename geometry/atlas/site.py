"""The atlas as a static website that opens from file:// with no server and no network.

    out/index.html                       the front page: one entry per SAE, and the extra links
    out/assets/atlas.css, atlas.js       the one stylesheet and script of every page (geometry/atlas/assets/)
    out/<slug>/index.html                the SAE's feature table (search, sort, pages of rows): data/index.js
    out/<slug>/feature.html#<id>         any feature of the SAE, chosen by the hash: data/features-NNNN.js

Browsers refuse fetch() of local files, so data files are scripts handing their data to a global function
of atlas.js: `atlasIndex({...})` (plain JSON) and `atlasShard(k, "...")`. Shard k holds the records of ids
k * shard_size .. (k + 1) * shard_size - 1 as base64 of gzip'd JSON (`shard_payload`; `read_shard` reads it
back), which atlas.js inflates with the browser's DecompressionStream: 3 kB per feature with 25 contexts
of 33 tokens, where plain JSON takes 11 kB (over 300 MB for the demo's 27,648 features).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from geometry.atlas.forked import forked_map
from geometry.atlas.records import Record, SiteSAE
from sae.errors import FormatError
from sae.io import atomic_path, check_writable

ASSETS = Path(__file__).with_name("assets")
ASSET_FILES = ("atlas.css", "atlas.js")
SLUG = re.compile(r"[A-Za-z0-9._-]+")
DIGITS = 3  # significant digits kept of every float


def write_site(out: Path, saes: list[SiteSAE], extras: dict[str, str] | None = None, shard_size: int = 256,
               progress: bool = False, workers: int | None = None) -> list[Path]:
    """Write the atlas of `saes` into the folder `out` (see the module's docstring); `extras` are further
    links for the front page, {text: URL relative to `out`}. Shards are made by `workers` forked
    processes (default: one per CPU; 1: in this process). Returns the paths written."""
    if shard_size < 1:
        raise FormatError(f"shard_size must be at least 1, got {shard_size}")
    check_slugs(saes)
    out = check_writable(out, "the atlas folder")
    written = [save(out / "assets" / name, (ASSETS / name).read_text(encoding="utf-8")) for name in ASSET_FILES]
    written.append(save(out / "index.html", front_page(saes, extras or {})))
    for sae in saes:
        written += write_sae(out / sae.slug, sae, shard_size, progress, workers or os.cpu_count() or 1, extras)
    return written


def check_slugs(saes: list[SiteSAE]) -> None:
    """Each slug names one folder of the site: letters, digits, - _ . only, unique, not `assets`."""
    seen = set()
    for sae in saes:
        if not SLUG.fullmatch(sae.slug) or sae.slug in (".", "..", "assets"):
            raise FormatError(f"the SAE {sae.name!r} has the slug {sae.slug!r}: use letters, digits, - _ . "
                              "only (and not 'assets')")
        if sae.slug in seen:
            raise FormatError(f"two SAEs of the atlas have the slug {sae.slug!r}; slugs must be unique")
        seen.add(sae.slug)


def write_sae(folder: Path, sae: SiteSAE, shard_size: int, progress: bool, workers: int = 1,
              extras: dict[str, str] | None = None) -> list[Path]:
    """One SAE's pages (its index with the `extras` links), its index table and its shards of feature records."""
    if len(sae.rows) != sae.n_features:
        raise FormatError(f"the SAE {sae.name!r} has {sae.n_features} features but {len(sae.rows)} index rows")
    index = {"name": sae.name, "slug": sae.slug, "description": sae.description, "n_features": sae.n_features,
             "shard_size": shard_size, "meta": compact(sae.meta), "columns": sae.columns,
             "rows": compact(sae.rows)}
    written = [save(folder / "index.html", index_page(sae, extras or {})),
               save(folder / "feature.html", feature_page(sae, shard_size)),
               save(folder / "data" / "index.js", js_call("atlasIndex", index))]
    starts = list(range(0, sae.n_features, shard_size))
    with forked_map(lambda start: write_shard(folder, sae, shard_size, start), starts, workers) as shards:
        written += list(_progress(shards, progress, sae, len(starts)))
    return written


def _progress(items: Iterable, progress: bool, sae: SiteSAE, total: int) -> Iterable:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"atlas {sae.name}", unit="shard", total=total)


def write_shard(folder: Path, sae: SiteSAE, shard_size: int, start: int) -> Path:
    """Shard start // shard_size of `sae`: the records of ids start .. start + shard_size - 1."""
    stop = min(start + shard_size, sae.n_features)
    records = sae.records(start, stop)
    ids = [r.get("id") for r in records]
    if ids != list(range(start, stop)):
        raise FormatError(f"the SAE {sae.name!r}: records({start}, {stop}) returned the ids "
                          f"{ids[:3]}...{ids[-3:]} (n={len(ids)}), not {start}..{stop - 1} in order")
    k = start // shard_size
    return save(folder / "data" / f"features-{k:04d}.js", f'atlasShard({k},"{shard_payload(records)}");\n')


def shard_payload(records: Iterable[Record]) -> str:
    """Base64 of the gzip'd JSON {"strings", "tokens", "acts", "records"}: the records with floats rounded,
    each context's title an index into `strings` (this shard's texts) and its tokens and acts moved to row
    `window` of `tokens` (indices into `strings`) and `acts`; alike numbers side by side gzip 15% smaller."""
    strings, tokens, acts = StringTable(), [], []

    def context(c: dict[str, Any]) -> dict[str, Any]:
        tokens.append(list(map(strings.__getitem__, c["tokens"])))
        acts.append(c["acts"])  # rounded below, all at once
        out = {"window": len(tokens) - 1, "title": strings[c.get("title") or ""]}
        for k, v in c.items():
            if k not in ("tokens", "acts", "title"):
                out[k] = rounded(v) if type(v) is float else compact(v)
        return out

    out = []
    for r in records:
        rest = compact({k: v for k, v in r.items() if k not in ("top", "samples")})
        samples = [{**compact({k: v for k, v in s.items() if k != "contexts"}),
                    "contexts": [context(c) for c in s["contexts"]]} for s in r.get("samples") or []]
        out.append({**rest, "top": [context(c) for c in r.get("top") or []], "samples": samples})
    flat = rounded_all([a for row in acts for a in row])
    ends = np.cumsum([len(row) for row in acts]).tolist()
    acts = [flat[start:end] for start, end in zip([0, *ends[:-1]], ends)]
    data = json.dumps({"strings": list(strings), "tokens": tokens, "acts": acts, "records": out},
                      separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return base64.b64encode(gzip.compress(data.encode("utf-8"), compresslevel=3, mtime=0)).decode("ascii")


class StringTable(dict):
    """{text: its index}: a text missing is given the next index."""

    def __missing__(self, text: str) -> int:
        self[text] = index = len(self)
        return index


def read_shard(path: Path) -> list[Record]:
    """The records of a shard file of `write_site` (floats rounded) as they were given, for tests and tools
    (atlas.js's `inflate` is the same in the browser)."""
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(gzip.decompress(base64.b64decode(text[text.index('"') + 1:text.rindex('"')])))
    strings = data["strings"]
    for r in data["records"]:
        for c in r["top"] + [c for s in r["samples"] for c in s["contexts"]]:
            window = c.pop("window")
            c.update(tokens=[strings[i] for i in data["tokens"][window]], acts=data["acts"][window],
                     title=strings[c["title"]])
    return data["records"]


def rounded(x: Any) -> float | int | None:
    """`x` to DIGITS significant digits (0 as the shorter int; non-finite -> None, which JSON can carry)."""
    if not x:
        return 0
    x = float(x)
    return round(x, DIGITS - 1 - math.floor(math.log10(abs(x)))) if math.isfinite(x) else None


def rounded_all(values: Any) -> list[float | int | None]:
    """`rounded` of every value, vectorised (a context's activations: the bulk of a shard's numbers)."""
    a = np.asarray(values, np.float64)
    out = np.zeros_like(a)
    ok = np.isfinite(a) & (a != 0)
    e = DIGITS - 1 - np.floor(np.log10(np.abs(a[ok])))  # decimals to keep; powers of ten are exact when e >= 0
    up = e >= 0
    v = a[ok]
    v[up] = np.round(v[up] * 10.0 ** e[up]) / 10.0 ** e[up]
    v[~up] = np.round(v[~up] / 10.0 ** -e[~up]) * 10.0 ** -e[~up]
    out[ok] = v
    result: list[float | int | None] = out.tolist()
    for i in np.flatnonzero(~np.isfinite(a)):
        result[i] = None
    for i in np.flatnonzero((out == 0) & np.isfinite(a)):
        result[i] = 0
    return result


def compact(x: Any) -> Any:
    """A JSON-able copy of `x` with every float rounded (numpy scalars and arrays become plain values)."""
    kind = type(x)
    if kind is float:
        return rounded(x)
    if kind is list or kind is tuple:
        if all(type(v) is float for v in x):  # a row of numbers (edges, shares): no recursion
            return [rounded(v) for v in x]
        if all(type(v) is list and len(v) == 2 and type(v[1]) is float and type(v[0]) in (int, str) for v in x):
            return [[v[0], rounded(v[1])] for v in x]  # (id or token, value) pairs: cosines, logits
        return [compact(v) for v in x]
    if kind is dict:
        return {str(k): compact(v) for k, v in x.items()}
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return rounded(x)
    if hasattr(x, "tolist"):
        return compact(x.tolist())
    raise FormatError(f"the atlas cannot store a {kind.__name__} ({x!r:.60}) in its data")


def js_call(function: str, data: Any) -> str:
    """`function(data);` with `data` as compact JSON that cannot end the script early: `<` is written
    \\u003c (no `</script`) and U+2028/U+2029 as escapes."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for char in ("<", "\u2028", "\u2029"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return f"{function}({text});\n"


def save(path: Path, text: str) -> Path:
    """Write `text` as UTF-8, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def shell(title: str, root: str, body_attrs: dict[str, Any], content: str, scripts: list[str]) -> str:
    """An HTML page: the shared stylesheet, `content` in the container, atlas.js and then `scripts`."""
    attrs = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in body_attrs.items())
    tags = "".join(f'<script src="{html.escape(s)}"></script>' for s in [f"{root}assets/atlas.js", *scripts])
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n"
            f'<link rel="stylesheet" href="{root}assets/atlas.css">\n</head>\n<body{attrs}>\n'
            f'<div class="wrap">\n{content}\n</div>\n'
            f"<noscript><p class=\"wrap\">This page needs JavaScript.</p></noscript>\n{tags}\n</body>\n</html>\n")


def front_page(saes: list[SiteSAE], extras: dict[str, str]) -> str:
    """The atlas's front page, written out in full (its script only reports status and errors)."""
    esc = html.escape
    cards = []
    for sae in saes:
        meta = " · ".join(esc(str(sae.meta[k])) for k in ("model", "hook", "dataset") if sae.meta.get(k))
        if sae.meta.get("tokens"):
            meta += f" · {int(sae.meta['tokens']):,} tokens"
        cards.append(f'<li class="card"><h2><a href="{esc(sae.slug)}/index.html">{esc(sae.name)}</a></h2>'
                     f'<p>{esc(sae.description)}</p><p class="muted">{sae.n_features:,} features'
                     f"{' · ' + meta if meta else ''}</p></li>")
    links = "".join(f'<li><a href="{esc(url)}">{esc(text)}</a></li>' for text, url in extras.items())
    more = f'<section><h2>More</h2><ul class="extras">{links}</ul></section>' if extras else ""
    content = (f'<header class="top"><h1>Feature atlas</h1><p class="muted">{len(saes)} SAEs, '
               f"{sum(s.n_features for s in saes):,} features</p></header>\n"
               f'<ul class="cards">{"".join(cards)}</ul>\n{more}')
    return shell("Feature atlas", "", {"page": "atlas"}, content, [])


def crumbs(sae: SiteSAE, here: str) -> str:
    return (f'<nav class="crumbs"><a href="../index.html">Atlas</a> › <a href="index.html">'
            f"{html.escape(sae.name)}</a>{here}</nav>")


def index_page(sae: SiteSAE, extras: dict[str, str]) -> str:
    """The shell of an SAE's feature table (with the `extras` links); atlas.js draws it from data/index.js."""
    links = " · ".join(f'<a href="../{html.escape(url)}">{html.escape(text)}</a>' for text, url in extras.items())
    content = (f'{crumbs(sae, "")}\n' + (f'<p class="muted extras-line">{links}</p>\n' if links else "")
               + f'<main id="app"><p class="muted">Loading {sae.n_features:,} features…</p></main>')
    return shell(f"{sae.name}: features", "../", {"page": "index"}, content, ["data/index.js"])


def feature_page(sae: SiteSAE, shard_size: int) -> str:
    """The one page of every feature of an SAE (chosen by the URL's hash); atlas.js loads the shards."""
    body = {"page": "feature", "name": sae.name, "slug": sae.slug, "n": sae.n_features, "shard": shard_size,
            "tokens": int(sae.meta.get("tokens") or 0)}
    content = f'{crumbs(sae, " › <span id=here>feature</span>")}\n<main id="app"><p class="muted">Loading…</p></main>'
    return shell(f"{sae.name}: feature", "../", body, content, [])
