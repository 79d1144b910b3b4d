"""Causal novelty by stitching (Leask et al. 2025, arXiv 2502.04878): the model's view of `geometry.compare`.

    python -m geometry.stitch demo:L15R-8x demo:L15R-32x --compare out/demo/compare --out out/demo/stitch

    from geometry.stitch import stitched, stitch_effects
    s = stitched(sae_a, sae_b, add=[17], remove=[3])      # A with B's feature 17 in and A's feature 3 out
    r = stitch_effects("demo:L15R-8x", "demo:L15R-32x", classes=comparison)   # or features_b.csv as a table
    r.effects, r.crosstab, r.summary; r.write("out/stitch")

`compare` classes every feature of the wider SAE B by geometry (same / refined / composite / novel /
ambiguous). Here a sample of them is inserted one at a time into the narrower SAE A, and the stitched
SAE is spliced into the model on held-out tokens: the change of the reconstruction MSE, of the LM loss
and of the KL to the clean model, each against A alone (`sae.eval.evaluate`, one clean forward per
token batch shared by every stitched SAE). A family swap takes a split family's A parent out and puts
all its B children in. `insertion_dmse` is the closed form of `geometry.novelty.insertion_test` on the
same tokens (d_mse must agree with it for threshold SAEs). Definitions: docs/stitch.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import sae
from geometry.comparison import compare
from geometry.novelty import CLASSES, insertion_test
from geometry.options import GeometryError, check_settings
from sae.cli import add_arguments, from_arguments, option, parse_count
from sae.data.massive import massive_positions
from sae.data.text import TokenBatcher, iter_texts, resolve_context
from sae.errors import run_cli
from sae.eval.evaluate import evaluate
from sae.eval.resolve import inference_variant, sae_sites
from sae.io import atomic_path, check_writable, write_json
from sae.lm.models import load_model
from sae.lm.runner import SiteRunner
from sae.model import SparseAutoencoder

EFFECT_COLUMNS = ["kind", "class", "b_features", "a_parent", "freq_b", "d_mse", "d_lm_loss", "d_kl", "insertion_dmse"]
EFFECTS = ["d_mse", "d_lm_loss", "d_kl", "insertion_dmse"]
FAMILY_CLASS = "family swap"
SAMPLED = ("same", "refined", "composite", "novel")  # the classes drawn by default (CLASSES has "ambiguous" too)


# ---- stitching --------------------------------------------------------------------------------------
def threshold_form(s: SparseAutoencoder, name: str = "SAE") -> SparseAutoencoder:
    """`s` in a form where every feature fires on its own threshold (relu, jumprelu), so that features can be
    added and removed without changing the others. A TopK SAE has none: its k winners change when a feature
    is added. One that carries JumpReLU thresholds (any > 0) is used as its JumpReLU variant; else refused."""
    if s.activation != "topk":
        return s
    if not bool((s.threshold > 0).any()):
        raise GeometryError(f"{name} is a TopK SAE (k={s.k}) without JumpReLU thresholds: adding a feature would change "
                            "which k features win, so stitching is not defined; post-process it to JumpReLU first")
    return inference_variant(s, "jumprelu")


def _ids(ids: Any, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64).reshape(-1))
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= n):
        raise GeometryError(f"{what} ids must lie in 0..{n - 1}, got {t.tolist()[:8]}")
    if len(torch.unique(t)) != len(t):
        raise GeometryError(f"{what} ids must be distinct, got {t.tolist()[:8]}")
    return t


def check_pair(sae_a: SparseAutoencoder, sae_b: SparseAutoencoder) -> None:
    """A and B must read and write the same site with the same widths."""
    if (sae_a.d_in, sae_a.d_out) != (sae_b.d_in, sae_b.d_out):
        raise GeometryError(f"A has d_in={sae_a.d_in}, d_out={sae_a.d_out} but B has d_in={sae_b.d_in}, "
                            f"d_out={sae_b.d_out}: only SAEs of one width stitch")
    try:
        sites_a, sites_b = sae_sites(sae_a, "A"), sae_sites(sae_b, "B")
    except sae.SAEError:
        return  # an SAE that does not say where it reads (synthetic data): the widths are all there is to check
    if sites_a != sites_b:
        raise GeometryError(f"A reads {sites_a[0].hook} -> {sites_a[1].hook} but B reads {sites_b[0].hook} -> "
                            f"{sites_b[1].hook}: stitching needs SAEs of one site")


@torch.no_grad()
def stitched(sae_a: SparseAutoencoder, sae_b: SparseAutoencoder, add: Sequence[int] = (),
             remove: Sequence[int] = ()) -> SparseAutoencoder:
    """A with B's features `add` appended (encoder columns, biases, thresholds, decoder rows) and A's features
    `remove` dropped; A's b_dec is kept. Features keep their order: A's kept features, then `add` in order.

    Both SAEs are taken in threshold form (`threshold_form`: a TopK SAE as its JumpReLU variant), where a
    feature fires on its own threshold, so x_hat = A's reconstruction + the added features' contributions
    - the removed ones'. The result is relu when A and B are, else jumprelu (relu = threshold 0); it is for
    inference (no gradients).
    """
    check_pair(sae_a, sae_b)
    A, B = threshold_form(sae_a, "A"), threshold_form(sae_b, "B")
    add_t, rem_t = _ids(add, B.n_features, "add"), _ids(remove, A.n_features, "remove")
    keep = torch.ones(A.n_features, dtype=torch.bool)
    keep[rem_t] = False
    keep = keep.to(A.W_enc.device)
    like = {"dtype": A.W_enc.dtype, "device": A.W_enc.device}
    bi = add_t.to(B.W_enc.device)
    W_enc = torch.cat([A.W_enc[:, keep], B.W_enc[:, bi].to(**like)], 1)  # [d_in, F_a - |remove| + |add|]
    b_enc = torch.cat([A.b_enc[keep], B.b_enc[bi].to(**like)])
    W_dec = torch.cat([A.W_dec[keep], B.W_dec[bi].to(**like)])  # [F', d_out]
    thr = torch.cat([A.threshold[keep], B.threshold[bi].to(**like)])
    act = "relu" if A.activation == B.activation == "relu" else "jumprelu"
    name = A.meta.name or "A"
    meta = dataclasses.replace(A.meta, name=f"{name}+{len(add_t)}-{len(rem_t)}", provenance={
        **A.meta.provenance, "stitched": {"a": A.meta.name, "b": B.meta.name, "add": add_t.tolist(),
                                          "remove": rem_t.tolist()}})
    k = A.k if A.k and A.k <= W_enc.shape[1] else None
    return SparseAutoencoder.from_weights(W_enc.clone(), b_enc.clone(), W_dec.clone(), A.b_dec.detach().clone(),
                                          thr.clone(), activation=act, k=k,
                                          topk_by_decoder_norm=A.topk_by_decoder_norm, meta=meta).requires_grad_(False)


# ---- what to insert ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Insertion:
    kind: str  # feature | family
    cls: str  # B's geometric class, or FAMILY_CLASS
    add: tuple[int, ...]  # B features in
    remove: tuple[int, ...] = ()  # A features out

    @property
    def label(self) -> str:
        return f"{self.kind}:{'+'.join(map(str, self.add))}" + (f"-{self.remove[0]}" if self.remove else "")


def class_table(classes: Any, n_b: int, n_a: int | None = None) -> pd.DataFrame:
    """B's per-feature table (feature, class[, family, family_type, best_match]) from a `Comparison`, a DataFrame,
    a `geometry.compare --out` folder or its features_b.csv; checked against B's width (and A's, when known)."""
    if isinstance(classes, (str, Path)):
        path = Path(classes)
        file = path / "features_b.csv" if path.is_dir() else path
        if not file.is_file():
            raise sae.SAEFileError(f"--compare {path}: no features_b.csv there (write one with geometry.compare --out)")
        fa = path / "features_a.csv" if path.is_dir() else None
        if n_a is not None and fa is not None and fa.is_file():
            n = sum(1 for _ in fa.open()) - 1
            if n != n_a:
                raise GeometryError(f"--compare {path} was made for an A of {n:,} features, not {n_a:,}")
        try:
            classes = pd.read_csv(file)
        except (OSError, ValueError) as e:
            raise sae.SAEFileError(f"{file} could not be read: {e}") from None
    elif hasattr(classes, "features_b"):
        classes = classes.features_b
    if not isinstance(classes, pd.DataFrame) or not {"feature", "class"} <= set(classes.columns):
        raise GeometryError("classes must be a Comparison, a compare folder or a table with columns feature and class")
    f = classes["feature"].to_numpy(np.int64)
    if len(f) != n_b or (len(f) and (f.min() < 0 or f.max() >= n_b)):
        raise GeometryError(f"the class table has {len(f):,} rows for features "
                            f"{f.min() if len(f) else 0}..{f.max() if len(f) else 0}, but B has {n_b:,} features: "
                            "it was made for another SAE")
    return classes


def sample_insertions(table: pd.DataFrame, *, per_class: int = 20, families: int = 10, seed: int = 0,
                      classes: Sequence[str] = CLASSES, fires: np.ndarray | None = None,
                      min_fires: int = 0) -> list[Insertion]:
    """`per_class` random B features of each class (fewer where a class has fewer), then `families` random split
    families (one A parent, >= 2 B children; needs the columns family, family_type and best_match). With
    `fires` ([n_b] firing counts on the measured tokens), only features firing >= min_fires times are drawn,
    and families whose children together fire >= min_fires times."""
    rng = np.random.default_rng(seed)
    out: list[Insertion] = []
    n_fires = np.full(len(table), np.inf) if fires is None else np.asarray(fires, dtype=float)
    for c in classes:
        pick = (table["class"] == c).to_numpy() & (n_fires[table["feature"].to_numpy(np.int64)] >= min_fires)
        ids = np.sort(table.loc[pick, "feature"].to_numpy(np.int64))
        for j in np.sort(rng.choice(ids, min(per_class, len(ids)), replace=False)):
            out.append(Insertion("feature", c, (int(j),)))
    if families and {"family", "family_type", "best_match"} <= set(table.columns):
        split = table[(table["family_type"] == "split") & (table["class"] != "dead")]
        groups = {int(f): g for f, g in split.groupby("family") if g["best_match"].nunique() == 1 and len(g) >= 2
                  and n_fires[g["feature"].to_numpy(np.int64)].sum() >= min_fires}
        for f in np.sort(rng.choice(sorted(groups), min(families, len(groups)), replace=False)):
            g = groups[int(f)]
            out.append(Insertion("family", FAMILY_CLASS, tuple(int(j) for j in g["feature"]),
                                 (int(g["best_match"].iloc[0]),)))
    return out


# ---- the measurement ---------------------------------------------------------------------------------
@dataclass
class StitchResult:
    effects: pd.DataFrame  # EFFECT_COLUMNS: one row per insertion
    crosstab: pd.DataFrame  # per class: n, n_fired, median_* / mean_* of EFFECTS, share_lower_lm
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, out: str | Path) -> Path:
        """effects.csv, crosstab.csv and summary.json in `out`, each written atomically."""
        out = Path(out)
        for name, df in {"effects": self.effects, "crosstab": self.crosstab}.items():
            with atomic_path(out / f"{name}.csv") as tmp:
                df.to_csv(tmp, index=False)
        write_json(out / "summary.json", self.summary)
        return out


@torch.no_grad()
def site_activations(model: Any, tokenizer: Any, dataset: Any, sae_: SparseAutoencoder, *, tokens: int,
                     context: int | None = None, batch_size: int = 8) -> torch.Tensor:
    """[n, d_in] activations at the SAE's input site on exactly the positions `sae.eval.evaluate` scores: the
    same token batches, BOS/EOS/pad and massive-activation positions (at the in and out sites) left out."""
    runner = SiteRunner(model)
    inp, out = (runner.site(s) for s in sae_sites(sae_))
    batcher = TokenBatcher(tokenizer, context=resolve_context(context, runner.max_context), batch_size=batch_size,
                           pack=False, max_context=runner.max_context)
    xs = []
    for batch in batcher.batches(iter_texts(dataset), max_tokens=tokens):
        batch = batch.to(runner.device)
        acts = runner.capture(batch.input_ids, batch.attention_mask, {inp, out})
        mask = batch.mask & ~massive_positions(acts.values(), batch.mask)
        xs.append(acts[inp.hook][mask].float().cpu())
    return torch.cat(xs)


def crosstab(effects: pd.DataFrame) -> pd.DataFrame:
    """Per class (feature classes in CLASSES order, then the family swap): n, n_fired, median and mean of each
    effect, share_lower_lm (the share with d_lm_loss < 0)."""
    rows = []
    order = [c for c in (*CLASSES, FAMILY_CLASS) if c in set(effects["class"])]
    for c in order:
        g = effects[effects["class"] == c]
        row: dict[str, Any] = {"class": c, "n": len(g), "n_fired": int((g["freq_b"] > 0).sum())}
        for e in EFFECTS:
            row[f"median_{e}"], row[f"mean_{e}"] = g[e].median(), g[e].mean()
        row["share_lower_lm"] = float((g["d_lm_loss"] < 0).mean())
        row["share_lower_mse"] = float((g["d_mse"] < 0).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def stitch_effects(
    a: Any, b: Any, *, classes: Any, per_class: int = 20, families: int = 10, tokens: int = 512,
    lm_tokens: int | None = None, model: Any = "embedded", tokenizer: Any = None, dataset: Any = "embedded-heldout",
    context: int | None = 128, batch_size: int = 8, min_fires: int = 1, sample: Sequence[str] = SAMPLED,
    seed: int = 0, chunk: int = 48, progress: bool = True,
) -> StitchResult:
    """Insert a sample of B's features, one at a time, into A (and swap `families` split families), splice each
    stitched SAE into the model on the same held-out tokens, and compare it with A alone.

    a, b: anything `sae.load` accepts, or SparseAutoencoders of one site. classes: a `Comparison`, a DataFrame
    (feature, class[, family, family_type, best_match]) or a compare folder; `sample`: the classes drawn from.
    tokens: ordinary held-out tokens for the MSE; lm_tokens of them for the LM loss and KL (None: all, so that
    every effect is measured on the same tokens). Only B features that fire >= min_fires times on the tokens
    are drawn (one that never fires changes nothing). The stitched SAEs go to `evaluate` `chunk` at a time (each
    call one clean forward; every stitched SAE reruns the blocks after its layer on its own).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    given_a = a if isinstance(a, SparseAutoencoder) else sae.load(a)
    given_b = b if isinstance(b, SparseAutoencoder) else sae.load(b)
    check_pair(given_a, given_b)
    sae_a, sae_b = threshold_form(given_a, "A"), threshold_form(given_b, "B")  # A alone is measured in this form too
    table = class_table(classes, sae_b.n_features, sae_a.n_features)
    if isinstance(model, (str, Path)):
        model, tokenizer, _ = load_model(str(model))
    elif tokenizer is None:
        raise GeometryError("pass tokenizer= with a model object")
    x = site_activations(model, tokenizer, dataset, sae_a, tokens=tokens, context=context,
                         batch_size=batch_size)  # [n, d]
    same_site = sae_sites(sae_a)[0] == sae_sites(sae_a)[1]
    ins = insertion_test(sae_a, sae_b, x) if same_site else None
    fires = np.rint(ins["freq_b"] * len(x)) if ins is not None else None
    plan = sample_insertions(table, per_class=per_class, families=families, seed=seed, classes=sample, fires=fires,
                             min_fires=min_fires)
    if not plan:
        raise GeometryError(f"nothing to insert: no B feature of a class among {', '.join(sample)} fires "
                            f">= {min_fires} times on the {len(x):,} tokens")
    rows: list[dict[str, Any]] = []
    items = [("A", None)] + [(p.label, p) for p in plan]
    bar = tqdm(total=len(items), unit="sae", desc="stitch", disable=not progress)
    base: dict[str, float] = {}
    kw = dict(model=model, tokenizer=tokenizer, dataset=dataset, tokens=tokens, lm_tokens=lm_tokens, context=context,
              batch_size=batch_size, progress=progress)
    try:
        for s in range(0, len(items), chunk):
            part = items[s : s + chunk]
            saes = {lab: (sae_a if p is None else stitched(sae_a, sae_b, p.add, p.remove)) for lab, p in part}
            ev = evaluate(saes, **kw).eval.set_index("sae")
            for lab, p in part:
                r = ev.loc[lab]
                if p is None:
                    base = {k: float(r[k]) for k in ("mse", "ce_spliced", "kl_div", "delta_lm_loss", "ce_clean",
                                                      "tokens", "lm_tokens")}
                    continue
                single = ins is not None and p.kind == "feature"
                rows.append({"kind": p.kind, "class": p.cls, "b_features": " ".join(map(str, p.add)),
                             "a_parent": p.remove[0] if p.remove else -1,
                             "freq_b": float(ins["freq_b"][list(p.add)].sum()) if ins is not None else np.nan,
                             "d_mse": float(r["mse"]) - base["mse"],
                             "d_lm_loss": float(r["ce_spliced"]) - base["ce_spliced"],
                             "d_kl": float(r["kl_div"]) - base["kl_div"],
                             "insertion_dmse": float(ins["dmse"][p.add[0]]) / sae_a.d_out if single else np.nan})
            bar.update(len(part))
    finally:
        bar.close()
    effects = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    tab = crosstab(effects)
    summary = {
        "a": sae_a.meta.name or str(a), "b": sae_b.meta.name or str(b), "n_a": sae_a.n_features,
        "n_b": sae_b.n_features, "activations": [given_a.activation, given_b.activation], "classes": list(sample), "per_class": per_class, "families": families,
        "min_fires": min_fires, "seed": seed,
        "tokens": int(base["tokens"]), "lm_tokens": int(base["lm_tokens"]), "context": context,
        "activation_tokens": len(x), "a_alone": {k: base[k] for k in ("mse", "ce_clean", "ce_spliced", "delta_lm_loss",
                                                                     "kl_div")},
        "n_insertions": int((effects["kind"] == "feature").sum()), "n_family_swaps": int((effects["kind"] == "family").sum()),
        "by_class": {r["class"]: {k: r[k] for k in r if k != "class"} for r in tab.to_dict("records")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    return StitchResult(effects, tab, summary)


# ---- command line -------------------------------------------------------------------------------------
@dataclass
class StitchOptions:
    """The flags of `python -m geometry.stitch` (the two SAEs are argparse's own)."""

    out: Path = option(Path("out/stitch"), "output folder", parse=Path)
    compare: Path | None = option(None, "a geometry.compare --out folder (its features_b.csv has the classes); "
                                  "without it, compare is run", parse=Path)
    per_class: int = option(20, "B features sampled per geometric class", min=1)
    families: int = option(10, "split families swapped (A's parent out, all its B children in; 0: none)", min=0)
    classes: str = option(",".join(SAMPLED), "comma-separated geometric classes to draw from (of "
                          + ", ".join(CLASSES) + ")")
    tokens: int = option(512, "held-out tokens every stitched SAE is measured on", min=1, parse=parse_count)
    lm_tokens: int | None = option(None, "of those, tokens scored for the LM loss and KL (None: all)", min=1,
                                   parse=parse_count)
    context: int = option(128, "tokens per document", min=2)
    min_fires: int = option(1, "draw only B features that fire at least this often on the tokens", min=0)
    dataset: str = option("embedded-heldout", "text source (sae.data.text.iter_texts)")
    model: str = option("embedded", "the language model the SAEs read (embedded or an HF folder / name)")
    seed: int = option(0, "seed of the sample")
    quiet: bool = option(False, "print nothing", switch=True)

    def __post_init__(self) -> None:
        check_settings(self)
        if not self.classes or any(c not in CLASSES for c in self.classes.split(",")):
            raise GeometryError(f"--classes {self.classes!r}: each must be one of {', '.join(CLASSES)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.stitch",
        description="Causal novelty by stitching: insert sampled features of the wider SAE B, one at a time, into "
        "the narrower A, splice A and every stitched SAE into the model, and tabulate the change of MSE, LM loss "
        "and KL per geometric class (geometry.compare); also family swaps. Writes effects.csv, crosstab.csv and "
        "summary.json.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", help="SAE A, the narrower (demo:L15R-8x, L15R-8x or a folder)")
    p.add_argument("b", help="SAE B, the wider, of the same site")
    add_arguments(p, StitchOptions)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    o = from_arguments(StitchOptions, args)
    check_writable(o.out)
    if o.compare is not None and not (o.compare / "features_b.csv").is_file():
        raise sae.SAEFileError(f"--compare {o.compare}: no features_b.csv there (write one with geometry.compare --out)")
    sae_a, sae_b = sae.load(args.a), sae.load(args.b)
    check_pair(sae_a, sae_b)
    threshold_form(sae_a, "A"), threshold_form(sae_b, "B")
    if o.compare is not None:
        classes: Any = o.compare
    else:
        classes = compare(sae_a, sae_b)
    r = stitch_effects(sae_a, sae_b, classes=classes, per_class=o.per_class, families=o.families, tokens=o.tokens,
                       lm_tokens=o.lm_tokens, model=o.model, dataset=o.dataset, context=o.context,
                       min_fires=o.min_fires, sample=o.classes.split(","), seed=o.seed,
                       progress=not o.quiet)
    r.summary.update(a=args.a, b=args.b)
    r.write(o.out)
    if not o.quiet:
        cols = ["class", "n", "n_fired", "median_d_mse", "median_d_lm_loss", "median_d_kl", "share_lower_lm"]
        print(r.crosstab[cols].to_string(index=False))
        print(f"{len(r.effects)} stitched SAEs; {r.summary['seconds']:.0f} s; written to {o.out}")
    return 0


__all__ = ["StitchOptions", "StitchResult", "Insertion", "build_parser", "class_table", "crosstab", "main",
           "sample_insertions", "site_activations", "stitch_effects", "stitched", "threshold_form"]

if __name__ == "__main__":
    run_cli(main)
