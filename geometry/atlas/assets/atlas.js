/* The feature atlas: the one script of every page (written by geometry/atlas/site.py).
   <body data-page="atlas|index|feature">. Data arrive as scripts calling atlasIndex({...}) or
   atlasShard(k, "base64 of gzip'd JSON"), since browsers refuse fetch() under file://.
   Every page sets body[data-status] to "ready" once drawn and lists errors in body[data-errors]. */
"use strict";
(function () {
  const body = document.body;
  const PAGE_ROWS = 200;
  const errors = [];

  function recordError(message) {
    errors.push(String(message));
    body.dataset.errors = errors.join("\n");
  }
  window.onerror = function (message, source, line) {
    recordError(message + (source ? " (" + source + ":" + line + ")" : ""));
  };
  window.addEventListener("unhandledrejection", function (e) {
    recordError("unhandled rejection: " + (e.reason && e.reason.message ? e.reason.message : e.reason));
  });
  window.addEventListener("error", function (e) {  // a script or stylesheet that failed to load
    const t = e.target;
    if (t && t !== window && (t.src || t.href)) recordError("cannot load " + (t.src || t.href));
  }, true);

  function ready() { body.dataset.status = "ready"; }
  function fail(err) {
    recordError(err && err.message ? err.message : err);
    app().replaceChildren(el("p", { class: "notice error" }, "Error: " + (err && err.message ? err.message : err)));
    body.dataset.status = "error";
  }
  function app() { return document.getElementById("app"); }

  /* ---- small DOM and number helpers ---- */
  function el(tag, attrs) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (let i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }
  function add(node, kid) {
    if (kid === null || kid === undefined || kid === false) return;
    if (Array.isArray(kid)) kid.forEach(function (k) { add(node, k); });
    else node.append(kid instanceof Node ? kid : String(kid));
  }
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const missing = function (v) { return v === null || v === undefined || v === "" || Number.isNaN(v); };
  function int(n) { return Number(n).toLocaleString("en-US"); }
  function num(x) {
    if (missing(x)) return "\u2014";
    if (typeof x !== "number") return String(x);
    if (Number.isInteger(x) && Math.abs(x) >= 1000) return int(x);
    return String(+x.toPrecision(3));
  }
  function pct(f) { return String(+(100 * f).toPrecision(f >= 0.1 ? 3 : 2)) + "%"; }
  function oneIn(f) { return f > 0 ? "1 in " + int(Math.round(1 / f)) + " tokens" : "never"; }
  function tokenText(t) { return String(t).replace(/\r\n|\n|\r/g, "\u21b5"); }

  /* ---- the front page: written in full by site.py ---- */
  if (body.dataset.page === "atlas") ready();

  /* ---- an SAE's feature table ---- */
  window.atlasIndex = function (data) {
    try { drawIndex(data); ready(); } catch (err) { fail(err); }
  };

  function drawIndex(data) {
    const cols = data.columns, rows = data.rows;
    // id columns (meta.id_columns: column -> the slug of the SAE whose pages they name, "" for this one,
    // null for ids without pages): shown without separators, -1 as missing
    const idCols = cols.map(function (c) { const m = (data.meta || {}).id_columns || {}; return c in m ? m[c] : undefined; });
    function idCell(v, slug) {
      if (missing(v) || v < 0) return "\u2014";
      if (slug === null) return String(v);
      return el("a", { href: (slug ? "../" + slug + "/" : "") + "feature.html#" + v }, String(v));
    }
    const numeric = cols.map(function (_, j) {
      return rows.every(function (r) { return missing(r[j]) || typeof r[j] === "number"; });
    });
    const texts = rows.map(function (r) {
      return r.filter(function (v) { return typeof v === "string"; }).join("\u0001").toLowerCase();
    });
    const collator = new Intl.Collator("en", { numeric: true, sensitivity: "base" });
    const state = { query: "", col: 0, dir: 1, page: 0, view: rows.map(function (_, i) { return i; }) };

    const search = el("input", { type: "search", placeholder: "Search labels and text columns, or a feature id",
                                 "aria-label": "search", class: "search" });
    const count = el("span", { class: "muted" });
    const head = el("tr");
    const tbody = el("tbody");
    const prev = el("button", { type: "button", onclick: function () { go(-1); } }, "\u2190 previous");
    const next = el("button", { type: "button", onclick: function () { go(1); } }, "next \u2192");
    const where = el("span", { class: "muted" });
    const pager = el("div", { class: "pager" }, prev, where, next);
    cols.forEach(function (c, j) {
      head.append(el("th", { class: numeric[j] ? "num" : null },
        el("button", { type: "button", onclick: function () { sortBy(j); } }, c.replace(/_/g, " "))));
    });
    const meta = data.meta || {};
    const facts = [int(data.n_features) + " features", meta.model, meta.hook, meta.dataset,
                   meta.tokens ? int(meta.tokens) + " tokens" : null].filter(Boolean).join(" \u00b7 ");
    app().replaceChildren(
      el("h1", {}, data.name), el("p", {}, data.description), el("p", { class: "muted" }, facts),
      el("div", { class: "toolbar" }, search, count),
      el("div", { class: "scroll" }, el("table", { class: "features" }, el("thead", {}, head), tbody)), pager);
    document.title = data.name + ": features";

    let timer = null;
    search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { state.query = search.value; update(); }, 120);
    });

    function compare(a, b) {
      const x = rows[a][state.col], y = rows[b][state.col];
      const mx = missing(x), my = missing(y);
      if (mx || my) return mx && my ? a - b : (mx ? 1 : -1);  // missing values last, either direction
      const d = numeric[state.col] ? x - y : collator.compare(String(x), String(y));
      return d === 0 ? a - b : state.dir * d;
    }
    function update() {
      const words = state.query.toLowerCase().split(/\s+/).filter(Boolean);
      const id = /^\s*#?\d+\s*$/.test(state.query) ? Number(state.query.replace(/\D/g, "")) : -1;
      const view = [];
      for (let i = 0; i < rows.length; i++) {
        if (rows[i][0] === id || words.every(function (w) { return texts[i].includes(w); })) view.push(i);
      }
      view.sort(compare);
      state.view = view;
      state.page = 0;
      draw();
    }
    function sortBy(j) {
      state.dir = state.col === j ? -state.dir : (numeric[j] && j > 0 ? -1 : 1);
      state.col = j;
      update();
    }
    function go(step) {
      state.page = Math.max(0, Math.min(pages() - 1, state.page + step));
      draw();
    }
    function pages() { return Math.max(1, Math.ceil(state.view.length / PAGE_ROWS)); }
    function draw() {
      Array.from(head.children).forEach(function (th, j) {
        th.dataset.sort = j === state.col ? (state.dir > 0 ? "asc" : "desc") : "";
      });
      const start = state.page * PAGE_ROWS, shown = state.view.slice(start, start + PAGE_ROWS);
      tbody.replaceChildren.apply(tbody, shown.map(function (i) {
        const r = rows[i];
        return el("tr", {}, cols.map(function (_, j) {
          if (j === 0) return el("td", { class: "num" }, el("a", { href: "feature.html#" + r[0] }, String(r[0])));
          if (idCols[j] !== undefined) return el("td", { class: "num" }, idCell(r[j], idCols[j]));
          return el("td", { class: (numeric[j] ? "num" : (missing(r[j]) ? "muted" : null)), "data-col": cols[j] }, num(r[j]));
        }));
      }));
      count.textContent = state.view.length === rows.length ? int(rows.length) + " features"
        : int(state.view.length) + " of " + int(rows.length) + " features";
      where.textContent = state.view.length ? "rows " + int(start + 1) + "\u2013" + int(start + shown.length)
        + " \u00b7 page " + (state.page + 1) + " of " + pages() : "no feature matches";
      prev.disabled = state.page === 0;
      next.disabled = state.page >= pages() - 1;
    }
    update();
  }

  /* ---- a feature page: feature.html#<id> ---- */
  const shards = new Map(), waiting = new Map();
  window.atlasShard = function (k, payload) {
    const w = waiting.get(k);
    if (w) { waiting.delete(k); w(payload); }
  };
  async function inflate(b64) {
    const bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const data = JSON.parse(await new Response(stream).text());
    const s = data.strings;  // contexts' tokens and acts are rows `window` of data.tokens and data.acts
    const ctx = function (c) {
      c.tokens = data.tokens[c.window].map(function (i) { return s[i]; });
      c.acts = data.acts[c.window];
      c.title = s[c.title];
    };
    data.records.forEach(function (r) {
      r.top.forEach(ctx);
      r.samples.forEach(function (b) { b.contexts.forEach(ctx); });
    });
    return data.records;
  }
  function loadShard(k) {
    if (!shards.has(k)) {
      const src = "data/features-" + String(k).padStart(4, "0") + ".js";
      shards.set(k, new Promise(function (resolve, reject) {
        waiting.set(k, resolve);
        const tag = el("script", { src: src });
        tag.onerror = function () { shards.delete(k); reject(new Error("cannot load " + src)); };
        body.append(tag);
      }).then(inflate));
    }
    return shards.get(k);
  }

  let drawn = 0;
  async function showFeature() {
    const d = body.dataset, n = Number(d.n), size = Number(d.shard), seq = ++drawn;
    let hash = location.hash.slice(1);
    try { hash = decodeURIComponent(hash).trim(); } catch (err) { /* a malformed escape: no such feature */ }
    const id = hash === "" ? 0 : (/^\d+$/.test(hash) ? Number(hash) : -1);
    body.dataset.status = "loading";
    document.getElementById("here").textContent = "feature " + (id >= 0 ? id : hash);
    if (!(id >= 0 && id < n)) {
      document.title = d.name + ": no such feature";
      app().replaceChildren(el("h1", {}, "No such feature"), el("p", { class: "notice" },
        "no such feature: \u201c" + hash + "\u201d; " + d.name + " has features 0\u2013" + int(n - 1) + ". ",
        el("a", { href: "index.html" }, "Back to the index")));
      ready();
      return;
    }
    const k = Math.floor(id / size), records = await loadShard(k);
    if (seq !== drawn) return;  // the hash changed while the shard loaded
    app().replaceChildren(feature(records[id - k * size], d, n));
    document.title = d.name + " #" + id;
    window.scrollTo(0, 0);
    ready();
  }
  function nav(id, n, text, arrow) {
    return id >= 0 && id < n ? el("a", { href: "#" + id, class: "step" }, arrow < 0 ? "\u2190 " + text : text + " \u2192")
      : el("span", { class: "step muted" }, arrow < 0 ? "\u2190 " + text : text + " \u2192");
  }

  function feature(r, d, n) {
    const tokens = Number(d.tokens), fired = r.count > 0;
    const max = r.max > 0 ? r.max : Math.max.apply(null, [1e-9].concat(r.top.map(function (c) { return c.value; })));
    const head = el("header", { class: "fhead" },
      el("div", { class: "steps" }, nav(r.id - 1, n, "prev", -1), el("span", { class: "muted" },
        "#" + int(r.id) + " \u00b7 " + int(n) + " features"), nav(r.id + 1, n, "next", 1)),
      el("h1", {}, d.name + " \u00b7 feature " + r.id),
      el("p", { class: r.label ? "label" : "label muted" }, r.label || "(no label)"),
      el("dl", { class: "stats" },
        stat("fired on", fired ? int(r.count) + " tokens" : "0 tokens"),
        stat("frequency", fired ? pct(r.frequency) + " \u00b7 " + oneIn(r.frequency) : "never"),
        stat("max activation", num(r.max))));
    const main = el("div", { class: "main" }), side = el("aside", { class: "side" });
    if (!fired) {
      main.append(el("p", { class: "notice" }, "This feature never fired in " + int(tokens) + " tokens."));
    } else {
      main.append(el("section", {}, el("h2", {}, "Top activations"), r.top.map(function (c) { return context(c, max); })));
      if (r.samples.length) {
        main.append(el("section", {}, el("h2", {}, "Samples by activation"), r.samples.map(function (b) {
          return el("div", { class: "bin" }, el("h3", {}, num(b.lo) + " \u2013 " + num(b.hi) + ": " + pct(b.share)
            + " of firings"), b.contexts.map(function (c) { return context(c, max); }));
        })));
      }
      side.append(el("section", {}, el("h2", {}, "Activations"), histogram(r.hist),
        el("p", { class: "muted small" }, "fired on " + int(r.count) + " of " + int(tokens) + " tokens ("
          + pct(r.frequency) + ", " + oneIn(r.frequency) + ")")));
    }
    side.append(el("section", {}, el("h2", {}, "Logit lens"), el("div", { class: "logits" },
      logits("promoted", r.logits.top), logits("suppressed", r.logits.bottom))));
    side.append(el("section", {}, el("h2", {}, "Nearest in " + d.name),
      ids(r.nearest, function (id) { return "feature.html#" + id; })));
    r.links.forEach(function (l) { side.append(link(l)); });
    return el("div", {}, head, el("div", { class: "cols" }, main, side));
  }
  function stat(name, value) { return el("div", {}, el("dt", {}, name), el("dd", {}, value)); }

  function shade(x) {
    const a = Math.min(1, Math.abs(x));
    return x >= 0 ? "rgba(255, 140, 0, " + a.toFixed(3) + ")" : "rgba(40, 120, 255, " + a.toFixed(3) + ")";
  }
  function context(c, max) {
    const line = el("div", { class: "toks" });
    c.tokens.forEach(function (t, i) {
      const a = c.acts[i];
      const span = el("span", { class: i === c.centre ? "tok centre" : "tok", title: num(a) }, tokenText(t));
      if (a) span.style.backgroundColor = shade(a / max);
      line.append(span);
    });
    return el("div", { class: "ctx" }, el("div", { class: "ctxhead" }, el("span", { class: "val" }, num(c.value)),
      el("span", { class: "doc" }, c.title || "untitled")), line);
  }

  function histogram(h) {
    const counts = h.counts, edges = h.edges, top = Math.max.apply(null, [0].concat(counts));
    if (!top) return el("p", { class: "muted" }, "no firings counted");
    const W = 320, H = 130, L = 34, B = 34, w = (W - L - 4) / counts.length;
    const root = svg("svg", { viewBox: "0 0 " + W + " " + (H + B), class: "hist", role: "img",
                              "aria-label": "activation histogram" });
    root.append(svg("text", { x: L - 4, y: 10, "text-anchor": "end", class: "axis" }, num(top)),
      svg("text", { x: L - 4, y: H, "text-anchor": "end", class: "axis" }, "0"),
      svg("line", { x1: L, y1: H, x2: W - 4, y2: H, class: "base" }));
    counts.forEach(function (c, i) {
      const bh = c / top * (H - 6), bar = svg("rect", { x: L + i * w + 0.5, y: H - bh, width: Math.max(1, w - 1),
                                                        height: bh, class: "bar" });
      bar.append(svg("title", {}, num(edges[i]) + " \u2013 " + num(edges[i + 1]) + ": " + int(c)));
      root.append(bar);
    });
    const every = Math.max(1, Math.ceil(edges.length / 8));
    edges.forEach(function (e, i) {
      if (i % every && i !== edges.length - 1) return;
      const x = L + i * w;
      root.append(svg("text", { x: x, y: H + 12, "text-anchor": "end", class: "axis",
                                transform: "rotate(-40 " + x + " " + (H + 12) + ")" }, num(e)));
    });
    return root;
  }
  function logits(title, pairs) {
    return el("table", { class: "mini" }, el("thead", {}, el("tr", {}, el("th", { colspan: 2 }, title))),
      el("tbody", {}, pairs.map(function (p) {
        return el("tr", {}, el("td", {}, el("span", { class: "tok plain" }, tokenText(p[0]))),
          el("td", { class: "num" }, num(p[1])));
      })));
  }
  function ids(pairs, href) {
    if (!pairs || !pairs.length) return el("span", { class: "muted" }, "none");
    return el("ul", { class: "ids" }, pairs.map(function (p) {
      return el("li", {}, el("a", { href: href(p[0]) }, "#" + p[0]), el("span", { class: "cos" }, num(p[1])));
    }));
  }
  function link(l) {
    const href = function (id) { return "../" + l.slug + "/feature.html#" + id; };
    const row = function (name, value) { return el("tr", {}, el("th", {}, name), el("td", {}, value)); };
    return el("section", { class: "link" }, el("h2", {}, "In ", el("a", { href: "../" + l.slug + "/index.html" }, l.name)),
      el("table", { class: "kv" }, el("tbody", {},
        row("parent", l.parent ? ids([l.parent], href) : el("span", { class: "muted" }, "none")),
        row("children", ids(l.children, href)),
        row("matches", ids(l.matches, href)),
        row("class", missing(l["class"]) ? el("span", { class: "muted" }, "unknown") : l["class"]),
        row("family", missing(l.family) ? el("span", { class: "muted" }, "unknown") : String(l.family)))));
  }

  if (body.dataset.page === "feature") {
    const run = function () { showFeature().catch(fail); };
    window.addEventListener("hashchange", run);
    document.addEventListener("keydown", function (e) {
      if (e.target.closest && e.target.closest("input, textarea") || e.altKey || e.ctrlKey || e.metaKey) return;
      const step = e.key === "ArrowLeft" ? -1 : e.key === "ArrowRight" ? 1 : 0;
      const id = Number(location.hash.slice(1) || 0);
      if (step && id + step >= 0 && id + step < Number(body.dataset.n)) location.hash = "#" + (id + step);
    });
    run();
  }
})();
