"""The figure grid: SAEs trained on the embedded model's whole train split with the demo's recipe,
evaluated on the held-out split into the tables under figures/data/.

    python -m sae.grid --out figures/data          # hours on 2 CPU cores (docs/figures.md); resumable

What it trains (layers 0-based; one run per layer, so the model runs once per layer and the layer's
sites are captured once, cached):
- at every `--layers` layer (default 3, 7, 15, 23) R: TopK k = 50 at 8x and 32x, and vanilla 8x
  (Fig. 2, 4, 6, 10, 11);
- at the `--position-layers` (default 3, 7) also A, M and TC, TopK 8x (Fig. 10, 11);
- at the `--sweep-layer` (default 15) 8x TopK SAEs at every `--k-sweep` value and 8x vanilla SAEs at
  every `--l1-sweep` coefficient (Fig. 2's curves; the k = 50 and the recipe's L1 points are the
  layer's own SAEs), saved as L15R-8x-k20, L15R-8x-Vanilla-l1-0.0007, ...;
- L15R-8x twice more on `--anneal-tokens`, with and without K-annealing, logged for Fig. 12.
The recipe is `sae.pipelines.demo`'s (batch, lr, AuxK, b_dec, calibration; every flag of it is here too) with
`--epochs` 1 by default. The SAEs go to `$SAE_CACHE/grid/L{layer}/{name}` (never into the repository).

What it writes to `--out` (schemas: docs/figures.md):
- eval.csv: the layers' SAEs on the held-out split (TopK SAEs in JumpReLU and TopK inference), and the
  R SAEs on the same articles in the chat template (the closest analogue of the paper's base ->
  instruct transfer the embedded model allows: one model, instruct-style input);
- sweep.csv: the sweep SAEs on the held-out split (same columns);
- frequencies.csv: per-feature firing frequencies of the R TopK SAEs;
- positions.csv: the R SAEs on held-out articles packed into long rows (Fig. 5's analogue: the
  summaries are short, so long contexts are concatenated articles);
- training_log.csv: the Fig. 12 logs (`run` = k-anneal / no-anneal).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from sae.cli import add_arguments, check_options, from_arguments, option
from sae.data.stream import ActivationStream
from sae.errors import SAEError
from sae.eval.evaluate import evaluate
from sae.formats import load
from sae.io import atomic_path, cache_dir, check_writable, write_json
from sae.lm.embedded import MODEL_NAME, corpus_articles, load_model
from sae.pipelines.demo import DemoSettings, suite_spec, train_config, train_suite, training_stream
from sae.pipelines.staging import commit, prepare
from sae.precision import resolve_dtype
from sae.train import SAESpec, latest_checkpoint, read_log, train

N_LAYERS = 30
POSITIONS = ("A", "M", "TC")


@dataclass
class GridSettings:
    """Which SAEs the grid trains and how much of the held-out split evaluates them."""

    layers: str = option("3,7,15,23", "layers with R SAEs (8x and 32x TopK, 8x vanilla)")
    position_layers: str = option("3,7", "of those, layers that also get A, M and TC SAEs (8x TopK)")
    sweep_layer: int = option(15, "the layer of the k and L1 sweeps (one of --layers)", min=0, max=N_LAYERS - 1)
    k_sweep: str = option("20,100", "more k values of 8x TopK SAEs at the sweep layer (besides 50)")
    l1_sweep: str = option("7e-4,2.8e-3", "more L1 coefficients of 8x vanilla SAEs at the sweep layer")
    anneal_tokens: int = option(100_000, "training tokens of each Fig. 12 run", min=1)
    alive_window: int = option(50_000, "Fig. 12: alive = fired within this many tokens", min=1)
    eval_tokens: int = option(200_000, "held-out tokens per evaluation (the split holds ~100,000: all)", min=1)
    lm_tokens: int = option(8192, "of those, tokens that also get delta LM loss", min=0)
    long_context: int = option(4096, "row length of the Fig. 5 evaluation", min=2)
    long_tokens: int = option(16_384, "tokens of the Fig. 5 evaluation", min=1)

    def __post_init__(self) -> None:
        check_options(self)
        self.layer_list = _numbers(self.layers, int, "layers")
        self.position_list = _numbers(self.position_layers, int, "position-layers")
        self.k_list = _numbers(self.k_sweep, int, "k-sweep")
        self.l1_list = _numbers(self.l1_sweep, float, "l1-sweep")
        bad = [v for v in (*self.layer_list, *self.position_list, self.sweep_layer) if not 0 <= v < N_LAYERS]
        if bad:
            raise SAEError(f"layer {bad[0]} is out of range: the embedded model has layers 0-{N_LAYERS - 1}")
        if not set(self.position_list) <= set(self.layer_list) or self.sweep_layer not in self.layer_list:
            raise SAEError("--position-layers and --sweep-layer must be among --layers")
        if any(k < 1 for k in self.k_list) or any(v < 0 for v in self.l1_list):
            raise SAEError("k values must be positive and L1 coefficients non-negative")


def _numbers(text: str, kind: type, what: str) -> tuple:
    try:
        return tuple(kind(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise SAEError(f"--{what} must be comma-separated numbers, not {text!r}") from None


def layer_specs(layer: int, grid: GridSettings, recipe: DemoSettings) -> list[SAESpec]:
    """The SAEs of one layer's run, in the paper's names (sweep SAEs with a suffix)."""
    specs = [suite_spec(f"L{layer}R-{w}") for w in ("8x", "32x")] + [suite_spec(f"L{layer}R-8x-Vanilla")]
    if layer in grid.position_list:
        specs += [suite_spec(f"L{layer}{p}-8x") for p in POSITIONS]
    if layer == grid.sweep_layer:
        specs += [suite_spec(f"L{layer}R-8x", label=f"L{layer}R-8x-k{k}", k=k) for k in grid.k_list if k != 50]
        specs += [suite_spec(f"L{layer}R-8x-Vanilla", label=f"L{layer}R-8x-Vanilla-l1-{v:g}", l1=v)
                  for v in grid.l1_list if v != recipe.l1]
    return specs


def is_sweep(name: str) -> bool:
    return "-k" in name or "-l1-" in name


def grid_root() -> Path:
    return cache_dir("grid")


def train_layer(layer: int, grid: GridSettings, recipe: DemoSettings) -> dict[str, Path]:
    """Train (or finish) one layer's SAEs with `recipe`; returns {name: folder}. A layer built with the
    same recipe and SAEs is skipped; one built otherwise stays until its rebuild is complete."""
    specs = layer_specs(layer, grid, recipe)
    run = grid_root() / f"L{layer}"
    names = [s.name for s in specs]
    build = prepare(run, {"recipe": asdict(recipe), "saes": names}, names)
    if not build.done:
        hooks = list(dict.fromkeys(h for s in specs for h in (s.hook_in, s.out_hook)))
        train_suite(training_stream(recipe, hooks), specs, recipe, build.folder, resume=build.resume)
        commit(build, names)
    return {name: run / name for name in names}


def train_anneal_runs(grid: GridSettings, recipe: DemoSettings) -> pd.DataFrame:
    """Fig. 12: L15R-8x trained with and without K-annealing from one stream (no AuxK, so dead features
    show); their logs, long."""
    run = grid_root() / "anneal"
    hook = suite_spec("L15R-8x").hook_in
    specs = [replace(suite_spec("L15R-8x", label=name), k_anneal=anneal) for name, anneal in
             (("k-anneal", True), ("no-anneal", False))]
    if not all((run / s.name / "log.csv").is_file() for s in specs) or latest_checkpoint(run) is None:
        stream: ActivationStream = training_stream(recipe, [hook])
        base = train_config(replace(recipe, epochs=1.0), grid.anneal_tokens)
        config = replace(base, aux_k=0, alive_window=grid.alive_window, log_every=1,
                         checkpoint_every=max(1, base.steps // 10))
        train(stream, specs, config, out_dir=run, resume=latest_checkpoint(run) is not None)
    frames = [read_log(run / s.name / "log.csv").assign(sae="L15R-8x", run=s.name, alive_window=grid.alive_window)
              for s in specs]
    return pd.concat(frames, ignore_index=True)


def chat_texts(articles: list[dict], tokenizer) -> list[str]:
    """Held-out articles as instruct conversations: the user asks about the title, the assistant answers."""
    return [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Tell me about {a['title']}."}, {"role": "assistant", "content": a["extract"]}],
        tokenize=False) for a in articles]


def evaluate_grid(folders: dict[str, Path], grid: GridSettings, out: Path) -> dict[str, Path]:
    """The evaluation tables of the trained SAEs (see the module docstring)."""
    saes = {name: load(folder) for name, folder in folders.items()}
    main = {n: s for n, s in saes.items() if not is_sweep(n)}
    resid = {n: s for n, s in main.items() if s.meta.position == "R"}
    common = dict(tokens=grid.eval_tokens, lm_tokens=grid.lm_tokens, model_label=MODEL_NAME)
    model, tokenizer = load_model(dtype=resolve_dtype("auto"))  # as `sae.evaluate`'s default
    runs = {
        # one clean forward for all: the vanilla SAEs (no k) skip the TopK mode
        "main": evaluate(saes, model, tokenizer=tokenizer, modes=("native", "topk"), **common),
        "chat": evaluate(resid, model, tokenizer=tokenizer, dataset=chat_texts(corpus_articles("heldout"), tokenizer),
                         dataset_label="embedded-heldout (chat template)", **common),
        "long": evaluate(resid, model, tokenizer=tokenizer, model_label=MODEL_NAME, tokens=grid.long_tokens,
                         lm_tokens=0, pack=True, context=grid.long_context,
                         dataset_label=f"embedded-heldout (packed, {grid.long_context})"),
    }
    first = runs["main"].eval
    freq = runs["main"].frequencies
    topk_r = [n for n in resid if not n.endswith("Vanilla")]
    tables = {
        "eval.csv": pd.concat([first[~first["sae"].map(is_sweep)], runs["chat"].eval], ignore_index=True),
        "sweep.csv": first[first["sae"].map(is_sweep)],
        "frequencies.csv": freq[freq["sae"].isin(topk_r) & (freq["mode"] == "native")],
        "positions.csv": runs["long"].positions,
    }
    return {name: write_csv(df, out / name) for name, df in tables.items()}


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path


def build(grid: GridSettings, recipe: DemoSettings, out: Path) -> dict[str, Path]:
    """Train every layer of the grid and the Fig. 12 runs (resumable), then write the tables."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    folders: dict[str, Path] = {}
    for layer in tqdm(grid.layer_list, desc="grid layers", unit="layer"):
        folders.update(train_layer(layer, grid, recipe))
    trained = time.perf_counter()
    paths = {"training_log.csv": write_csv(train_anneal_runs(grid, recipe), out / "training_log.csv")}
    paths.update(evaluate_grid(folders, grid, out))
    seconds = {"train": round(trained - start), "evaluate": round(time.perf_counter() - trained)}
    write_json(out / "grid.json", {"grid": asdict(grid), "recipe": asdict(recipe), "seconds": seconds})
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sae.grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("figures/data"), help="where the tables go (figures/data)")
    add_arguments(p.add_argument_group("grid"), GridSettings, env_prefix="GRID_")
    add_arguments(p.add_argument_group("recipe (sae.pipelines.demo's)"), DemoSettings, env_prefix="GRID_",
                  defaults={"epochs": 1.0})
    args = p.parse_args(argv)
    grid, recipe = from_arguments(GridSettings, args), from_arguments(DemoSettings, args)
    check_writable(args.out)
    paths = build(grid, recipe, args.out)
    print("tables:\n" + "\n".join(f"  {p}" for p in paths.values()))
    return 0
