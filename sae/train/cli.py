"""`python -m sae.train`: parse the flags (generated from `SAESpec`, `TrainConfig`, `RunOptions` and
`DataOptions`), call `train_and_postprocess`, print what it did."""

from __future__ import annotations

import argparse
from dataclasses import replace

from sae.cli import add_arguments, from_arguments
from sae.errors import SAEError
from sae.formats.names import SUITES, looks_like_name, parse_name
from sae.lm.embedded import MODEL_NAME
from sae.train.config import SAESpec, TrainConfig
from sae.train.data_options import DataOptions
from sae.train.run import RunOptions, RunResult, train_and_postprocess


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sae.train",
        description="Train TopK (Llama Scope recipe) and vanilla SAEs and transcoders from one activation stream, "
        "with checkpoints, resume, logs, and JumpReLU post-processing. Example: python -m sae.train "
        "--sae L15R-8x --sae L15R-32x --tokens 2M --out runs/l15",
    )
    groups = {"train": p.add_argument_group("what to train"),
              "recipe": p.add_argument_group("recipe (defaults: the Llama Scope paper)"),
              "run": p.add_argument_group("run")}
    w = groups["train"]
    w.add_argument("--sae", action="append", default=[], metavar="NAME",
                   help="repeatable. Paper names (L15R-8x, L15A-32x, L15M-8x, L15TC-8x, L15R-8x-Vanilla) or "
                   "NAME=HOOK_IN[->HOOK_OUT] for any site (HOOK_OUT makes a transcoder)")
    w.add_argument("--hooks", default="", help="comma-separated hooks (blocks.15.hook_resid_post or L15R); one SAE each")
    add_arguments(w, SAESpec, groups=groups)
    d = TrainConfig()
    groups["recipe"].add_argument("--betas", default=f"{d.beta1},{d.beta2}",
                                  help="Adam betas (default %(default)s; released code 0.9,0.9999)")
    add_arguments(groups["recipe"], TrainConfig, groups=groups)
    add_arguments(groups["run"], RunOptions, groups=groups)
    add_arguments(p.add_argument_group("activations"), DataOptions)
    return p


def spec_from_arg(text: str, template: SAESpec, data: DataOptions) -> SAESpec:
    """`L15R-8x`, `L15TC-32x`, `L15R-8x-Vanilla` (the paper's names: sites and width from the name),
    or `NAME=HOOK_IN[->HOOK_OUT]` for any site (width from --expansion / --n-features); `template` holds
    the flags' k, annealing, width and activation."""

    def spec(**fields) -> SAESpec:
        return replace(template, **{"meta": {}, **fields})  # a dict of its own for every spec

    if "=" in text:
        name, _, hooks = text.partition("=")
        hook_in, _, hook_out = hooks.partition("->")
        return spec(name=name.strip(), hook_in=hook_in.strip(), hook_out=hook_out.strip() or None)
    if not looks_like_name(text):
        return spec(name=text, hook_in=text)
    suite = "demo" if data.model == "embedded" and data.activations is None else "llama-scope"
    name = parse_name(text if ":" in text else f"{suite}:{text}")
    hook_in, hook_out = name.hooks
    widths = {}
    if suite == "demo":  # the width is known before the model loads, so bad k / widths fail at once
        widths = {"d_in": SUITES["demo"].d_model, "d_out": SUITES["demo"].d_model}
    return spec(
        name=str(name), hook_in=hook_in, hook_out=hook_out, expansion=name.expansion,
        activation="relu" if name.variant == "Vanilla" else template.activation, **widths,
        meta={"model": MODEL_NAME if data.model == "embedded" else data.model, "layer": name.layer,
              "position": name.position},
    )


def config_from_arguments(args: argparse.Namespace, data: DataOptions) -> TrainConfig:
    """The TrainConfig of the flags; --checkpoint-every 0 means about every 5% of the run here."""
    try:
        b1, b2 = (float(b) for b in args.betas.split(","))
    except ValueError:
        raise SAEError(f"--betas wants two numbers, e.g. 0.9,0.999, not {args.betas!r}") from None
    config = from_arguments(TrainConfig, args, beta1=b1, beta2=b2, seed=data.seed, device=data.device)
    config.checkpoint_every = config.checkpoint_every or max(1, (config.total_tokens // config.batch_size) // 20)
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = from_arguments(DataOptions, args)
    sae_args = list(args.sae) + [h for h in (s.strip() for s in args.hooks.split(",")) if h]
    if not sae_args:
        raise SAEError("say what to train: --sae L15R-8x (repeatable) or --hooks blocks.15.hook_resid_post")
    template = from_arguments(SAESpec, args)
    specs = [spec_from_arg(a, template, data) for a in sae_args]
    config = config_from_arguments(args, data)
    run = from_arguments(RunOptions, args)
    result = train_and_postprocess(specs, config, data, run)
    if result.main_process:
        print(summary(result, config, run))
    return 0


def summary(result: RunResult, config: TrainConfig, run: RunOptions) -> str:
    """What the command prints: the training throughput, then what became of every SAE."""
    t = result.trained
    if t.finished_before:
        return (f"{run.out} holds a finished run ({t.steps} of {t.steps} steps); nothing was trained or changed. "
                f"Its SAEs: {', '.join(str(f) for f in result.folders.values())}")
    layout = f" ({result.layout})" if result.layout else ""
    lines = [f"trained {', '.join(t.saes)}: {t.steps} steps, {t.steps * config.batch_size:,} tokens, "
             f"{t.tokens_per_second:,.0f} tokens/s{layout}; run folder {run.out}"]
    for name in t.saes:
        if name in result.folded:
            lines.append(f"{name}: vanilla SAE folded to raw units with unit decoder norms -> {result.folders[name]}")
        elif name in result.postprocessed:
            res = result.postprocessed[name]
            lines.append(f"{name}: {res.calibration} JumpReLU thresholds over {res.n_tokens} tokens -> "
                         f"{result.folders[name]}")
            lines.append(res.report.to_string(index=False))
    return "\n".join(lines)


__all__ = ["build_parser", "config_from_arguments", "main", "spec_from_arg", "summary"]
