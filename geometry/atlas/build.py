"""Build the feature atlas of several SAEs: their contexts (collected once, resumable), labels, logit lens,
nearest features and cross-SAE links, written as a static site (`geometry.atlas.site`) and as
Neuronpedia batch files (`geometry.atlas.neuronpedia`).

    from geometry.atlas import build_atlas
    atlas = build_atlas(["demo:L15R-8x", "demo:L15R-32x"], "out/atlas", compare_dirs=["out/demo/compare"])
    atlas.tables["demo:L15R-8x"]      # the index table, one row per feature
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geometry.atlas.features import LogitLens, logit_lens, nearest_in_self
from geometry.atlas.forked import forked_map
from geometry.atlas.neuronpedia import export_neuronpedia
from geometry.atlas.records import SiteSAE
from geometry.atlas.shards import feature_records
from geometry.atlas.site import write_site
from geometry.matching import CrossLinks, pair_links
from geometry.options import GeometryError
from sae.eval.resolve import resolve_saes, sae_sites
from sae.formats.names import folder_name
from sae.formats.tensors import read_json
from sae.interp.contexts import collect_contexts
from sae.interp.labels import label_features
from sae.interp.store import TopContexts
from sae.lm.models import load_model, model_name
from sae.model import SparseAutoencoder


@dataclass
class Atlas:
    """What `build_atlas` wrote: the site's folder, every file, the index tables and the time per step."""

    out: Path
    paths: list[Path]
    tables: dict[str, pd.DataFrame]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths if p.is_file())


@dataclass
class _Side:
    """One SAE with everything its records are made from."""

    spec: str
    sae: SparseAutoencoder
    contexts: TopContexts
    lens: LogitLens
    nearest: tuple[np.ndarray, np.ndarray]
    labels: pd.Series = field(default_factory=lambda: pd.Series(dtype=object))  # label per feature
    links: dict[str, CrossLinks] = field(default_factory=dict)  # other spec -> links
    compared: dict[str, pd.DataFrame] = field(default_factory=dict)  # other spec -> (class, family) per feature


def build_atlas(saes: Sequence[str] | dict[str, Any], out: str | Path, *, contexts_dir: str | Path | None = None,
                compare_dirs: Sequence[str | Path] = (), tokens: int = 100_000, n_random: int = 20, cut: float = 0.7,
                model: Any = "embedded", tokenizer: Any = None, dataset: Any = "embedded-train",
                device: str | None = None,
                extras: dict[str, str] | None = None, neuronpedia: bool = False, progress: bool = True) -> Atlas:
    """The atlas of `saes` (specs for `sae.load`, or a dict label -> SAE / spec) in `out`.

    Contexts come from `contexts_dir` (default OUT/contexts, one folder per SAE), collected there first
    where missing or short of `tokens` (resumable); `compare_dirs` are `geometry.compare --out` folders
    whose classes and families join the tables; `cut` is the cosine of a parent-child link. `model` is a
    name for `load_model` or a loaded model (then with its `tokenizer`)."""
    out = Path(out)
    clock, seconds = time.perf_counter(), {}
    names = list(saes) if isinstance(saes, dict) else [str(s) for s in saes]
    if len({folder_name(name) for name in names}) < len(names):
        raise GeometryError(f"the SAEs of an atlas need distinct names, not {', '.join(names)}")
    resolved = resolve_saes(saes if isinstance(saes, dict) else {str(s): s for s in saes})
    comparisons = [_read_comparison(Path(path), [name for name, _ in resolved]) for path in compare_dirs]
    if isinstance(model, (str, Path)):
        lm, tokenizer, label = load_model(str(model), device=device, dtype="auto")  # as the contexts pass
    elif tokenizer is None:
        raise GeometryError("pass tokenizer= with a model object (or a model name)")
    else:
        lm, label = model, model_name(model)
    folder = Path(contexts_dir) if contexts_dir is not None else out / "contexts"
    contexts = collect_contexts(dict(resolved), model=lm, tokenizer=tokenizer, dataset=dataset, tokens=tokens,
                                n_random=n_random, out={name: folder / folder_name(name) for name, _ in resolved},
                                resume=True, refresh=True, progress=progress, device=device)
    seconds["contexts"] = time.perf_counter() - clock
    with _no_cyclic_gc():
        with forked_map(lambda name: label_features(contexts[name])["label"], [n for n, _ in resolved], 2) as labels:
            sides = [_side(name, s, contexts[name], lm) for name, s in resolved]  # meanwhile, in this process
            for side, side_labels in zip(sides, labels):
                side.labels = side_labels
        seconds["labels, logit lens, nearest"] = time.perf_counter() - clock - sum(seconds.values())
        for i, a in enumerate(sides):
            for b in sides[i + 1:]:
                a.links[b.spec], b.links[a.spec] = pair_links(a.sae.W_dec.detach(), b.sae.W_dec.detach(), cut)
        by_spec = {s.spec: s for s in sides}
        for a, b, fa, fb in comparisons:
            by_spec[a].compared[b] = pd.DataFrame({"class": fa["family_type"], "family": fa["family"]})
            by_spec[b].compared[a] = pd.DataFrame({"class": fb["class"], "family": fb["family"]})
        seconds["cross links"] = time.perf_counter() - clock - sum(seconds.values())
        vocab = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        site = [_site_sae(s, sides, vocab, label, dataset) for s in sides]
        tables = {s.spec: pd.DataFrame(t.rows, columns=t.columns) for s, t in zip(sides, site)}
        paths = write_site(out, site, extras=extras, progress=progress)
        seconds["site"] = time.perf_counter() - clock - sum(seconds.values())
        if neuronpedia:
            for t in site:
                paths += export_neuronpedia(t, out / t.slug / "neuronpedia", model_id=label, sae_set=t.slug)
            seconds["neuronpedia"] = time.perf_counter() - clock - sum(seconds.values())
    return Atlas(out, paths, tables, seconds)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Build with the cyclic garbage collector off (and what exists frozen): the records are plain acyclic
    data, freed by reference counting, and the collector's passes over the many objects of a build cost
    about a fifth of its time. Forked site workers inherit the setting."""
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def _side(spec: str, s: SparseAutoencoder, ctx: TopContexts, lm) -> _Side:
    W = s.W_dec.detach().float()
    norm = getattr(getattr(lm, "model", None), "norm", None)
    unembed = lm.get_output_embeddings().weight.detach()
    if W.shape[1] != unembed.shape[1]:
        raise GeometryError(f"{spec} writes {W.shape[1]} dimensions; the model's residual stream has {unembed.shape[1]}")
    lens = logit_lens(W, norm.weight.detach() if norm is not None else None, unembed)
    return _Side(spec, s, ctx, lens, nearest_in_self(W))


def _read_comparison(folder: Path, specs: list[str]) -> tuple[str, str, pd.DataFrame, pd.DataFrame]:
    """(A's spec, B's spec, features_a, features_b) of a geometry.compare --out folder of two of `specs`."""
    summary = folder / "summary.json"
    if not summary.is_file():
        raise GeometryError(f"--compare {folder} is not a geometry.compare --out folder (no summary.json)")
    names = read_json(summary)
    a, b = names["a"]["name"], names["b"]["name"]
    if a not in specs or b not in specs:
        raise GeometryError(f"--compare {folder} compares {a} with {b}; the atlas holds {', '.join(specs)}")
    try:
        return a, b, pd.read_csv(folder / "features_a.csv"), pd.read_csv(folder / "features_b.csv")
    except (OSError, ValueError) as e:
        raise GeometryError(f"--compare {folder}: cannot read its feature tables ({e})") from None


def _display(spec: str) -> str:
    return spec.split(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1]


def _site_sae(side: _Side, sides: list[_Side], vocab: list[str], model_label: str, dataset: str) -> SiteSAE:
    ctx, s = side.contexts, side.sae
    others = [o for o in sides if o is not side]
    freq = ctx.counts / max(ctx.tokens, 1)
    peak = np.where(ctx.top.doc[:, 0] >= 0, ctx.top.value[:, 0], 0.0) if ctx.top.doc.shape[1] else np.zeros(s.n_features)
    columns = ["feature", "label", "count", "frequency", "max_activation"]
    cells: list[list] = [list(range(s.n_features)), side.labels.fillna("").tolist(), ctx.counts.tolist(),
                         np.round(freq, 8).tolist(), np.round(peak, 4).tolist()]
    id_columns: dict[str, str | None] = {}  # which columns hold feature ids, and of which SAE's pages
    for o in others:
        links, name = side.links[o.spec], _display(o.spec)
        columns += [f"best in {name}", f"cos in {name}"]
        id_columns[f"best in {name}"] = folder_name(o.spec)
        cells += [links.match_ids[:, 0].tolist(), np.round(links.match_cos[:, 0], 4).tolist()]
        if o.spec in side.compared:
            columns += [f"class vs {name}", f"family vs {name}"]
            id_columns[f"family vs {name}"] = None
            cells += [side.compared[o.spec]["class"].tolist(), side.compared[o.spec]["family"].tolist()]
    hook = sae_sites(s, side.spec)[0].hook
    description = (f"{side.spec}: {model_label} {hook}, {s.n_features:,} features, {s.activation}"
                   + (f" (k = {s.k})" if s.k else ""))
    slugs = {o.spec: folder_name(o.spec) for o in others}

    def records(start: int, stop: int) -> list[dict]:
        return feature_records(ctx, side.labels, side.lens, side.nearest, side.links, side.compared, slugs,
                               {o.spec: _display(o.spec) for o in others}, vocab, range(start, min(stop, s.n_features)))

    return SiteSAE(name=_display(side.spec), slug=folder_name(side.spec), description=description, columns=columns,
                   rows=[list(r) for r in zip(*cells)], n_features=s.n_features, records=records,
                   meta={"model": model_label, "hook": hook, "layer": s.meta.layer, "dataset": str(dataset),
                         "tokens": ctx.tokens, "documents": ctx.docs, "context": ctx.settings.get("context"),
                         "id_columns": id_columns})
