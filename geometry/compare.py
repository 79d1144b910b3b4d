"""Compare two SAE dictionaries: which B (wide) features are copies, splits, combinations or new.

    python -m geometry.compare L15R-8x L15R-32x --json out.json --out report/

The Python API returns the same as data: `compare(a, b, **options) -> Comparison`, where a and b are
anything `sae.load` accepts, SparseAutoencoders, or [n, d] matrices (rows = feature directions).
The JSON summary's schema is documented in README.md, section Comparing dictionaries.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import betaincinv

import sae
from sae.errors import run_cli
from sae.io import write_json, write_text

from geometry import matching, novelty
from geometry.options import GeometryError, Options
from geometry.similarity import resolve, top_k_cosine, unit_rows

SCHEMA = "geometry.compare/1"
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


@dataclass
class Side:
    """One dictionary, ready to compare: unit rows of its live features and what was left out."""

    name: str
    n: int
    d: int
    live: np.ndarray  # feature ids of the rows of `dirs`
    dirs: torch.Tensor  # [n_live, d] unit fp32
    excluded: np.ndarray  # [n] "" or why the feature is left out: zero, nonfinite, dead
    freq: np.ndarray | None  # [n] firing frequency, when known

    def counts(self) -> dict:
        why = pd.Series(self.excluded).value_counts()
        return {"name": self.name, "n_features": self.n, "d": self.d, "n_live": len(self.live),
                "n_dead": int(why.get("dead", 0)), "n_zero": int(why.get("zero", 0)),
                "n_nonfinite": int(why.get("nonfinite", 0)), "firing_stats": self.freq is not None}


@dataclass
class Comparison:
    """Everything `compare` found. Feature ids are row numbers of the original dictionaries."""

    summary: dict  # the JSON summary (schema in README.md, section Comparing dictionaries)
    features_a: pd.DataFrame  # one row per A feature
    features_b: pd.DataFrame  # one row per B feature
    families: pd.DataFrame  # one row per connected component of the graph at the cut
    edges: pd.DataFrame  # (a, b, cos) with cos >= cut
    assignment: pd.DataFrame  # one-to-one matched (a, b, cos)
    baseline: dict  # random-direction max-cosine samples: "b_to_a", "a_to_b"
    agreement: pd.DataFrame | None = None  # geometric class x functional class (with activations)

    def text(self) -> str:
        from geometry.report import summary_text

        return summary_text(self.summary)

    def write_json(self, path: str | Path) -> Path:
        return write_json(path, self.summary)

    def write(self, folder: str | Path, *, max_points: int = 20000) -> Path:
        """CSV tables, summary.json and a self-contained report.html into `folder`."""
        from geometry.report import report_html

        folder = Path(folder)
        tables = {"features_a": self.features_a, "features_b": self.features_b, "families": self.families,
                  "edges": self.edges, "assignment": self.assignment, "agreement": self.agreement}
        for name, df in tables.items():
            if df is not None:
                write_text(folder / f"{name}.csv", df.to_csv(index=name == "agreement"))
        self.write_json(folder / "summary.json")
        write_text(folder / "report.html", report_html(self, max_points=max_points))
        return folder


# ---- inputs ------------------------------------------------------------------------------------------
def _resolve(x, default_name: str):
    """(SparseAutoencoder or matrix, name): loads names and folders with sae.load."""
    if isinstance(x, (str, Path)):
        return sae.load(x), str(x)
    return x, getattr(getattr(x, "meta", None), "name", None) or default_name


def _side(x, name: str, freq, opts: Options) -> Side:
    if isinstance(x, sae.SparseAutoencoder):
        rows = x.W_dec if opts.rows == "decoder" else x.W_enc.T
    elif opts.rows == "encoder":
        raise GeometryError("rows='encoder' needs SparseAutoencoders, not matrices")
    else:
        rows = x
    rows = torch.as_tensor(rows).detach().to("cpu", torch.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise sae.ShapeError(f"{name}: expected an [n_features, d] matrix, got shape {list(rows.shape)}")
    norms = torch.linalg.vector_norm(rows, dim=1)  # NaN or inf where a row holds one: one cheap pass
    finite = torch.isfinite(norms).numpy()
    excluded = np.where(~finite, "nonfinite", np.where(norms.numpy() == 0, "zero", "")).astype(object)
    if freq is not None:
        freq = np.asarray(freq, dtype=np.float64).ravel()
        if len(freq) != len(rows):
            raise sae.ShapeError(f"{name}: {len(freq)} firing frequencies for {len(rows)} features")
        excluded[(excluded == "") & (freq <= opts.dead_freq)] = "dead"
    live = np.flatnonzero(excluded == "")
    if len(live) == 0:
        raise sae.ShapeError(f"{name} has no live features ({len(rows)} rows: all zero, NaN or never firing)")
    if len(live) < len(rows):
        keep = torch.from_numpy(live)
        dirs = rows[keep].div_(norms[keep][:, None])
    else:
        dirs = rows / norms[:, None]
    return Side(name, len(rows), rows.shape[1], live, dirs, excluded, freq)


def load_array(path: str | Path, what: str = "activations") -> torch.Tensor:
    """A tensor from .safetensors (its only tensor, or the one named `what`), .npy or, for 1-D data,
    .csv (a column named freq/frequency/firing_frequency, or the only column). Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise sae.SAEFileError(f"no such file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
            if len(tensors) != 1 and what not in tensors:
                raise sae.FormatError(f"{path} holds {', '.join(tensors)}; name the tensor '{what}'")
            return tensors.get(what, next(iter(tensors.values())))
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if path.suffix == ".csv":
            df = pd.read_csv(path)
            col = next((c for c in ("freq", "frequency", "firing_frequency") if c in df), df.columns[-1])
            return torch.from_numpy(df[col].to_numpy(np.float64))
    except sae.SAEError:
        raise
    except Exception as e:  # numpy, pandas and safetensors raise many types for bad files
        raise sae.SAEFileError(f"{path} could not be read: {e}") from None
    raise sae.SAEFileError(f"{path}: use .safetensors or .npy (or .csv for frequencies); pickles are not read")


# ---- the comparison ----------------------------------------------------------------------------------
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
    t = _Timer()
    functional = None
    if activations is not None:
        (a, name_a), (b, name_b) = _resolve(a, "A"), _resolve(b, "B")
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
        A, B = _side(a, name_a, freq_a, opts), _side(b, name_b, freq_b, opts)
    else:  # one loaded SAE in memory at a time: only its unit rows are kept
        A = _side(*_resolve(a, "A"), freq_a, opts)
        B = _side(*_resolve(b, "B"), freq_b, opts)
    if A.d != B.d:
        raise sae.ShapeError(f"{A.name} has d={A.d} but {B.name} has d={B.d}: only SAEs of one width compare")
    del a, b
    t.lap("load")
    device, precision = resolve(device, precision)
    sim = dict(block=block, device=device, precision=precision)
    nb = top_k_cosine(A.dirs, B.dirs, opts.k, normalised=True, cache=cache, **sim)
    t.lap("similarity")
    base, base_summary = _baselines(A, B, opts, sim)
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
        "max_cos": {"b_to_a": _dist(best_b, opts), "a_to_b": _dist(best_a, opts), **base_summary},
        "classes_b": _counts(fb["class"], novelty.CLASSES + ("dead",)),
        "families": _counts(fam["type"], matching.FAMILY_TYPES),
        "split_factor": _split_summary(children),
        "mutual_nn": int(mnn.sum()),
        "assignment": {"tau": opts.assign_tau, "matched": len(mc), "matched_fraction_a": len(mc) / n_a,
                       "matched_fraction_b": len(mc) / n_b, "mean_cos": float(mc.mean()) if len(mc) else None},
        "saturated": {"a": matching.saturated(nb.a_to_b.values, opts.cut), "b": matching.saturated(nb.b_to_a.values, opts.cut)},
        "similarity": {"k": opts.k, "precision": precision, "device": str(device), "cached": nb.cached, "key": nb.key},
    }
    if B.freq is not None:
        summary["classes_b_freq_weighted"] = _weighted(fb["class"], B.freq, novelty.CLASSES)
        summary["families_freq_weighted_b"] = _weighted(fb["family_type"], B.freq, matching.FAMILY_TYPES)
    if functional is not None:
        f = fb.loc[fb["class"] != "dead", "functional"].value_counts()
        summary["functional"] = {"n_tokens": functional["n_tokens"], "exact": functional["exact"],
                                 **{c: int(f.get(c, 0)) for c in ("novel", "reconstruction", "silent")},
                                 "agreement": {r: agreement.loc[r].to_dict() for r in agreement.index}}
    summary["timings_s"] = t.done()
    return Comparison(summary, fa, fb, fam, edges, assign, base, agreement)


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


# ---- statistics --------------------------------------------------------------------------------------
def epsilon(n: int, d: int) -> float:
    """sqrt(12 ln F / D): the interference scale of F nearly-orthogonal directions in D dimensions."""
    return math.sqrt(12 * math.log(max(n, 2)) / d)


def _quantiles(x: np.ndarray) -> dict:
    return {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(x, QUANTILES))} if len(x) else {}


def _dist(x: np.ndarray, opts: Options) -> dict:
    return {"quantiles": _quantiles(x), "mean": float(x.mean()), "frac_ge_cut": float((x >= opts.cut).mean()),
            "frac_ge_same": float((x >= opts.same).mean())}


def isotropic_quantiles(n: int, d: int) -> dict:
    """Quantiles of the max cosine between a fixed direction and n uniform random directions in R^d
    (closed form: P(cos > t) = I_{1-t^2}((d-1)/2, 1/2) / 2, independent draws)."""
    q = np.asarray(QUANTILES)
    tail = -np.expm1(np.log(q) / n)  # P(one cos > t) at the q-quantile of the max
    t = np.sqrt(1 - betaincinv((d - 1) / 2, 0.5, np.clip(2 * tail, 0, 1)))
    return {str(k): float(v) for k, v in zip(QUANTILES, t)}


def _baselines(A: Side, B: Side, opts: Options, sim: dict) -> tuple[dict, dict]:
    """Max cosine of random directions against each real dictionary (a random rotation of the query
    side, which keeps the target's anisotropy), and the isotropic closed form."""
    g = torch.Generator().manual_seed(0x6E0D + 7919 * opts.seed)  # not the seed users' data are likely made with
    samples, summary = {}, {}
    for key, query, target in (("b_to_a", B, A), ("a_to_b", A, B)):
        m = min(opts.baseline_samples, max(128, len(query.live) // 64))  # a few % of the main pass
        q = unit_rows(torch.randn(m, A.d, generator=g))
        samples[key] = top_k_cosine(q, target.dirs, 1, normalised=True, **sim).a_to_b.values[:, 0].numpy()
        summary[f"baseline_{key}"] = {"quantiles": _quantiles(samples[key]), "n_samples": m}
        summary[f"isotropic_{key}"] = {"quantiles": isotropic_quantiles(len(target.live), A.d)}
    return samples, summary


def _counts(values: pd.Series, names) -> dict:
    c = values.value_counts()
    return {n: int(c.get(n, 0)) for n in names}


def _weighted(values: pd.Series, freq: np.ndarray, names) -> dict:
    total = freq.sum()
    s = pd.Series(freq).groupby(values.to_numpy()).sum()
    return {n: float(s.get(n, 0.0) / total) if total > 0 else 0.0 for n in names}


def _split_summary(children: np.ndarray) -> dict:
    hist = np.bincount(np.minimum(children, 8), minlength=9)
    has = children[children > 0]
    return {"histogram": {**{str(i): int(hist[i]) for i in range(8)}, "8+": int(hist[8])},
            "frac_split": float((children >= 2).mean()), "mean_children_given_any": float(has.mean()) if len(has) else 0.0,
            "max_children": int(children.max()) if len(children) else 0}


# ---- small helpers -----------------------------------------------------------------------------------
class _Timer:
    def __init__(self):
        self.laps: dict[str, float] = {}
        self.start = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now

    def done(self) -> dict[str, float]:
        return {**self.laps, "total": time.perf_counter() - self.start}


# ---- command line ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.compare",
        description="Compare two SAE dictionaries: for every feature of B, is it the same as one of A, a "
        "refinement (split child), a non-negative combination of A features, or new? Prints a summary; "
        "--json and --out write it all.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("a", help="SAE A (usually the narrower): a name (L15R-8x, demo:L15R-8x) or a folder")
    p.add_argument("b", help="SAE B (usually the wider), as A")
    p.add_argument("--json", metavar="FILE", help="write the summary as JSON (schema: README.md, section Comparing dictionaries)")
    p.add_argument("--out", metavar="DIR", help="write per-feature CSV tables, summary.json and report.html")
    p.add_argument("--activations", metavar="FILE",
                   help="cached activations [n, d] (.safetensors or .npy) at the SAEs' site: runs the insertion "
                   "test and gives firing frequencies (features that never fire are left out as dead)")
    p.add_argument("--freq-a", metavar="FILE", help="firing frequencies of A's features (.npy, .safetensors, .csv)")
    p.add_argument("--freq-b", metavar="FILE", help="firing frequencies of B's features")
    p.add_argument("--device", help="cpu or cuda[:i] for the similarity pass (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "tf32", "bf16"),
                   help="matmul precision; kept candidates are rescored in fp32, so results are exact either way")
    p.add_argument("--block", type=int, help="rows per streamed block (default: a 256 MiB tile on CPU)")
    p.add_argument("--cache-dir", metavar="DIR", help="where the similarity pass is cached (default $SAE_CACHE/geometry)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the similarity cache")
    p.add_argument("--max-points", type=int, default=20000, help="points drawn in the report's scatter plot")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    for f in fields(Options):
        kw = {"choices": ("decoder", "encoder")} if f.name == "rows" else {}
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f.metadata["help"], **kw)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = {f.name: getattr(args, f.name) for f in fields(Options)}
    freq = {k: load_array(v, "freq") for k, v in (("freq_a", args.freq_a), ("freq_b", args.freq_b)) if v}
    result = compare(args.a, args.b, activations=args.activations, device=args.device, precision=args.precision,
                     block=args.block, cache=False if args.no_cache else (args.cache_dir or True), **freq, **opts)
    if not args.quiet:
        print(result.text())
    if args.json:
        result.write_json(args.json)
    if args.out:
        result.write(args.out, max_points=args.max_points)
    return 0


if __name__ == "__main__":
    run_cli(main)
