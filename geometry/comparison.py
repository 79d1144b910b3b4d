"""Compare two SAE dictionaries: which B (wide) features are copies, splits, combinations or new.

`compare(a, b, **options) -> Comparison`, where a and b are anything `sae.load` accepts,
SparseAutoencoders, or [n, d] matrices (rows = feature directions). The JSON summary's schema is
documented in docs/compare.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sae
from geometry import matching, novelty
from geometry.agreement import DENSE_LIMIT
from geometry.agreement import agreement as one_to_one
from geometry.inputs import Side, load_array, make_side, named
from geometry.options import GeometryError, Options
from geometry.plot.report import report_html
from geometry.similarity import resolve, top_k_cosine
from geometry.statistics import counts, distribution, epsilon, random_baselines, split_summary, weighted
from geometry.summary import summary_text
from geometry.timer import Timer
from sae.io import write_json, write_text

SCHEMA = "geometry.compare/1"


@dataclass
class Comparison:
    """Everything `compare` found. Feature ids are row numbers of the original dictionaries."""

    summary: dict  # the JSON summary (schema in docs/compare.md)
    features_a: pd.DataFrame  # one row per A feature
    features_b: pd.DataFrame  # one row per B feature
    families: pd.DataFrame  # one row per connected component of the graph at the cut
    edges: pd.DataFrame  # (a, b, cos) with cos >= cut
    assignment: pd.DataFrame  # one-to-one matched (a, b, cos)
    baseline: dict  # random-direction max-cosine samples: "b_to_a", "a_to_b"
    agreement: pd.DataFrame | None = None  # geometric class x functional class (with activations)

    def text(self) -> str:
        return summary_text(self.summary)

    def write_json(self, path: str | Path) -> Path:
        return write_json(path, self.summary)

    def write(self, folder: str | Path, *, max_points: int = 20000, atlas: str | None = None) -> Path:
        """CSV tables, summary.json and a self-contained report.html into `folder` (`atlas`: the feature
        atlas's folder relative to `folder`: the report's points link to its pages)."""
        folder = Path(folder)
        tables = {"features_a": self.features_a, "features_b": self.features_b, "families": self.families,
                  "edges": self.edges, "assignment": self.assignment, "agreement": self.agreement}
        for name, df in tables.items():
            if df is not None:
                write_text(folder / f"{name}.csv", df.to_csv(index=name == "agreement"))
        self.write_json(folder / "summary.json")
        write_text(folder / "report.html", report_html(self, max_points=max_points, atlas=atlas))
        return folder


def compare(
    a,
    b,
    *,
    activations: torch.Tensor | np.ndarray | str | Path | None = None,
    freq_a=None,
    freq_b=None,
    device: str | None = None,
    precision: str = "auto",
    block: int | None = None,
    cache: bool | str | Path = True,
    **options,
) -> Comparison:
    """Compare dictionary B (usually the wider SAE) with A. See `Options` for every threshold.

    a, b: names or folders for `sae.load`, SparseAutoencoders, or [n, d] matrices of feature rows.
    activations: [n_tokens, d] at the SAEs' site (or a file): runs the insertion test and, unless
    freq_a / freq_b are given, supplies firing frequencies (features that never fire are dead).
    cache: reuse / store the similarity pass (True: $SAE_CACHE/geometry; or a folder; False).
    """
    opts = Options.from_kwargs(**options)
    t = Timer()
    functional = None
    if activations is not None:
        (a, name_a), (b, name_b) = named(a, "A"), named(b, "B")
        t.lap("load")
        if not all(isinstance(x, sae.SparseAutoencoder) for x in (a, b)):
            raise GeometryError("the insertion test (activations=...) needs two SAEs, not matrices")
        x = load_array(activations) if isinstance(activations, (str, Path)) else torch.as_tensor(activations)
        if x.ndim != 2 or x.shape[1] != a.d_in or not bool(torch.isfinite(x).all()):
            raise sae.ShapeError(f"activations must be finite [n, {a.d_in}], got {list(x.shape)}")
        functional = novelty.insertion_test(a, b, x)
        freq_a = functional["freq_a"] if freq_a is None else freq_a
        freq_b = functional["freq_b"] if freq_b is None else freq_b
        t.lap("functional")
        (A, oa), (B, ob) = _sides(a, name_a, freq_a, opts), _sides(b, name_b, freq_b, opts)
    else:  # one loaded SAE in memory at a time: only its unit rows are kept
        A, oa = _sides(*named(a, "A"), freq_a, opts)
        B, ob = _sides(*named(b, "B"), freq_b, opts)
    if A.d != B.d:
        raise sae.ShapeError(f"{A.name} has d={A.d} but {B.name} has d={B.d}: only SAEs of one width compare")
    del a, b
    t.lap("load")
    device, precision = resolve(device, precision)
    sim = dict(block=block, device=device, precision=precision)
    nb = top_k_cosine(A.dirs, B.dirs, opts.k, normalised=True, cache=cache, **sim)
    t.lap("similarity")
    base, base_summary = random_baselines(A.dirs, B.dirs, opts, sim)
    t.lap("baseline")

    n_a, n_b = len(A.live), len(B.live)
    best_b, best_a = nb.b_to_a.values[:, 0].numpy(), nb.a_to_b.values[:, 0].numpy()
    mnn = matching.mutual_nearest(nb)
    ea, eb, ec = matching.candidate_edges(nb)
    at_cut = ec >= opts.cut
    fam_a, fam_b, fam = matching.families(ea[at_cut], eb[at_cut], n_a, n_b)
    children = np.bincount(ea[at_cut], minlength=n_a)
    parents = np.bincount(eb[at_cut], minlength=n_b)
    t.lap("matching")
    n_cand = min(opts.candidates, opts.k)
    dec = novelty.decompose(A.dirs, nb.b_to_a.indices[:, :n_cand], nb.b_to_a.values[:, :n_cand], opts.max_atoms)
    cls = novelty.classify(best_b, mnn, dec, opts)
    t.lap("decomposition")
    ma, mb, mc = matching.assignment(ea, eb, ec, n_a, n_b, opts.assign_tau)
    shared = {opts.rows: one_to_one(A.dirs, B.dirs, opts.assign_tau, nb).as_dict()}
    if oa is not None and ob is not None:  # two SAEs: their other rows too (encoder when comparing decoders)
        big = len(oa.live) * len(ob.live) > DENSE_LIMIT
        other_nb = top_k_cosine(oa.dirs, ob.dirs, opts.k, normalised=True, cache=cache, **sim) if big else None
        shared["encoder" if opts.rows == "decoder" else "decoder"] = one_to_one(oa.dirs, ob.dirs, opts.assign_tau,
                                                                                 other_nb).as_dict()
    del oa, ob
    t.lap("assignment")

    # ---- tables, in feature ids ----
    ida, idb = A.live, B.live
    fa = _frame(A, best=nb.a_to_b, ids_other=idb, mnn=None, n_children=children, family=fam_a, fam=fam,
                matched=(ma, mb, mc, idb))
    fb = _frame(B, best=nb.b_to_a, ids_other=ida, mnn=mnn, n_children=parents, family=fam_b, fam=fam,
                matched=(mb, ma, mc, ida))
    fb = fb.rename(columns={"n_children": "n_parents"})
    _add_classes(fb, B, cls, dec, ida, functional)
    fam = _family_table(fam, fam_a, fam_b, A, B, ea[at_cut], eb[at_cut], ec[at_cut])
    edges = pd.DataFrame({"a": ida[ea[at_cut]], "b": idb[eb[at_cut]], "cos": ec[at_cut]})
    assign = pd.DataFrame({"a": ida[ma], "b": idb[mb], "cos": mc})
    agreement = None
    if functional is not None:
        live = fb["class"] != "dead"
        agreement = pd.crosstab(fb.loc[live, "class"], fb.loc[live, "functional"])
    t.lap("tables")

    summary = {
        "schema": SCHEMA,
        "a": A.counts(),
        "b": B.counts(),
        "options": {f.name: getattr(opts, f.name) for f in fields(opts)},
        "epsilon": {"a": epsilon(A.n, A.d), "b": epsilon(B.n, B.d)},
        "max_cos": {"b_to_a": distribution(best_b, opts), "a_to_b": distribution(best_a, opts), **base_summary},
        "classes_b": counts(fb["class"], novelty.CLASSES + ("dead",)),
        "families": counts(fam["type"], matching.FAMILY_TYPES),
        "split_factor": split_summary(children),
        "mutual_nn": int(mnn.sum()),
        "assignment": {"tau": opts.assign_tau, "matched": len(mc), "matched_fraction_a": len(mc) / n_a,
                       "matched_fraction_b": len(mc) / n_b, "mean_cos": float(mc.mean()) if len(mc) else None},
        "shared": shared,
        "saturated": {"a": matching.saturated(nb.a_to_b.values, opts.cut), "b": matching.saturated(nb.b_to_a.values, opts.cut)},
        "similarity": {"k": opts.k, "precision": precision, "device": str(device), "cached": nb.cached, "key": nb.key},
    }
    if B.freq is not None:
        summary["classes_b_freq_weighted"] = weighted(fb["class"], B.freq, novelty.CLASSES)
        summary["families_freq_weighted_b"] = weighted(fb["family_type"], B.freq, matching.FAMILY_TYPES)
    if functional is not None:
        f = fb.loc[fb["class"] != "dead", "functional"].value_counts()
        summary["functional"] = {"n_tokens": functional["n_tokens"], "exact": functional["exact"],
                                 **{c: int(f.get(c, 0)) for c in ("novel", "reconstruction", "silent")},
                                 "agreement": {r: agreement.loc[r].to_dict() for r in agreement.index}}
    summary["timings_s"] = t.done()
    return Comparison(summary, fa, fb, fam, edges, assign, base, agreement)


def _sides(x, name: str, freq, opts: Options) -> tuple[Side, Side | None]:
    """The Side of `x` as `opts.rows` says, and, for an SAE, the Side of its other rows (None for a matrix)."""
    side = make_side(x, name, freq, opts)
    if not isinstance(x, sae.SparseAutoencoder) or opts.shared == "compared":
        return side, None
    return side, make_side(x, name, freq, replace(opts, rows="encoder" if opts.rows == "decoder" else "decoder"))


def _frame(side: Side, *, best, ids_other, mnn, n_children, family, fam, matched) -> pd.DataFrame:
    """Per-feature table for one side; excluded features keep their row with NaN / -1."""
    n, live = side.n, side.live
    df = pd.DataFrame({"feature": np.arange(n), "excluded": side.excluded})
    if side.freq is not None:
        df["freq"] = side.freq
    idx = best.indices[:, 0].numpy()
    _put(df, "best_match", live, np.where(idx >= 0, ids_other[idx.clip(0)], -1), -1)
    _put(df, "best_cos", live, best.values[:, 0].numpy(), np.nan)
    if best.values.shape[1] > 1:
        _put(df, "second_cos", live, best.values[:, 1].numpy(), np.nan)
    if mnn is not None:
        _put(df, "mutual_nn", live, mnn, False)
    _put(df, "n_children", live, n_children, 0)
    _put(df, "family", live, family, -1)
    _put(df, "family_type", live, fam["type"].to_numpy()[family], "-")
    mine, theirs, cos, ids = matched
    _put(df, "matched", live[mine], ids[theirs], -1)
    _put(df, "matched_cos", live[mine], cos, np.nan)
    return df


def _put(df: pd.DataFrame, col: str, rows: np.ndarray, values, fill) -> None:
    full = np.full(len(df), fill, dtype=object if isinstance(fill, str) else None)
    full[rows] = values
    df[col] = full


def _add_classes(fb: pd.DataFrame, B: Side, cls, dec, ida, functional) -> None:
    live = B.live
    _put(fb, "class", live, cls, "dead")
    _put(fb, "r2", live, dec.r2.numpy(), np.nan)
    _put(fb, "r2_single", live, dec.r2_single.numpy(), np.nan)
    fb["r2_gain"] = fb["r2"] - fb["r2_single"]
    w = dec.weights.numpy()
    _put(fb, "n_atoms", live, (w > 0).sum(1), 0)
    atoms = dec.atoms.numpy()
    for j in range(atoms.shape[1]):
        on = (atoms[:, j] >= 0) & (w[:, j] > 0)
        _put(fb, f"atom_{j + 1}", live, np.where(on, ida[atoms[:, j].clip(0)], -1), -1)
        _put(fb, f"w_{j + 1}", live, np.where(on, w[:, j], 0.0), np.nan)
    if functional is not None:
        fb["dmse"] = functional["dmse"]
        fb["functional"] = np.where(functional["freq_b"] == 0, "silent",
                                    np.where(functional["dmse"] < 0, "novel", "reconstruction"))


def _family_table(fam, fam_a, fam_b, A: Side, B: Side, ea, eb, ec) -> pd.DataFrame:
    fam = fam.copy()
    fam["a"] = _members(fam_a, A.live, len(fam))
    fam["b"] = _members(fam_b, B.live, len(fam))
    edge_fam = fam_a[ea] if len(ea) else np.zeros(0, int)
    fam["max_cos"] = pd.Series(ec).groupby(edge_fam).max().reindex(fam["family"]).to_numpy()
    if B.freq is not None:
        fam["freq_b"] = pd.Series(B.freq[B.live]).groupby(fam_b).sum().reindex(fam["family"], fill_value=0).to_numpy()
    return fam


def _members(label: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """For every family 0..n-1, its members' ids joined by spaces."""
    order = np.argsort(label, kind="stable")
    cuts = np.searchsorted(label[order], np.arange(n + 1))
    ids = ids[order].astype(str)
    return np.array([" ".join(ids[cuts[i] : cuts[i + 1]]) for i in range(n)], dtype=object)
