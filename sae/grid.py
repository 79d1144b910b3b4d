"""The figure grid: SAEs trained here on the embedded model, evaluated into the tables under figures/data/.

    python -m sae.grid --out figures/data          # about an hour on 2 free CPU cores; resumable

What it trains (suite `demo`, layers 0-based, one run per layer so the model runs once per layer):
- at every `--layers` layer (default 3, 7, 15, 23) R, TopK k = 50, 8x and 32x (Fig. 6, 10, 11);
- at the `--all-position-layers` (default 3, 15) also A, M and TC (Fig. 10, 11);
- at the `--vanilla-layers` (default 7, 15, 23) also R-8x-Vanilla and R-32x-Vanilla (Fig. 2, 4);
- L15R-8x twice more, with and without K-annealing, logged for Fig. 12.
Each run captures `--distinct-tokens` training tokens once (disk cache) and trains `--epochs` epochs over
them. The SAEs go to `$SAE_CACHE/grid/L{layer}/{name}` (never into the repository).

What it writes to `--out` (schemas in the README, "Figures"):
- eval.csv: every SAE on held-out articles (TopK SAEs in TopK and JumpReLU inference), and the R SAEs
  on the same articles in the chat template (the closest analogue of the paper's base -> instruct
  transfer the embedded model allows: one model, instruct-style input);
- frequencies.csv: per-feature firing frequencies of the L7R/L15R/L23R TopK SAEs;
- positions.csv: the L7R/L15R/L23R SAEs on held-out articles packed into long rows (Fig. 5's analogue:
  the summaries are short, so long contexts are concatenated articles);
- training_log.csv: the Fig. 12 logs (`run` = k-anneal / no-anneal).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from .errors import SAEError, run_cli
from .io import atomic_path, cache_dir, write_json

POSITIONS = ("R", "A", "M", "TC")
WIDTHS = ("8x", "32x")


@dataclass
class GridConfig:
    layers: tuple[int, ...] = (3, 7, 15, 23)
    all_position_layers: tuple[int, ...] = (3, 15)
    vanilla_layers: tuple[int, ...] = (7, 15, 23)
    distinct_tokens: int = 40_000
    epochs: int = 2
    batch_size: int = 1024
    anneal_tokens: int = 100_000  # Fig. 12 runs (over the layer-15 distinct tokens)
    alive_window: int = 50_000  # Fig. 12: "alive" = fired within this many tokens
    eval_tokens: int = 8_192
    lm_tokens: int = 1_024
    long_context: int = 4096
    long_tokens: int = 16_384
    seed: int = 0
    extra_train_args: list[str] = field(default_factory=list)

    @property
    def train_tokens(self) -> int:
        return self.distinct_tokens * self.epochs


def layer_names(layer: int, config: GridConfig) -> list[str]:
    """The SAEs of one layer's run, in the paper's names."""
    positions = POSITIONS if layer in config.all_position_layers else ("R",)
    names = [f"L{layer}{p}-{w}" for p in positions for w in WIDTHS]
    if layer in config.vanilla_layers:
        names += [f"L{layer}R-{w}-Vanilla" for w in WIDTHS]
    return names


def grid_root() -> Path:
    return cache_dir("grid")


def sae_folder(name: str) -> Path:
    from .formats.names import parse_name

    return grid_root() / f"L{parse_name(f'demo:{name}').layer}" / name


def train_layer(layer: int, config: GridConfig) -> list[Path]:
    """Train (or finish) one layer's SAEs; returns their folders. A layer already done is skipped."""
    from .train import latest_checkpoint
    from .train import main as train_main

    names = layer_names(layer, config)
    run = grid_root() / f"L{layer}"
    folders = [run / n for n in names]
    if all((f / "cfg.json").is_file() for f in folders):
        return folders
    argv = [f"--sae={n}" for n in names] + [
        "--tokens", str(config.train_tokens), "--distinct-tokens", str(config.distinct_tokens),
        "--batch-size", str(config.batch_size), "--b-dec-init", "mean", "--seed", str(config.seed),
        "--threshold-tokens", str(min(32_768, config.distinct_tokens)), "--cache", "--out", str(run),
        *config.extra_train_args,
    ]
    if latest_checkpoint(run) is not None:
        argv.append("--resume")
    train_main(argv)
    return folders


def train_anneal_runs(config: GridConfig) -> pd.DataFrame:
    """Fig. 12: L15R-8x trained with and without K-annealing from one stream; their logs, long."""
    from .activations import ActivationStream
    from .train import SAESpec, TrainConfig, latest_checkpoint, read_log, train

    run = grid_root() / "anneal"
    hook = "blocks.15.hook_resid_post"
    specs = [SAESpec(name=name, hook_in=hook, expansion=8, k_anneal=anneal) for name, anneal in
             (("k-anneal", True), ("no-anneal", False))]
    if not all((run / s.name / "log.csv").is_file() for s in specs) or latest_checkpoint(run) is None:
        stream = ActivationStream("embedded", source="embedded-train", hooks=[hook], batch_size=config.batch_size,
                                  max_tokens=config.distinct_tokens, buffer_tokens=config.distinct_tokens,
                                  seed=config.seed, cache=True)
        tc = TrainConfig(total_tokens=config.anneal_tokens, batch_size=config.batch_size, b_dec_init="mean",
                         alive_window=config.alive_window, log_every=1, seed=config.seed,
                         checkpoint_every=max(1, config.anneal_tokens // config.batch_size // 10))
        train(stream, specs, tc, out_dir=run, resume=latest_checkpoint(run) is not None)
    frames = []
    for s in specs:
        log = read_log(run / s.name / "log.csv")
        frames.append(log.assign(sae="L15R-8x", run=s.name, alive_window=config.alive_window))
    return pd.concat(frames, ignore_index=True)


def chat_texts(articles: list[dict], tokenizer) -> list[str]:
    """Held-out articles as instruct conversations: the user asks about the title, the assistant answers."""
    return [tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Tell me about {a['title']}."}, {"role": "assistant", "content": a["extract"]}],
        tokenize=False) for a in articles]


def evaluate_grid(config: GridConfig, out: Path) -> dict[str, Path]:
    """The evaluation tables of every trained SAE (see the module docstring)."""
    from .embedded import corpus_articles, load_model
    from .evaluate import evaluate
    from .formats import load

    names = [n for layer in config.layers for n in layer_names(layer, config)]
    saes = {n: load(sae_folder(n)) for n in names}
    topk = {n: s for n, s in saes.items() if not n.endswith("Vanilla")}
    vanilla = {n: s for n, s in saes.items() if n.endswith("Vanilla")}
    resid = {n: s for n, s in saes.items() if s.meta.position == "R"}
    fig4 = {n: s for n, s in topk.items() if s.meta.position == "R" and s.meta.layer in config.vanilla_layers}
    common = dict(tokens=config.eval_tokens, lm_tokens=config.lm_tokens)

    model, tokenizer = load_model()
    label = "HuggingFaceTB/SmolLM2-135M-Instruct"
    runs = [
        # one clean forward for all: the vanilla SAEs (no k) skip the TopK mode
        evaluate(saes, model, tokenizer=tokenizer, model_label=label, modes=("native", "topk"), **common),
        evaluate(resid, model, tokenizer=tokenizer, model_label=label, dataset=chat_texts(corpus_articles("heldout"), tokenizer),
                 dataset_label="embedded-heldout (chat template)", **common),
    ]
    long = evaluate({**fig4, **vanilla}, model, tokenizer=tokenizer, model_label=label,
                    tokens=config.long_tokens, lm_tokens=0, pack=True, context=config.long_context,
                    dataset_label=f"embedded-heldout (packed, {config.long_context})")
    eval_table = pd.concat([r.eval for r in runs], ignore_index=True)
    freq = runs[0].frequencies
    freq = freq[freq["sae"].isin(fig4) & (freq["mode"] == "native")]
    tables = {"eval.csv": eval_table, "frequencies.csv": freq, "positions.csv": long.positions}
    paths = {}
    for name, df in tables.items():
        paths[name] = write_csv(df, out / name)
    return paths


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path


def build(config: GridConfig, out: Path) -> dict[str, Path]:
    """Train every layer of the grid and the Fig. 12 runs (resumable), then write the tables."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    for layer in tqdm(config.layers, desc="grid layers", unit="layer"):
        train_layer(layer, config)
    paths = {"training_log.csv": write_csv(train_anneal_runs(config), out / "training_log.csv")}
    paths.update(evaluate_grid(config, out))
    write_json(out / "grid.json", {**asdict(config), "seconds": round(time.perf_counter() - start)})
    return paths


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SAEError(f"layers must be comma-separated numbers, not {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    d = GridConfig()
    p = argparse.ArgumentParser(prog="python -m sae.grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("figures/data"), help="where the tables go (figures/data)")
    p.add_argument("--layers", type=_layers, default=d.layers, help="layers with R SAEs (3,7,15,23)")
    p.add_argument("--all-position-layers", type=_layers, default=d.all_position_layers,
                   help="of those, layers with A, M and TC SAEs too (3,15)")
    p.add_argument("--vanilla-layers", type=_layers, default=d.vanilla_layers, help="layers with Vanilla R SAEs (7,15,23)")
    p.add_argument("--distinct-tokens", type=int, default=d.distinct_tokens, help="training tokens captured per layer")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs over them")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="tokens per step")
    p.add_argument("--anneal-tokens", type=int, default=d.anneal_tokens, help="training tokens of each Fig. 12 run")
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help="held-out tokens per evaluation")
    p.add_argument("--lm-tokens", type=int, default=d.lm_tokens, help="of those, tokens with delta LM loss")
    p.add_argument("--long-context", type=int, default=d.long_context, help="row length of the Fig. 5 evaluation")
    p.add_argument("--long-tokens", type=int, default=d.long_tokens, help="tokens of the Fig. 5 evaluation")
    args = p.parse_args(argv)
    bad = [v for v in (*args.layers, *args.all_position_layers, *args.vanilla_layers) if not 0 <= v < 30]
    if bad:
        raise SAEError(f"layer {bad[0]} is out of range: the embedded model has layers 0-29")
    config = GridConfig(**{k: getattr(args, k) for k in ("layers", "all_position_layers", "vanilla_layers",
                                                         "distinct_tokens", "epochs",
                                                         "batch_size", "anneal_tokens", "eval_tokens", "lm_tokens",
                                                         "long_context", "long_tokens")})
    config.vanilla_layers = tuple(v for v in config.vanilla_layers if v in config.layers)
    config.all_position_layers = tuple(v for v in config.all_position_layers if v in config.layers)
    paths = build(config, args.out)
    print("tables:\n" + "\n".join(f"  {p}" for p in paths.values()))
    return 0


if __name__ == "__main__":
    run_cli(main)
