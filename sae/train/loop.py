"""`train()`: one activation source, one or more SAEs, the model (if any) run once for all of them.

The loop: for every batch, each SAE's `SAETrainer.step` on its sites (scaled to the normalised space),
a log row every `log_every` steps, a checkpoint every `checkpoint_every` and at the end. Under
torchrun (`sae.train.parallel`, `--tp`) the same loop runs on each process with a `Sharding` that does
the collectives: data-parallel activations, SAE features split over a tensor-parallel group, the
gradients averaged over data-parallel replicas; in one process every collective is the identity.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae.errors import SAEError
from sae.formats import save
from sae.formats.tensors import read_json
from sae.io import write_json
from sae.model import SparseAutoencoder
from sae.train.checkpoint import check_resume, latest_checkpoint, load_checkpoint, save_checkpoint
from sae.train.config import SAESpec, TrainConfig, TrainingError, validate
from sae.train.initialise import init_sae
from sae.train.log import LogWriter, read_log
from sae.train.parallel import Sharding
from sae.train.source import DataSource
from sae.train.step import SAETrainer


@dataclass
class TrainResult:
    saes: dict[str, SparseAutoencoder]  # trained, in the normalised space (meta says the scales)
    logs: dict[str, Any]  # name -> pandas DataFrame of the log
    out_dir: Path | None
    steps: int
    tokens: int
    seconds: float
    finished_before: bool = False  # resumed from the run's final checkpoint: nothing was trained or rewritten

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def train(
    source: Any,
    specs: SAESpec | list[SAESpec] | None = None,
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    sharding: Sharding | None = None,
) -> TrainResult:
    """Train one or more SAEs from one activation source; the model (if any) runs once for all.

    source: a tensor [N, d], a dict hook -> [N, d], SyntheticData, or an iterable of tensors / dicts
    (e.g. the activation stream). specs: what to train (default: one TopK SAE on hook "x").
    out_dir: where checkpoints, logs, configs and the trained SAEs go (None: keep in memory only).
    resume: continue from out_dir's latest checkpoint (a run without one starts fresh).
    stop_after: end after this many steps of this call (tests; the schedule still spans the whole run).
    sharding: `sae.train.parallel.setup(tp)` under torchrun (default: one process). Every rank calls train()
    with the same arguments; rank 0 writes the files and shows progress, every rank gets the whole
    trained SAEs back (`logs` only on rank 0). `batch_size` is the global batch over all ranks.
    """
    config = config or TrainConfig()
    specs = [SAESpec()] if specs is None else ([specs] if isinstance(specs, SAESpec) else list(specs))
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        out = Path(out_dir) if out_dir is not None else None
        return _train(source, specs, config, out, resume, progress, stop_after, sharding or Sharding())
    finally:
        torch.set_num_threads(threads)


def _train(source: Any, specs: list[SAESpec], config: TrainConfig, out: Path | None, resume: bool, progress: bool,
           stop_after: int | None, sh: Sharding) -> TrainResult:
    data = DataSource(source, config.batch_size, seed=config.seed, sharding=sh)
    validate(specs, config, None)
    dims = data.dims()
    validate(specs, config, dims)
    sh.validate({s.name: s.n_features or s.expansion * dims[s.hook_in] for s in specs}, config.batch_size)
    ckpt = _checkpoint_to_resume(out, resume, sh)
    # the normalisation factors come from the checkpoint when resuming, so the data is not read twice
    state: dict[str, Any] | None = read_json(ckpt / "state.json") if ckpt is not None else None
    fingerprint = data.fingerprint()
    if state is not None:
        check_resume(state, specs, config, ckpt, sh, data.per_rank, fingerprint)
        norms = {h: float(v) for h, v in state["mean_norms"].items()}
    elif config.normalize:
        norms = data.mean_norms({h for s in specs for h in (s.hook_in, s.out_hook)}, config.norm_tokens)
    else:
        norms = {}
    jobs = _trainers(specs, config, dims, norms, sh)
    start_step = 0
    if state is not None:
        load_checkpoint(ckpt, jobs)
        start_step = int(state["step"])
    elif config.b_dec_init == "mean":
        _b_dec_at_mean(jobs, data, config, sh)
    run_meta = {"config": asdict(config), "specs": [asdict(s) for s in specs], "mean_norms": norms, "data": fingerprint,
                "layout": {**sh.layout(), "per_rank_data": data.per_rank}}
    T, B = config.steps, config.batch_size
    finished_before = start_step >= T  # resumed from the final checkpoint: train, log and rewrite nothing
    logging = out is not None and sh.is_main and not finished_before
    writers = _open_logs(out, jobs, config, norms, start_step) if logging else {}

    end_step = T if stop_after is None else min(T, start_step + stop_after)
    hooks = list(dict.fromkeys(h for s in specs for h in (s.hook_in, s.out_hook)))
    bar = tqdm(total=T * B, initial=start_step * B, unit="tok", unit_scale=True, disable=not (progress and sh.is_main),
               dynamic_ncols=True, desc="train")
    t0 = time.perf_counter()
    step = start_step
    try:
        batches = data.batches(start_step)
        while step < end_step:
            try:
                batch = next(batches)
            except StopIteration:
                raise SAEError(f"the activation source ran out after {step * B} tokens; {T * B} were asked for") from None
            batch = sh.gather_rows({h: batch[h].to(config.device, torch.float32) for h in hooks})
            for job in jobs:
                x = batch[job.spec.hook_in] * job.scale_in
                y = batch[job.spec.out_hook] * job.scale_out if job.spec.transcoder else x
                job.accumulate(job.step(x, y, step, step * B))
            step += 1
            bar.update(B)
            if step % config.log_every == 0 or step == end_step:
                bar.set_postfix_str(_log_rows(jobs, writers, step, B, time.perf_counter() - t0), refresh=False)
            if out is not None and ((config.checkpoint_every and step % config.checkpoint_every == 0) or step == end_step):
                save_checkpoint(out / "checkpoint", step, step * B, jobs, run_meta, sh)
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    seconds = time.perf_counter() - t0

    saes = {job.spec.name: _trained_sae(job, config, step, sh) for job in jobs}
    if out is not None and step == T and sh.is_main:
        for name, sae in saes.items():
            if not (finished_before and (out / name / "trained" / "cfg.json").is_file()):
                save(sae, out / name / "trained")
    logs = {name: read_log(out / name) for name in saes} if out is not None and sh.is_main else {}
    sh.barrier()  # the run folder is complete for every rank that returns
    return TrainResult(saes, logs, out, step, (step - start_step) * B, seconds, finished_before)


def _checkpoint_to_resume(out: Path | None, resume: bool, sh: Sharding) -> Path | None:
    """The run folder's latest checkpoint when resuming; refuse to overwrite a run without --resume."""
    ckpt = latest_checkpoint(out) if out is not None else None
    if not sh.same_everywhere(int(ckpt.name.split("-")[-1]) if ckpt else -1):
        raise TrainingError(f"the processes see different checkpoints in {out}: put the run folder on a filesystem every node shares")
    if ckpt is None and resume and out is not None and sh.is_main:
        print(f"nothing to resume in {out} (no checkpoint): starting a new run", file=sys.stderr)
    if ckpt is not None and not resume:
        raise TrainingError(f"{out} already holds a run (checkpoint {ckpt.name}); pass resume=True / --resume, or another --out")
    return ckpt


def _trainers(specs: list[SAESpec], config: TrainConfig, dims: dict[str, int], norms: dict[str, float],
              sh: Sharding) -> list[SAETrainer]:
    """A freshly initialised SAE and its trainer per spec (this rank's features of it)."""

    def scale(hook: str) -> float:  # to the normalised space: average norm sqrt(d)
        return math.sqrt(dims[hook]) / norms[hook] if config.normalize else 1.0

    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    jobs = []
    for s in specs:
        sae = init_sae(s, dims[s.hook_in], dims[s.out_hook], config, g)
        sae.meta.dataset_norm_in = norms.get(s.hook_in)
        sae.meta.dataset_norm_out = norms.get(s.out_hook)
        jobs.append(SAETrainer(s, sh.local_sae(sae), config, scale(s.hook_in), scale(s.out_hook), sh))
    return jobs


@torch.no_grad()
def _b_dec_at_mean(jobs: list[SAETrainer], data: DataSource, config: TrainConfig, sh: Sharding) -> None:
    """b_dec_init "mean": the decoder bias starts at the first batch's mean target (normalised)."""
    first = data.first_batch()
    for job in jobs:
        mean = first[job.spec.out_hook].float().mean(0)
        if data.per_rank:  # this rank's first batch: the mean over all ranks' first batches
            mean = sh.rank_mean(mean)
        job.sae.b_dec.copy_(mean.to(config.device) * job.scale_out)


def _open_logs(out: Path, jobs: list[SAETrainer], config: TrainConfig, norms: dict[str, float],
               start_step: int) -> dict[str, LogWriter]:
    """RUN/NAME/config.json and the log writer of every SAE."""
    writers = {}
    for job in jobs:
        folder = out / job.spec.name
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "config.json", {"config": asdict(config), "spec": asdict(job.spec), "mean_norms": norms,
                                            "scale_in": job.scale_in, "scale_out": job.scale_out})
        writers[job.spec.name] = LogWriter(folder / "log.csv", start_step)
    return writers


def _log_rows(jobs: list[SAETrainer], writers: dict[str, LogWriter], step: int, batch_size: int,
              elapsed: float) -> str:
    """Write every SAE's means since the last row; returns the progress bar's postfix."""
    rows = {}
    for job in jobs:
        row = job.flush()
        row.update(step=step, tokens=step * batch_size, alive=job.alive_fraction(step * batch_size), elapsed_s=elapsed)
        if job.spec.name in writers:
            writers[job.spec.name].write(row)
        rows[job.spec.name] = row
    return _postfix(rows)


def _postfix(rows: dict[str, dict[str, float]]) -> str:
    parts = []
    for name, r in rows.items():
        head = f"{name}: " if len(rows) > 1 else ""
        k = f" k={int(r['k'])}" if r.get("k") else ""
        parts.append(f"{head}mse={r['mse']:.4f} ev={r['ev']:.3f} l0={r['l0']:.1f}{k} alive={r['alive']:.2f}")
    return " | ".join(parts)


def _trained_sae(job: SAETrainer, config: TrainConfig, steps: int, sh: Sharding) -> SparseAutoencoder:
    """The whole trained SAE (on every rank) in the usual layout, its provenance filled in."""
    job.sae.W_enc.data = job.sae.W_enc.data.contiguous()  # training is over: W_enc back to [d, F] in memory
    sae = sh.full_sae(job.sae, job.spec.k if job.sae.activation == "topk" else job.sae.k)
    sae.meta.provenance = {
        "trained_by": "sae.train",
        "space": "normalised" if config.normalize else "raw",
        "scale_in": job.scale_in,
        "scale_out": job.scale_out,
        "steps": steps,
        "tokens": steps * config.batch_size,
        "config": asdict(config),
        "spec": asdict(job.spec),
    }
    if sh.world > 1:
        sae.meta.provenance["layout"] = sh.layout()
    return sae
