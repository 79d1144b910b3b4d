"""The static atlas site (geometry.atlas.site): its files, shards, data round trip and escaping, checked in
Python; its pages rendered by headless Chromium (skipped when there is none)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from geometry.atlas.records import SiteSAE, example_saes
from geometry.atlas.site import read_shard, write_site
from sae.errors import FormatError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium")
SHARD = 16
TRICKY = "</script><b>"  # a token and a label that must survive as text
TRICKY_FEATURE = 5


def tricky(sae: SiteSAE, written: dict[int, dict]) -> SiteSAE:
    """`sae` with TRICKY (and U+2028) in one feature's label, index row and first top context; the records
    it hands out are kept in `written` (the example draws new contexts at every call)."""
    inner = sae.records

    def records(start: int, stop: int) -> list[dict]:
        out = inner(start, stop)
        for r in out:
            if r["id"] == TRICKY_FEATURE:
                r["label"] += f" {TRICKY}\u2028"
                r["top"][0]["tokens"][1] = TRICKY
            written[r["id"]] = copy.deepcopy(r)
        return out

    rows = [list(r) for r in sae.rows]
    rows[TRICKY_FEATURE][1] += f" {TRICKY}\u2028"
    return dataclasses.replace(sae, records=records, rows=rows)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(atlas folder, SAEs, paths written, {slug: {id: record written}}): the example pair (B of 450
    features: three pages of rows), shards of 16, a compare report beside the atlas."""
    root = tmp_path_factory.mktemp("atlas_site")
    (root / "compare").mkdir()
    (root / "compare" / "report.html").write_text("<p>report</p>")
    written = {"A": {}, "B": {}}
    saes = [tricky(s, written[s.slug]) for s in example_saes(n_a=40, n_b=450)]
    out = root / "atlas"
    paths = write_site(out, saes, extras={"compare report": "../compare/report.html"}, shard_size=SHARD,
                       progress=True, workers=1)  # in this process: `written` records what the shards hold
    return out, saes, paths, written


def call_args(path: Path, function: str) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.startswith(function + "(") and text.endswith(");\n"), path
    return text[len(function) + 1: -3]


def shard_number(path: Path) -> int:
    """k of a shard file `atlasShard(k,"...");`: the call and its string, nothing else."""
    found = re.fullmatch(r'atlasShard\((\d+),"([A-Za-z0-9+/=]*)"\);\n', path.read_text(encoding="utf-8"))
    assert found, path
    return int(found.group(1))


def close(a, b, path: str = "") -> None:
    """a == b, floats within the rounding to 3 significant digits."""
    if isinstance(b, float) or isinstance(a, float):
        assert math.isclose(a, b, rel_tol=5e-3, abs_tol=1e-12), f"{path}: {a} != {b}"
    elif isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), f"{path}: keys {a.keys()} != {b.keys()}"
        for k in b:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(b, (list, tuple)):
        assert isinstance(a, list) and len(a) == len(b), f"{path}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_the_site_holds_its_files_and_no_other(site):
    out, saes, paths, _ = site
    expected = {"index.html", "assets/atlas.css", "assets/atlas.js"}
    for s in saes:
        expected |= {f"{s.slug}/index.html", f"{s.slug}/feature.html", f"{s.slug}/data/index.js"}
        expected |= {f"{s.slug}/data/features-{k:04d}.js" for k in range(math.ceil(s.n_features / SHARD))}
    assert {p.relative_to(out).as_posix() for p in paths} == expected
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == expected


def test_every_shard_holds_its_ids_and_the_records_round_trip(site):
    out, saes, _, written = site
    for s in saes:
        shards = sorted((out / s.slug / "data").glob("features-*.js"))
        for path in shards:
            k, records = shard_number(path), read_shard(path)
            assert path.name == f"features-{k:04d}.js"
            start, stop = k * SHARD, min((k + 1) * SHARD, s.n_features)
            assert [r["id"] for r in records] == list(range(start, stop))
            close(records, [written[s.slug][i] for i in range(start, stop)], f"{s.slug}[{start}:{stop}]")


def test_the_index_data_round_trips(site):
    out, saes, _, written = site
    for s in saes:
        index = json.loads(call_args(out / s.slug / "data" / "index.js", "atlasIndex"))
        assert (index["name"], index["slug"], index["n_features"], index["shard_size"]) == (s.name, s.slug,
                                                                                            s.n_features, SHARD)
        assert index["columns"] == s.columns and index["description"] == s.description
        close(index["rows"], s.rows)


def test_text_that_could_end_a_script_is_escaped_and_survives(site):
    out, saes, _, written = site
    for path in (out / "A" / "data").glob("*.js"):
        text = path.read_text(encoding="utf-8")
        assert "</script" not in text.lower() and "\u2028" not in text and "<" not in text, path
    records = read_shard(out / "A" / "data" / "features-0000.js")
    assert records[TRICKY_FEATURE]["top"][0]["tokens"][1] == TRICKY
    assert records[TRICKY_FEATURE]["label"].endswith(f"{TRICKY}\u2028")
    index = json.loads(call_args(out / "A" / "data" / "index.js", "atlasIndex"))
    assert index["rows"][TRICKY_FEATURE][1].endswith(f"{TRICKY}\u2028")


def test_pages_are_small_shells_of_one_script_and_one_stylesheet_with_nothing_remote(site):
    out, _, _, _ = site
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert re.findall(r"<script>", text) == [] and "<style" not in text, page
        assert re.search(r'<script src="(\.\./)?assets/atlas\.js"></script>', text), page
        assert len(text) < 4000, page
    for path in out.rglob("*"):
        if path.suffix in (".html", ".css", ".js"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", text), path
            assert "plotly" not in text.lower(), path


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    a, b = example_saes(n_a=8, n_b=16)
    with pytest.raises(FormatError, match="slug"):
        write_site(tmp_path, [a, dataclasses.replace(b, slug="../B")])
    with pytest.raises(FormatError, match="unique"):
        write_site(tmp_path, [a, dataclasses.replace(b, slug="A")])
    with pytest.raises(FormatError, match="ids"):
        write_site(tmp_path, [dataclasses.replace(a, records=lambda start, stop: b.records(start + 1, stop + 1))])


# ---- in a real browser ----

class Dom(HTMLParser):
    """What the tests read from a dumped DOM: body's attributes, local links, texts of elements by class."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.body: dict[str, str] = {}
        self.links: list[str] = []
        self.text: list[str] = []
        self.stack: list[tuple[str, str]] = []
        self.by_class: dict[str, list[str]] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = attrs
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag not in ("meta", "link", "input", "br", "img"):
            self.stack.append((tag, attrs.get("class", "")))
            for c in attrs.get("class", "").split():
                self.by_class.setdefault(c, []).append("")

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        self.text.append(data)
        for _, classes in self.stack:
            for c in classes.split():
                self.by_class[c][-1] += data

    def all_text(self) -> str:
        return "".join(self.text)


def chromium(url: str, *flags: str) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--virtual-time-budget=5000", *flags, url], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def render(page: Path, fragment: str = "") -> Dom:
    """The DOM of `page` after its scripts ran, checked: ready, no errors, every local link resolves."""
    dom = Dom(chromium(page.as_uri() + fragment, "--dump-dom"))
    assert dom.body.get("data-status") == "ready", dom.body
    assert "data-errors" not in dom.body, dom.body["data-errors"]
    for link in dom.links:
        if link.startswith("#") or re.match(r"https?:", link):
            continue
        target = (page.parent / link.split("#")[0]).resolve()
        assert target.is_file(), f"{page.name}{fragment}: {link} -> {target} is missing"
    return dom


def shown(token: str) -> str:
    return re.sub(r"\r\n|\n|\r", "\u21b5", token)


@needs_chromium
def test_the_front_page_and_an_index_render(site):
    out, saes, _, written = site
    front = render(out / "index.html")
    assert {"A/index.html", "B/index.html", "../compare/report.html"} <= set(front.links)
    assert "compare report" in front.all_text() and "450 features" in front.all_text()
    index = render(out / "A" / "index.html")
    assert [f"feature.html#{i}" for i in range(40)] == [x for x in index.links if x.startswith("feature.html")]
    assert f"A feature 5 <war & peace> {TRICKY}" in index.all_text()


@needs_chromium
def test_a_feature_page_shows_its_record_and_cross_links(site):
    out, saes, _, written = site
    record = written["A"][TRICKY_FEATURE]
    dom = render(out / "A" / "feature.html", f"#{TRICKY_FEATURE}")
    assert record["label"].strip() in dom.all_text()
    first = dom.by_class["toks"][0]
    assert first == "".join(shown(t) for t in record["top"][0]["tokens"]) and TRICKY in first
    link = record["links"][0]
    expected = {f"../B/feature.html#{i}" for i, _ in link["matches"] + link["children"]}
    assert expected <= set(dom.links)
    assert {"#4", "#6", "index.html", "../index.html"} <= set(dom.links)
    assert "1 in 200 tokens" in dom.all_text()  # frequency 0.005
    # a feature of B with a parent in A
    child = next(r for r in written["B"].values() if r["links"][0]["parent"] and r["count"])
    dom = render(out / "B" / "feature.html", f"#{child['id']}")
    assert f"../A/feature.html#{child['links'][0]['parent'][0]}" in dom.links
    assert child["label"] in dom.all_text()
    assert len(dom.by_class["bin"]) == len(child["samples"]) and dom.by_class["hist"]


@needs_chromium
def test_a_feature_that_never_fired_and_a_bad_hash(site):
    out, _, _, _ = site
    dom = render(out / "A" / "feature.html", "#7")
    assert "never fired in 1,000 tokens" in dom.all_text() and "toks" not in dom.by_class
    for bad in ("#40", "#-1", "#abc"):
        assert "no such feature" in render(out / "A" / "feature.html", bad).all_text()


HARNESS = """<!doctype html><body><script>
const frame = document.createElement("iframe");
const wait = (test) => new Promise((ok) => { const t = setInterval(() => { if (test()) { clearInterval(t); ok(); } }, 20); });
const doc = () => frame.contentDocument;
const ready = () => doc() && doc().body && doc().body.dataset.status === "ready";
(async () => {
  const out = [];
  frame.src = "atlas/A/feature.html#5"; document.body.append(frame);
  await wait(ready); frame.contentWindow.marker = 1;
  doc().querySelector('a[href="#6"]').click();
  await wait(() => ready() && doc().title.endsWith("#6"));
  out.push(doc().querySelector(".label").textContent, String(frame.contentWindow.marker));
  frame.contentWindow.location.hash = "#17";
  await wait(() => ready() && doc().title.endsWith("#17"));
  out.push(doc().querySelector(".label").textContent, String(frame.contentWindow.marker));
  frame.src = "atlas/B/index.html";
  await wait(() => ready() && doc().title.startsWith("B"));
  const rows = () => doc().querySelectorAll("tbody tr").length;
  out.push(String(rows()));
  const next = doc().querySelector(".pager button:last-child");
  next.click(); out.push(String(rows()));
  next.click();
  const search = doc().querySelector("input.search");
  await wait(() => rows() === 50); out.push(String(rows()));
  search.value = "feature 1"; search.dispatchEvent(new Event("input"));
  const count = () => doc().querySelector(".toolbar .muted").textContent;
  await wait(() => count().includes(" of ")); out.push(String(rows()));
  doc().querySelectorAll("th button")[2].click();  // frequency: descending first
  out.push(doc().querySelector("tbody tr td").textContent);
  document.body.dataset.out = JSON.stringify(out);
})().catch((e) => { document.body.dataset.out = "error: " + e; });
</script></body>"""


@needs_chromium
def test_the_hash_redraws_without_a_reload_and_the_table_searches_sorts_and_pages(site):
    out, _, _, _ = site
    harness = out.parent / "harness.html"
    harness.write_text(HARNESS)
    dom = Dom(chromium(harness.as_uri(), "--dump-dom"))
    found = json.loads(dom.body.get("data-out", "null"))
    assert found[:4] == ["A feature 6 <war & peace>", "1", "A feature 17 <war & peace>", "1"]
    b_with_1 = [i for i in range(450) if "1" in str(i) and i % 7]  # B's labels: "B feature i <war & peace>"
    assert found[4:] == ["200", "200", "50", str(len(b_with_1)), str(max(b_with_1))]


@needs_chromium
def test_a_screenshot_of_a_feature_page_is_drawn(site, tmp_path):
    out, _, _, _ = site
    png = tmp_path / "feature.png"
    chromium((out / "A" / "feature.html").as_uri() + "#5", f"--screenshot={png}", "--window-size=1280,2000",
             "--hide-scrollbars")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_forked_workers_write_the_same_files(tmp_path):
    saes = example_saes(n_a=40, n_b=100)
    for s in saes:  # records fixed once (the example draws new contexts on every call)
        fixed = s.records(0, s.n_features)
        s.records = lambda start, stop, fixed=fixed: fixed[start:stop]
    one, two = (write_site(tmp_path / str(n), saes, shard_size=16, workers=n) for n in (1, 2))
    assert [p.relative_to(tmp_path / "1") for p in one] == [p.relative_to(tmp_path / "2") for p in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


def test_rounding_keeps_three_significant_digits_like_the_format():
    from geometry.atlas.site import rounded, rounded_all

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=5000) * 10.0 ** rng.integers(-8, 8, 5000),
                        [0.9995, 0.99949, 999.5, 1000.0, 0.001, -2.5e-5, 123456789.0]])
    want = [float(f"{v:.3g}") for v in x]  # the decimal formatting, independently
    assert [rounded(v) for v in x] == want
    np.testing.assert_allclose(rounded_all(x), want, rtol=1e-12)
    assert rounded(0.0) == 0 and rounded(float("nan")) is None and rounded_all([float("inf"), 0.0]) == [None, 0]
