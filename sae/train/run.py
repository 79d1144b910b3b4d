"""A whole run as `python -m sae.train` does it: train every SAE from one activation source (under
torchrun, every process reading its own shard of the corpus), then fold, unit-normalise and convert
the TopK ones to JumpReLU (`sae.train.postprocess`) from one more read of N tokens."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae.cli import check_options, option, parse_count
from sae.formats import save
from sae.io import check_writable
from sae.lm.sites import parse_site
from sae.model import SparseAutoencoder
from sae.train.config import SAESpec, TrainConfig, validate
from sae.train.data_options import DataOptions, open_source
from sae.train.loop import TrainResult, train
from sae.train.parallel import Sharding, setup
from sae.train.postprocess import CALIBRATIONS, DEFAULT_TOKENS, PostprocessResult, fold_and_normalise, postprocess_to
from sae.train.source import first_tokens


@dataclass
class RunOptions:
    """Where the run goes and what happens around training (the flags of the command only)."""

    out: Path = option(MISSING, "run folder: RUN/NAME/{config.json,log.csv,trained/,...}", parse=Path, group="train")
    resume: bool = option(False, "continue from RUN/checkpoint (after a kill or a crash)", switch=True, group="train")
    tp: int = option(1, "under torchrun: split each SAE's features over groups of this many processes (tensor "
                     "parallel); the data-parallel size is processes / tp. 1: every process holds the whole SAE", min=1)
    distinct_tokens: int | None = option(None, "train in epochs over the first N tokens of the corpus (reshuffled each "
                                         "epoch; with --cache the model runs only for the first); default: every "
                                         "training token is new", parse=parse_count, min=1)
    postprocess: bool = option(True, "skip folding + unit norms + JumpReLU at the end", switch=True)
    threshold_tokens: int = option(DEFAULT_TOKENS, "N for the JumpReLU threshold", min=1)
    threshold_calibration: str = option("global", "JumpReLU thresholds: global (one, mean L0 = k: the paper) or "
                                        "per-feature (each feature's TopK firing rate); see python -m sae.postprocess",
                                        choices=CALIBRATIONS)
    quiet: bool = option(False, "no progress bar", switch=True)

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class RunResult:
    trained: TrainResult  # the SAEs in the normalised space, as training left them
    folders: dict[str, Path] = field(default_factory=dict)  # name -> the final SAE's folder (RUN/NAME)
    postprocessed: dict[str, PostprocessResult] = field(default_factory=dict)  # the TopK SAEs' JumpReLU reports
    folded: dict[str, SparseAutoencoder] = field(default_factory=dict)  # vanilla SAEs, raw units, unit decoder rows
    layout: str | None = None  # several processes: Sharding.describe()
    main_process: bool = True  # rank 0: the one that post-processed and wrote the files


def train_and_postprocess(specs: list[SAESpec], config: TrainConfig, data: DataOptions, run: RunOptions) -> RunResult:
    """Train `specs` on the activations `data` describes into `run.out`, then (unless `run.postprocess`
    is off) post-process on rank 0: TopK SAEs to JumpReLU, vanilla ones folded to raw units, each
    written to RUN/NAME. Bad requests fail before the model loads. Under torchrun every process calls
    this; only rank 0's result holds the post-processed SAEs."""
    validate(specs, config, None)  # k, options: before the model is loaded
    check_writable(run.out)
    sh = setup(run.tp, device=data.device)  # one process without torchrun
    try:
        sh.validate({s.name: s.n_features or s.expansion * s.d_in for s in specs if s.n_features or s.d_in},
                    config.batch_size)
        if sh.device is not None:  # under torchrun, each process has its own GPU
            config.device = str(sh.device)
        source, trained = _train(specs, config, data, run, sh)
        result = RunResult(trained, layout=sh.describe() if sh.world > 1 else None, main_process=sh.is_main)
        finals = {name: run.out / name for name in trained.saes}
        if trained.finished_before and all((f / "cfg.json").is_file() for f in finals.values()):
            result.folders = finals  # a resume of a finished run changes nothing
        elif sh.is_main and run.postprocess:
            _postprocess(result, data, run, source)
        return result
    finally:
        sh.close()


def _train(specs: list[SAESpec], config: TrainConfig, data: DataOptions, run: RunOptions,
           sh: Sharding) -> tuple[Any, TrainResult]:
    """The training source (every process its own shard of the corpus) and the trained SAEs."""
    if not sh.is_main:  # one set of progress bars: rank 0's
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    hooks = list(dict.fromkeys(h for s in specs for h in (s.hook_in, s.out_hook)))
    distinct = run.distinct_tokens // sh.world if run.distinct_tokens else None
    source = open_source(data, hooks, batch_size=config.batch_size // sh.world, max_tokens=distinct, seed=data.seed,
                         shard=(sh.rank, sh.world), progress=not run.quiet)
    if hasattr(source, "hooks"):  # the stream canonicalises short site names (L15R -> blocks.15.hook_resid_post)
        for s in specs:
            s.hook_in = parse_site(s.hook_in).hook
            s.hook_out = parse_site(s.hook_out).hook if s.hook_out else None
    trained = train(source, specs, config, out_dir=run.out, resume=run.resume, progress=not run.quiet, sharding=sh)
    return source, trained


def _postprocess(result: RunResult, data: DataOptions, run: RunOptions, source: Any) -> None:
    """Fold / convert every trained SAE into RUN/NAME; one read of N tokens serves every TopK SAE."""
    saes = result.trained.saes
    topk = {name: sae for name, sae in saes.items() if sae.activation == "topk"}
    acts: dict[str, torch.Tensor] = {}
    if topk:
        need = list(dict.fromkeys(h for sae in topk.values() for h in (sae.meta.hook_in, sae.meta.hook_out)))
        src = open_source(data, need, batch_size=4096, max_tokens=run.threshold_tokens, seed=data.seed + 1,
                          reuse=source, progress=not run.quiet)
        acts = first_tokens(src, need, run.threshold_tokens)
    for name, sae in saes.items():
        folder = result.folders[name] = run.out / name
        if name in topk:
            result.postprocessed[name] = postprocess_to(sae, acts, folder, n_tokens=run.threshold_tokens,
                                                        calibration=run.threshold_calibration)
        else:
            result.folded[name] = fold_and_normalise(sae)
            save(result.folded[name], folder)
