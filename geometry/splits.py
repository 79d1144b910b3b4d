"""Split trees across a ladder of SAEs of growing width (8x -> 16x -> 32x), and a causal check of them.

    python -m geometry.splits demo:L15R-8x demo:L15R-16x demo:L15R-32x --labels out/demo/threats/labels \
        --freq demo:L15R-8x=out/demo/eval/frequencies_L15R-8x.csv --causal 20 --out out/demo/splits

    from geometry.splits import split_trees, split_effects
    t = split_trees(["demo:L15R-8x", "demo:L15R-32x"], labels=labels)   # t.edges, t.steps, t.chains
    t.write("out/splits")                                               # CSV, summary.json, trees.html
    e = split_effects("demo:L15R-8x", "demo:L15R-32x", parents=[12, 40])

A child is a wider SAE's feature whose best match in the next narrower SAE is its parent at decoder
cosine >= cut: `geometry.matching.pair_links`, the one definition used here. A parent splits when
it has >= 2 children. `split_effects` compares, on positions where a parent fires, the next-token logit
change of ablating the parent with that of ablating all its children (docs/splits.md).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import sae
from geometry.directions import load_rows
from geometry.labels import label_lookup, read_labels
from geometry.matching import pair_links
from geometry.options import GeometryError, check_settings
from geometry.split_view import trees_html
from sae.cli import add_arguments, from_arguments, option, parse_count
from sae.data.massive import massive_positions
from sae.data.text import TokenBatcher, describe_source, iter_texts
from sae.errors import run_cli
from sae.eval.resolve import sae_sites
from sae.io import atomic_path, check_writable, write_json, write_text
from sae.lm.models import load_model
from sae.lm.runner import SiteRunner, Splice
from sae.lm.sites import Site

CHAIN_COLUMNS = ["root", "level", "sae", "feature", "parent", "cos", "label", "n_children", "n_descendants", "splits",
                 "path"]


@dataclass
class SplitTrees:
    names: list[str]  # narrow to wide
    cut: float
    edges: pd.DataFrame  # step, parent_sae, parent, child_sae, child, cos
    steps: pd.DataFrame  # step, parent_sae, child_sae, n_live_parents, n_split, n_one_child, n_no_child, ...
    chains: pd.DataFrame  # CHAIN_COLUMNS: every root of names[0] and its descendants through every rung
    effects: pd.DataFrame | None = None  # split_effects of sampled split parents, per step (when computed)
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, out: str | Path) -> Path:
        """edges.csv, steps.csv, chains.csv, [effects.csv], summary.json and trees.html in `out`."""
        out = Path(out)
        tables = {"edges": self.edges, "steps": self.steps, "chains": self.chains, "effects": self.effects}
        for name, df in tables.items():
            if df is not None:
                with atomic_path(out / f"{name}.csv") as tmp:
                    df.to_csv(tmp, index=False)
        write_json(out / "summary.json", self.summary)
        write_text(out / "trees.html", trees_html(self.chains, self.steps, self.names, self.cut))
        return out


def _name(x: Any, i: int) -> str:
    return str(x) if isinstance(x, (str, Path)) else (getattr(getattr(x, "meta", None), "name", None) or f"sae{i}")


def split_trees(saes: list, *, cut: float = 0.7, labels: dict[str, pd.DataFrame] | None = None,
                dead: dict[str, np.ndarray] | None = None, names: list[str] | None = None) -> SplitTrees:
    """Parent -> children edges between each pair of neighbouring rungs of `saes` (specs for `sae.load`,
    SparseAutoencoders or [F, d] decoder matrices, narrow to wide), per-step split shares, and chains from
    every feature of the narrowest SAE. `labels` and `dead` ([F] bool masks) are keyed by name (the spec,
    or `names`); dead features are neither parents nor children."""
    if len(saes) < 2:
        raise GeometryError("give at least two SAEs, narrow to wide")
    if not 0 < cut <= 1:
        raise GeometryError(f"cut {cut}: must be > 0 and <= 1")
    names = list(names) if names is not None else [_name(x, i) for i, x in enumerate(saes)]
    if len(set(names)) != len(names):
        raise GeometryError(f"the same SAE is given twice: {', '.join(names)}")
    rows = list(load_rows(dict(zip(names, saes))).values())  # unit [F_i, d], same d checked
    widths = [r.shape[0] for r in rows]
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise GeometryError("the widths must increase along the ladder (narrow to wide), got "
                            + ", ".join(f"{n} {w:,}" for n, w in zip(names, widths)))
    live = []
    for n, r in zip(names, rows):
        mask = (r.norm(dim=1) > 0).numpy()
        if dead and n in dead:
            d = np.asarray(dead[n], bool)
            if d.shape != mask.shape:
                raise sae.ShapeError(f"the dead mask of {n} has {d.size} entries, the SAE {mask.size} features")
            mask &= ~d
        live.append(np.flatnonzero(mask))
    kids: list[list[list[tuple[int, float]]]] = []  # per step, per parent feature: (child, cos)
    edge_rows, step_rows = [], []
    for s in range(len(rows) - 1):
        la, lb = live[s], live[s + 1]
        links, _ = pair_links(rows[s][la], rows[s + 1][lb], cut)
        step_kids: list[list[tuple[int, float]]] = [[] for _ in range(widths[s])]
        for i, ch in enumerate(links.children):
            step_kids[la[i]] = [(int(lb[j]), c) for j, c in ch]
            edge_rows += [(s, names[s], int(la[i]), names[s + 1], int(lb[j]), c) for j, c in ch]
        kids.append(step_kids)
        n = np.array([len(step_kids[f]) for f in la])
        split = n >= 2
        step_rows.append((s, names[s], names[s + 1], len(la), int(split.sum()), int((n == 1).sum()),
                          int((n == 0).sum()), float(split.mean()) if len(la) else 0.0,
                          float(n[split].mean()) if split.any() else 0.0, int(n.sum())))
    edges = pd.DataFrame(edge_rows, columns=["step", "parent_sae", "parent", "child_sae", "child", "cos"])
    steps = pd.DataFrame(step_rows, columns=["step", "parent_sae", "child_sae", "n_live_parents", "n_split",
                                             "n_one_child", "n_no_child", "share_split", "mean_children",
                                             "n_children"])
    chains = _chains(names, kids, live[0], labels or {})
    summary = {"saes": names, "widths": widths, "cut": cut, "n_live": [len(x) for x in live],
               "steps": steps.to_dict(orient="records"),
               "n_split_roots": int(((chains["level"] == 0) & (chains["splits"] > 0)).sum())}
    return SplitTrees(names, cut, edges, steps, chains, summary=summary)


def _chains(names: list[str], kids: list, roots: np.ndarray, labels: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every root's subtree, depth first, one row per node; n_descendants and splits count the subtree."""
    L = len(names)
    desc = [dict[int, int]() for _ in range(L)]
    spl = [dict[int, int]() for _ in range(L)]
    for lev in range(L - 2, -1, -1):
        for f, ch in enumerate(kids[lev]):
            if ch:
                desc[lev][f] = sum(1 + desc[lev + 1].get(j, 0) for j, _ in ch)
                spl[lev][f] = int(len(ch) >= 2) + sum(spl[lev + 1].get(j, 0) for j, _ in ch)
    rows: list[tuple] = []
    for r in roots.tolist():
        stack = [(0, r, -1, np.nan, f"{names[0]}:{r}")]
        while stack:
            lev, f, par, cos, path = stack.pop()
            ch = kids[lev][f] if lev < L - 1 else []
            rows.append((r, lev, names[lev], f, par, cos, len(ch), desc[lev].get(f, 0), spl[lev].get(f, 0), path))
            stack += [(lev + 1, j, f, c, f"{path} > {names[lev + 1]}:{j}") for j, c in reversed(ch)]
    df = pd.DataFrame(rows, columns=[c for c in CHAIN_COLUMNS if c != "label"])
    df.insert(6, "label", "")
    for n in names:
        at = (df["sae"] == n).to_numpy()
        df.loc[at, "label"] = label_lookup(labels.get(n), df.loc[at, "feature"].to_numpy())
    return df


@torch.no_grad()
def split_effects(parent_sae: Any, child_sae: Any, parents: Any, *, model: Any = "embedded", tokenizer: Any = None,
                  texts: Any = "embedded", n_positions: int = 4, tokens: int = 8192, context: int = 64,
                  cut: float = 0.7, children: dict[int, list[int]] | None = None, sample: int | None = None,
                  seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Per parent f of `parent_sae` (A) with children C in `child_sae` (B): on the `n_positions` ordinary
    positions of a corpus sample (`texts`, `tokens` tokens, documents cut to `context`) where a_f fires
    most, the next-token logit change of (1) x -> x - a_f(x) W_dec_A[f] and (2) x -> x - sum_C b_j(x)
    W_dec_B[j] at that position, and of (3) the same for as many random *active* non-children of B.
    corr_children / corr_random: Pearson over the vocabulary of (1) vs (2) / (1) vs (3), mean over positions.
    `children` defaults to pair_links at `cut`; `sample` draws that many parents among those that fire."""
    from tqdm.auto import tqdm

    A, B = (x if isinstance(x, sae.SparseAutoencoder) else sae.load(x) for x in (parent_sae, child_sae))
    sites = [sae_sites(A, "the parent SAE"), sae_sites(B, "the child SAE")]
    if any(i != o for i, o in sites) or sites[0] != sites[1]:
        raise GeometryError(f"both SAEs must read and write one site; got {[(i.hook, o.hook) for i, o in sites]}")
    if isinstance(model, (str, Path)):
        model, tokenizer, _ = load_model(str(model))
    elif tokenizer is None:
        raise GeometryError("pass tokenizer= with a model object (or a model name)")
    runner = SiteRunner(model)
    site, dev = runner.site(sites[0][0].hook), runner.device
    A, B = A.to(dev), B.to(dev)
    if children is None:
        links, _ = pair_links(A.W_dec.detach().cpu(), B.W_dec.detach().cpu(), cut)
        children = {f: [j for j, _ in ch] for f, ch in enumerate(links.children)}
    parents = [int(f) for f in np.asarray(parents).ravel() if children.get(int(f))]
    pt = torch.tensor(parents, dtype=torch.long, device=dev)
    # pass 1: where each parent fires most in the corpus sample
    docs: list[torch.Tensor] = []
    best = torch.zeros(0, 4)  # [n, 4] (parent index, value, doc, pos), at most n_positions per parent
    batcher = TokenBatcher(tokenizer, context=context, batch_size=8, max_context=runner.max_context)
    bar = tqdm(total=tokens, unit="tok", desc="find firings", disable=not progress, leave=False)
    for batch in batcher.batches(iter_texts(texts), max_tokens=tokens):
        x = runner.capture(batch.input_ids, batch.attention_mask, [site])[site.hook]  # [b, T, d]
        mask = (batch.mask.to(dev) & ~massive_positions([x], batch.mask.to(dev))).cpu()
        a = A.encode(x.to(A.W_enc.dtype))[..., pt].cpu()  # [b, T, P]
        a[~mask] = 0
        r, t, p = a.nonzero(as_tuple=True)
        found = torch.stack([p.float(), a[r, t, p].float(), (r + len(docs)).float(), t.float()], 1)
        best = _top_per(torch.cat([best, found]), n_positions)
        docs += [row[m.bool()] for row, m in zip(batch.input_ids, batch.attention_mask)]
        bar.update(batch.n_tokens)
    bar.close()
    fired = sorted({parents[int(i)] for i in best[:, 0].tolist()})
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(fired, min(sample, len(fired)), replace=False).tolist()) if sample else fired
    keep = torch.isin(best[:, 0], torch.tensor([parents.index(f) for f in chosen], dtype=torch.float32))
    entries = best[keep]
    # pass 2: one clean row and three ablated rows per (parent, position), the blocks rerun from the site's layer
    per: dict[int, list[tuple[float, float, int]]] = {f: [] for f in chosen}
    n_active = {f: [] for f in chosen}
    for d in tqdm(sorted(set(entries[:, 2].long().tolist())), desc="ablate", disable=not progress, leave=False):
        rows = entries[entries[:, 2] == d]
        ids = docs[d][: int(rows[:, 3].max()) + 1][None].to(dev)  # [1, T]
        pro = runner.prologue(ids)
        _, cap = runner.run_layers(pro, pro.hidden, 0, site.layer + 1, capture=[site], keep_resid_pre=[site.layer])
        x, resid = cap[site.hook][0].to(A.W_enc.dtype), cap[Site(site.layer, "resid_pre").hook]
        deltas, pos = [], []
        for pi, _, _, t in rows.tolist():
            f, t = parents[int(pi)], int(t)
            a, b = A.encode(x[t][None])[0], B.encode(x[t][None])[0]  # [F_A], [F_B]
            C = torch.tensor(children[f], device=dev)
            others = np.setdiff1d(torch.nonzero(b).flatten().cpu().numpy(), C.cpu().numpy())
            R = torch.tensor(rng.choice(others, min(len(C), len(others)), replace=False), device=dev, dtype=torch.long)
            deltas += [a[f] * A.W_dec[f], b[C] @ B.W_dec[C], b[R] @ B.W_dec[R]]
            pos += [t] * 3
            n_active[f].append(int((b[C] > 0).sum()))
        n = len(deltas) + 1
        D = torch.zeros(n, ids.shape[1], x.shape[1], device=dev, dtype=resid.dtype)
        D[torch.arange(1, n), torch.tensor(pos)] = torch.stack(deltas).to(D.dtype)
        h, _ = runner.run_layers(runner.prologue(ids.expand(n, -1)), resid.expand(n, -1, -1).contiguous(), site.layer,
                                 runner.n_layers, splices=[Splice(site, lambda v, D=D: v - D)])
        at = torch.tensor([pos[0]] + pos)
        logits = runner.logits(h[torch.arange(n), at]).float().cpu()  # [n, V]: row 0 clean at every row's position
        clean = runner.logits(h[0, at[1:]]).float().cpu()
        eff = (logits[1:] - clean).view(-1, 3, logits.shape[1])  # [m, (parent, children, random), V]
        for k, (pi, *_rest) in enumerate(rows.tolist()):
            per[parents[int(pi)]].append((_pearson(eff[k, 0], eff[k, 1]), _pearson(eff[k, 0], eff[k, 2]),
                                          float(eff[k, 0].norm()), float(eff[k, 1].norm())))
    out = []
    for f in chosen:
        v = np.array(per[f], float).reshape(-1, 4)
        vals = entries[entries[:, 0] == parents.index(f), 1].numpy()
        out.append((f, len(children[f]), " ".join(map(str, children[f])), len(v), float(vals.mean()),
                    float(np.mean(n_active[f])), *[float(np.nanmean(c)) if np.isfinite(c).any() else np.nan
                                                   for c in v.T]))
    df = pd.DataFrame(out, columns=["parent", "n_children", "children", "n_positions", "act_mean", "children_active",
                                    "corr_children", "corr_random", "effect_norm_parent", "effect_norm_children"])
    df.attrs["summary"] = {"n_parents": len(df), "n_candidates": len(parents), "n_fired": len(fired),
                           "median_corr_children": float(df["corr_children"].median()) if len(df) else np.nan,
                           "median_corr_random": float(df["corr_random"].median()) if len(df) else np.nan,
                           "positions": f"strongest firings in {describe_source(texts)}, {tokens} tokens"}
    return df


def _top_per(found: torch.Tensor, n: int) -> torch.Tensor:
    """The n largest values (column 1) per group (column 0) of [m, 4] rows."""
    order = torch.argsort(found[:, 1], descending=True, stable=True)
    found = found[order]
    found = found[torch.argsort(found[:, 0], stable=True)]
    _, counts = torch.unique_consecutive(found[:, 0], return_counts=True)
    rank = torch.arange(len(found)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return found[rank < n]


def _pearson(u: torch.Tensor, v: torch.Tensor) -> float:
    u, v = u.double() - u.double().mean(), v.double() - v.double().mean()
    den = float(u.norm() * v.norm())
    return float(u @ v) / den if den > 0 else float("nan")


@dataclass
class SplitOptions:
    """The flags of `python -m geometry.splits` (the SAEs and --freq are argparse's own)."""

    out: Path = option(Path("out/splits"), "output folder", parse=Path)
    cut: float = option(0.7, "decoder cosine a child needs to its parent (its best match in the narrower SAE)",
                        above=0, max=1)
    labels: Path | None = option(None, "folder of label tables <name>.csv (feature, label), e.g. "
                                 "out/demo/threats/labels", parse=Path)
    causal: int = option(0, "split parents sampled per step for the causal check (0: none)", min=0)
    tokens: int = option(8192, "corpus tokens encoded to find where the sampled parents fire", min=1,
                         parse=parse_count)
    positions: int = option(4, "positions per parent (its strongest firings in the corpus sample)", min=1)
    context: int = option(64, "tokens per document of the corpus sample", min=2)
    corpus: str = option("embedded", "text source of the causal check (sae.data.text.iter_texts)")
    model: str = option("embedded", "the language model the SAEs read (embedded or an HF folder / name)")
    seed: int = option(0, "seed of the parent sample and the random baseline")
    quiet: bool = option(False, "print nothing", switch=True)

    def __post_init__(self) -> None:
        check_settings(self)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.splits",
        description="Split trees across a ladder of SAEs of growing width: parent -> children edges (cos >= cut), "
        "the share of features that split at each step, chains from the narrowest SAE, a tree view "
        "(trees.html) and optionally a causal check (ablating a parent vs ablating its children).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("sae", nargs="+", help="two or more SAEs, narrow to wide (demo:L15R-8x demo:L15R-32x)")
    p.add_argument("--freq", nargs="+", default=[], metavar="SPEC=FILE",
                   help="firing frequencies (CSV feature,frequency) of an SAE; frequency 0 = dead, left out")
    add_arguments(p, SplitOptions)
    return p


def read_dead(items: list[str], specs: list[str], widths: dict[str, int]) -> dict[str, np.ndarray]:
    """--freq SPEC=FILE items -> spec -> [F] bool (frequency <= 0; features absent from the file are live)."""
    out = {}
    for item in items:
        spec, eq, path = item.partition("=")
        if not eq or not spec or not path:
            raise GeometryError(f"--freq {item!r}: expected SPEC=FILE")
        if spec not in specs:
            raise GeometryError(f"--freq {item!r}: {spec} is not one of the SAEs ({', '.join(specs)})")
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as e:
            raise sae.SAEFileError(f"--freq {path} could not be read: {e}") from None
        if "feature" not in df or "frequency" not in df:
            raise sae.FormatError(f"--freq {path} needs columns feature and frequency")
        f = df["feature"].to_numpy(np.int64)
        if len(f) and (f.min() < 0 or f.max() >= widths[spec]):
            raise sae.FormatError(f"--freq {path} has feature ids outside 0..{widths[spec] - 1} of {spec}")
        dead = np.zeros(widths[spec], bool)
        dead[f] = df["frequency"].to_numpy(float) <= 0
        out[spec] = dead
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    o = from_arguments(SplitOptions, args)
    check_writable(o.out)
    specs = list(args.sae)
    if len(specs) < 2:
        raise GeometryError("give at least two SAEs, narrow to wide")
    saes = [sae.load(s) for s in specs]
    widths = {s: m.n_features for s, m in zip(specs, saes)}
    dims = {m.d_in for m in saes} | {m.d_out for m in saes}
    if len(dims) > 1:
        raise GeometryError("the SAEs must share d: " + ", ".join(f"{s} d={m.d_out}" for s, m in zip(specs, saes)))
    if any(widths[b] <= widths[a] for a, b in zip(specs, specs[1:])):
        raise GeometryError("the widths must increase along the ladder (narrow to wide), got "
                            + ", ".join(f"{s} {widths[s]:,}" for s in specs))
    dead = read_dead(args.freq, specs, widths)
    labels = read_labels(o.labels, specs)
    started = time.perf_counter()
    trees = split_trees(saes, cut=o.cut, labels=labels, dead=dead, names=specs)
    trees.summary["seconds_trees"] = round(time.perf_counter() - started, 1)
    if o.causal:
        model, tokenizer, _ = load_model(o.model)
        parts = []
        for s in trees.steps.itertuples(index=False):
            e = trees.edges[trees.edges["step"] == s.step]
            n = e.groupby("parent").size()
            df = split_effects(saes[s.step], saes[s.step + 1], n.index[n >= 2].to_numpy(), model=model,
                               tokenizer=tokenizer, texts=o.corpus, n_positions=o.positions, tokens=o.tokens,
                               context=o.context, cut=o.cut, sample=o.causal, seed=o.seed, progress=not o.quiet)
            df.insert(0, "step", s.step)
            df.insert(1, "parent_sae", s.parent_sae)
            df.insert(2, "child_sae", s.child_sae)
            parts.append(df)
            trees.summary.setdefault("causal", []).append({"step": s.step, **df.attrs["summary"]})
        trees.effects = pd.concat(parts, ignore_index=True)
    trees.summary["seconds_total"] = round(time.perf_counter() - started, 1)
    trees.write(o.out)
    if not o.quiet:
        print(trees.steps.drop(columns=["step"]).to_string(index=False))
        for c in trees.summary.get("causal", []):
            print(f"causal step {c['step']}: {c['n_parents']} parents, median corr(parent, children) "
                  f"{c['median_corr_children']:.3f}, random baseline {c['median_corr_random']:.3f}")
        print(f"{trees.summary['n_split_roots']:,} split roots; {trees.summary['seconds_total']:.0f} s; "
              f"written to {o.out}")
    return 0


__all__ = ["SplitOptions", "SplitTrees", "build_parser", "main", "read_dead", "split_effects", "split_trees"]

if __name__ == "__main__":
    run_cli(main)
