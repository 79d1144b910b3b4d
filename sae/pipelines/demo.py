"""`make demo`: the embedded default end to end on a CPU, on the whole corpus.

Fetches SmolLM2-135M-Instruct and the Wikipedia summaries (first run only), captures layer 15's residual
stream on the whole train split once (documents packed into rows of 256 tokens, massive activations left
out, disk cache), trains `demo:L15R-8x`, `demo:L15R-32x` (TopK, k = 50) and `demo:L15R-8x-Vanilla`
(ReLU + L1) on it for `--epochs` passes, post-processes the TopK SAEs to JumpReLU (per-feature
thresholds by default) and writes the suite to `$SAE_CACHE/demo/`, then evaluates it on the whole
held-out split in JumpReLU and TopK inference into `--out` (eval.csv, frequencies.csv and one
frequencies_<SAE>.csv per SAE). `make demo` then compares the two widths with `geometry.compare`
(features that never fired on the held-out split left out as dead) and draws the threats neighbourhood
(`geometry.neighborhood`).

`--ladder` also trains `demo:L15R-16x` and `demo:L15R-8x-s1` (8x with seed + 1) from the same captured
split with the same recipe, so the suite holds 8x, 16x and 32x at one seed and two 8x seeds, and
evaluates them into `--out`/eval-ladder (`make ladder` then compares them). Each trains in
`<suite>/.ladder/<name>/` (resumable) and moves into the suite when done; `<suite>/ladder.json` records
the settings each was built with.

A second run finds the suite built with the same settings and, in the same `--out`, its evaluation,
and only prints the table; other settings train anew, an interrupted build resumes. Every setting is
a flag below and an environment variable DEMO_<NAME> (e.g. DEMO_EPOCHS=1 make demo).

    from sae.pipelines.demo import DemoSettings, build_suite, evaluate_suite
    root = build_suite(DemoSettings(epochs=1))
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from sae.cli import add_arguments, check_options, from_arguments, option
from sae.data.stream import ActivationStream
from sae.eval.evaluate import evaluate
from sae.formats import save
from sae.formats.names import SUITES, parse_name
from sae.formats.tensors import read_json
from sae.io import atomic_path, cache_dir, check_writable, write_json
from sae.lm.embedded import MODEL_NAME
from sae.pipelines.staging import commit, prepare
from sae.train import DEFAULT_L1, SAESpec, TrainConfig, first_tokens, train
from sae.train.postprocess import CALIBRATIONS, fold_and_normalise, postprocess_to

SUITE = ("L15R-8x", "L15R-32x", "L15R-8x-Vanilla")
LADDER = ("L15R-16x", "L15R-8x-s1")
HOOK = "blocks.15.hook_resid_post"
WHOLE_SPLIT = 2_000_000  # more than the train split holds: "all of it" (and one shuffle buffer for it all)
COLUMNS = ["sae", "mode", "n_features", "tokens", "massive_tokens", "l0", "explained_variance_centred",
           "explained_variance_uncentred", "delta_lm_loss", "ce_loss_recovered", "never_fired_fraction",
           "dense_fraction"]


@dataclass
class DemoSettings:
    """What the demo trains and evaluates (docs/demo.md shows the ablation behind each value)."""

    epochs: float = option(2.0, "passes over the captured train split", above=0, max=1000)
    distinct_tokens: int = option(WHOLE_SPLIT, "train-split tokens to capture (default: all of them)", min=1, max=WHOLE_SPLIT)
    batch_size: int = option(1024, "tokens per step", min=1, max=2**24)
    lr: float = option(2e-3, "Adam learning rate (paper: 8e-4 over 10^4+ steps)", above=0, max=1)
    aux_k: int = option(512, "AuxK dead-feature loss (Gao et al.) with this k; 0 = off", min=0)
    dead_tokens: int = option(50_000, "AuxK: a feature silent this many tokens counts as dead", min=1)
    aux_coef: float = option(1 / 8, "AuxK weight (Gao et al.: 1/32; 1/8 revives most silent 32x features here)",
                             min=0)
    l1: float = option(DEFAULT_L1, "L1 coefficient of the vanilla SAE (chosen for L0 ~150: docs/training.md)", min=0)
    context: int = option(256, "tokens per packed training row (the summaries average ~100 tokens)", min=2)
    calibration: str = option("per-feature", "JumpReLU thresholds of the saved TopK SAEs", choices=CALIBRATIONS)
    threshold_tokens: int = option(32_768, "calibration tokens for the JumpReLU thresholds", min=1)
    seed: int = option(0, "seed of initialisation and shuffling")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class EvalSettings:
    eval_tokens: int = option(200_000, "held-out tokens to evaluate (the split holds ~100,000: all of them)", min=1)
    lm_tokens: int = option(20_000, "of those, tokens that also get delta LM loss / KL / CE recovered", min=0)

    def __post_init__(self) -> None:
        check_options(self)


def training_stream(settings: DemoSettings, hooks: Sequence[str] = (HOOK,)) -> ActivationStream:
    """The sites `hooks` on the train split, packed, cached. The shuffle buffer holds up to 2M tokens of
    one site (the whole split), and proportionally fewer per site when there are several (memory)."""
    buffer = min(settings.distinct_tokens, WHOLE_SPLIT // len(hooks))
    return ActivationStream("embedded", source="embedded-train", hooks=list(hooks), batch_size=settings.batch_size,
                            max_tokens=settings.distinct_tokens, buffer_tokens=buffer,
                            context=settings.context, pack=True, seed=settings.seed, cache=True)


def suite_spec(name: str, *, label: str | None = None, k: int = 50, l1: float | None = None) -> SAESpec:
    """The spec of a paper-named SAE of the embedded model (`L15R-8x`, `L3TC-8x`, `L7R-8x-Vanilla`),
    saved as `label` (default: the name); l1 None = the run's coefficient (vanilla only)."""
    site = parse_name(f"demo:{name}")
    hook_in, hook_out = site.hooks
    width = SUITES["demo"].d_model
    return SAESpec(name=label or name, hook_in=hook_in, hook_out=None if hook_out == hook_in else hook_out,
                   expansion=site.expansion, d_in=width,
                   d_out=width, activation="relu" if site.variant == "Vanilla" else "topk", k=k, l1_coefficient=l1,
                   meta={"model": MODEL_NAME, "layer": site.layer, "position": site.position})


def suite_specs(settings: DemoSettings) -> list[SAESpec]:
    return [suite_spec(name) for name in SUITE]


def train_config(settings: DemoSettings, split_tokens: int) -> TrainConfig:
    total = int(settings.epochs * split_tokens) // settings.batch_size * settings.batch_size
    steps = max(total // settings.batch_size, 1)
    return TrainConfig(total_tokens=max(total, settings.batch_size), batch_size=settings.batch_size, lr=settings.lr,
                       b_dec_init="mean", aux_k=settings.aux_k, aux_coef=settings.aux_coef, dead_tokens=settings.dead_tokens,
                       l1_coefficient=settings.l1,
                       seed=settings.seed, checkpoint_every=max(1, steps // 4))  # ~1.5 s per checkpoint of all three


def build_suite(settings: DemoSettings, *, rebuild: bool = False) -> Path:
    """Train and post-process the demo suite unless the cache holds it with these settings; its folder.
    A suite built with other settings stays in place until the new one is complete (sae.pipelines.staging)."""
    root = cache_dir("demo")
    build = prepare(root, asdict(settings), SUITE, rebuild=rebuild)
    if build.done:
        print(f"demo suite already built in {root} with these settings (--rebuild to retrain)")
        return root
    if build.staged:
        print(f"the demo suite in {root} was built with other settings; it stays there until the new one, "
              f"trained in {build.folder}, is complete")
    stream = training_stream(settings)
    split_tokens = stream.n_tokens()  # captures the split on first use
    print(f"train split: {split_tokens:,} tokens at {HOOK} ({stream.massive_tokens} massive positions left out)")
    train_suite(stream, suite_specs(settings), settings, build.folder, resume=build.resume)
    commit(build, SUITE)
    return root


def train_suite(stream: ActivationStream, specs: list[SAESpec], settings: DemoSettings, root: Path, *,
                resume: bool = False) -> list[Path]:
    """Train `specs` on `stream` with the demo's recipe into `root`, then save each SAE in root/<name>:
    TopK ones post-processed to JumpReLU (`settings.calibration`), vanilla ones folded to raw units."""
    result = train(stream, specs, train_config(settings, stream.n_tokens()), out_dir=root, resume=resume)
    print(f"trained {', '.join(result.saes)}: {result.steps} steps at {result.tokens_per_second:,.0f} tokens/s")
    hooks = list(dict.fromkeys(h for s in specs for h in (s.hook_in, s.out_hook)))
    calib = first_tokens(stream, hooks, settings.threshold_tokens)
    for name, sae in result.saes.items():
        if sae.activation != "topk":
            save(fold_and_normalise(sae), root / name)
            continue
        res = postprocess_to(sae, calib, root / name, n_tokens=settings.threshold_tokens,
                             calibration=settings.calibration)
        print(f"{name}:\n" + res.report.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return [root / s.name for s in specs]


def build_ladder(root: Path, settings: DemoSettings, *, rebuild: bool = False) -> list[Path]:
    """Train the LADDER members missing from the suite folder `root` or built with other settings; their
    folders. A member named -s<N> trains with settings.seed + N (initialisation and data order)."""
    marker = root / "ladder.json"
    built = read_json(marker) if marker.is_file() else {}
    wanted = asdict(settings)
    for name in LADDER:
        if not rebuild and built.get(name) == wanted and (root / name / "cfg.json").is_file():
            print(f"demo:{name} already built with these settings")
            continue
        member = replace(settings, seed=settings.seed + parse_name(f"demo:{name}").seed)
        build = prepare(root / ".ladder" / name, asdict(member), [name], rebuild=rebuild)
        if not build.done:
            train_suite(training_stream(member), [suite_spec(name)], member, build.folder, resume=build.resume)
        if (root / name).exists():
            shutil.rmtree(root / name)
        os.replace(build.folder / name, root / name)  # a kill right after: the next run re-saves it from its checkpoint
        built[name] = wanted
        write_json(marker, built)
    shutil.rmtree(root / ".ladder", ignore_errors=True)
    return [root / name for name in LADDER]


def evaluate_suite(root: Path, out: Path, settings: EvalSettings, names: Sequence[str] = SUITE
                   ) -> tuple[pd.DataFrame, list[Path]]:
    """Evaluate the SAEs `names` of the suite into `out`, unless `out` already holds their evaluation on
    this budget."""
    stamp = {"suite": {name: (root / name / "sae_weights.safetensors").stat().st_mtime_ns for name in names},
             **asdict(settings)}
    marker, table_path = out / "demo.json", out / "eval.csv"
    if marker.is_file() and table_path.is_file() and read_json(marker) == stamp:
        print(f"the evaluation of this suite on this budget is already in {out}")
        return pd.read_csv(table_path), [table_path]
    result = evaluate({name: f"demo:{name}" for name in names}, tokens=settings.eval_tokens, modes=("native", "topk"),
                      lm_tokens=min(settings.lm_tokens, settings.eval_tokens), progress=True)
    paths = list(result.write(out).values())
    freq = result.frequencies[result.frequencies["mode"] == "native"]
    for name, rows in freq.groupby("sae"):  # one file per SAE, for geometry.compare --freq-a/--freq-b
        path = out / f"frequencies_{name}.csv"
        with atomic_path(path) as tmp:
            rows[["feature", "frequency"]].to_csv(tmp, index=False)
        paths.append(path)
    write_json(marker, stamp)
    return result.eval, paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sae.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p.add_argument_group("training"), DemoSettings, env_prefix="DEMO_")
    add_arguments(p.add_argument_group("evaluation"), EvalSettings, env_prefix="DEMO_")
    p.add_argument("--rebuild", action="store_true", default=os.environ.get("DEMO_REBUILD", "") not in ("", "0"),
                   help="retrain the suite even if the cache holds it (env DEMO_REBUILD=1)")
    p.add_argument("--ladder", action="store_true", default=os.environ.get("DEMO_LADDER", "") not in ("", "0"),
                   help=f"also train and evaluate {' and '.join(LADDER)} (env DEMO_LADDER=1)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where the evaluation tables go")
    args = p.parse_args(argv)
    settings, eval_settings = from_arguments(DemoSettings, args), from_arguments(EvalSettings, args)
    check_writable(args.out)
    start = time.perf_counter()
    root = build_suite(settings, rebuild=args.rebuild)
    table, paths = evaluate_suite(root, args.out / "eval", eval_settings)
    if args.ladder:
        build_ladder(root, settings, rebuild=args.rebuild)
        ladder_table, ladder_paths = evaluate_suite(root, args.out / "eval-ladder", eval_settings, LADDER)
        table, paths = pd.concat([table, ladder_table], ignore_index=True), paths + ladder_paths
    print("\n" + table[COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nsuite: {root}\ntables: {', '.join(str(p) for p in paths)}\n({time.perf_counter() - start:.0f} s)")
    return 0
