"""The whole Fig. 7 run behind `python -m geometry.neighborhood`: load the SAEs, collect their top
contexts and labels (kept for reruns), pick the seeds (by index, keywords or a concept direction), take
the neighbourhood and write it.

    run = run_neighborhood(NeighborhoodSettings("demo:L15R-8x", {"demo:L15R-8x": 6, "demo:L15R-32x": 24},
                                                Path("out/threats"), keywords="war,pandemic"))
    run.neighborhood.members, run.neighborhood.edges, run.paths
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from geometry.options import GeometryError
from geometry.seed_neighborhood import FILES, Neighborhood, neighborhood
from geometry.seeds import best_seeds, concept_seeds, find_seeds
from sae import load as load_sae
from sae.cli import check_options, option
from sae.data.text import iter_texts
from sae.formats.names import folder_name
from sae.interp.contexts import collect_contexts
from sae.interp.labels import label_features
from sae.io import write_text


@dataclass
class NeighborhoodSettings:
    """Everything a run needs; the command line's flags are these fields (underscores as dashes).
    Exactly one of seeds, keywords and concept says how the seeds are found."""

    seed_sae: str = field(metadata={"help": "the SAE the seeds belong to (name or folder, e.g. demo:L15R-8x)"})
    members: dict[str, int] = field(metadata={"help": "member SAEs and how many neighbours each, e.g. "
                                              "demo:L15R-8x-Vanilla=6,demo:L15R-8x=6,demo:L15R-32x=24 (the seed "
                                              "SAE's count includes the seeds)"})
    out: Path = field(metadata={"help": "output folder"})
    seeds: str | None = option(None, "seed feature ids, comma-separated")
    keywords: str | None = option(None, "keywords, comma-separated (e.g. war,pandemic,famine,plague,climate,crisis,"
                                  "disaster,nuclear): seeds are the features with the highest summed keyword score")
    concept: tuple[Path, Path] | None = option(None, "two text files (.txt / .jsonl): seeds point along "
                                               "mean(A) - mean(B)")
    n_seeds: int = option(1, "seeds taken from --keywords or --concept", min=1)
    min_score: float = option(0.1, "keyword hits below this score are ignored", min=0)
    none_ok: bool = option(False, "no keyword match is a result, not an error: say so, keep seeds.csv and exit 0")
    tokens: int = option(100_000, "token budget for the top contexts (labels, keywords)", min=1)
    contexts_dir: Path | None = option(None, "where top contexts are kept and resumed (default OUT/contexts)")
    n_random: int = option(20, "random activating contexts kept per feature (as python -m geometry.atlas keeps, so "
                           "both can share --contexts-dir)", min=0)
    no_labels: bool = option(False, "skip contexts and labels (only with --seeds or --concept)")
    model: str = option("embedded", "the model the SAEs read")
    dataset: str = option("embedded-train", "corpus for the top contexts")
    edge_cut: float = option(0.7, "draw cross-SAE edges at cos >= this", min=-1, max=1)
    all_features: bool = option(False, "members from every feature (default: only features that fired on the "
                                "contexts' tokens)")
    seed: int = option(0, "UMAP random state")
    n_neighbors: int = option(15, "UMAP n_neighbors (capped at members - 1)", min=2)
    atlas: str | None = option(None, "the feature atlas's folder relative to OUT (python -m geometry.atlas): a click on "
                               "a member opens its page")
    quiet: bool = option(False, "no progress bars, print nothing")
    rebuild: bool = option(False, "draw even if OUT holds this neighbourhood (same SAEs, contexts, settings and code)")

    def __post_init__(self):
        check_options(self)
        if sum(x is not None for x in (self.seeds, self.keywords, self.concept)) != 1:
            raise GeometryError("give exactly one of seeds, keywords and concept")
        if self.no_labels and self.keywords:
            raise GeometryError("--keywords needs the top contexts: drop --no-labels")
        self.out = Path(self.out)

    def seed_ids(self) -> list[int]:
        """The feature ids of `seeds` ("3,17" -> [3, 17])."""
        try:
            return [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise GeometryError(f"--seeds takes feature ids separated by commas, not {self.seeds!r}") from None


@dataclass
class NeighborhoodRun:
    """What a run found and wrote."""

    neighborhood: Neighborhood | None  # None when no keyword matched and none_ok
    seeds: pd.DataFrame  # the seeds taken: feature (with score, ... for keywords, cos for a concept)
    hits: pd.DataFrame | None = None  # every keyword hit (keywords only)
    paths: list[Path] = field(default_factory=list)  # files written
    note: str = ""  # why no neighbourhood was drawn


def run_neighborhood(settings: NeighborhoodSettings) -> NeighborhoodRun:
    """Load, label, pick seeds, take the neighbourhood and write it (see the module docstring); a
    keyword search without a match raises GeometryError unless settings.none_ok."""
    s = settings
    names = list(dict.fromkeys([s.seed_sae, *s.members]))
    saes = {name: load_sae(name) for name in names}
    labels: dict[str, pd.DataFrame] = {}
    contexts = {}
    paths: list[Path] = []
    if not s.no_labels:
        where = s.contexts_dir or s.out / "contexts"
        contexts = collect_contexts(saes, model=s.model, dataset=s.dataset, tokens=s.tokens, n_random=s.n_random,
                                    out={n: where / folder_name(n) for n in names}, resume=True, refresh=True,
                                    progress=not s.quiet)
        for name in names:
            labels[name] = label_features(contexts[name])
            paths.append(write_text(s.out / "labels" / f"{folder_name(name)}.csv", labels[name].to_csv(index=False)))
    hits = None
    if s.seeds is not None:
        picked = pd.DataFrame({"feature": s.seed_ids()})
    elif s.keywords is not None:
        hits = find_seeds(contexts[s.seed_sae], s.keywords, labels=labels[s.seed_sae], min_score=s.min_score)
        paths.append(write_text(s.out / "seeds.csv", hits.to_csv(index=False)))
        picked = best_seeds(hits, s.n_seeds)
        if picked.empty:
            note = (f"no feature of {s.seed_sae} matches {s.keywords} with score >= {s.min_score} "
                    f"in {contexts[s.seed_sae].tokens:,} tokens (see {s.out / 'seeds.csv'})")
            if not s.none_ok:
                raise GeometryError(note)
            return NeighborhoodRun(None, picked, hits, paths, note)
    else:
        texts_a, texts_b = (list(iter_texts(path)) for path in s.concept)
        picked = concept_seeds(saes[s.seed_sae], texts_a, texts_b, model=s.model, n=s.n_seeds)
        paths.append(write_text(s.out / "seeds.csv", picked.to_csv(index=False)))
    live = {n: contexts[n].counts > 0 for n in contexts} if contexts and not s.all_features else None
    nb = neighborhood(s.seed_sae, picked["feature"].tolist(), s.members, saes, labels=labels or None,
                      edge_cut=s.edge_cut, seed=s.seed, n_neighbors=s.n_neighbors, live=live)
    folder = nb.write(s.out, atlas=s.atlas)
    return NeighborhoodRun(nb, picked, hits, paths + [folder / name for name in FILES])
