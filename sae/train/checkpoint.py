"""Checkpoints: safetensors + JSON (no pickles) holding the SAEs, Adam's moments, the firing history,
the step, k, the RNG and the data position, so a run killed at any moment resumes to the same final
weights. Sharded runs write the same files as one process: a checkpoint resumes under any layout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sae.formats.tensors import read_json, read_tensors, write_tensors
from sae.io import write_json
from sae.train.config import SAESpec, TrainConfig, TrainingError
from sae.train.parallel import PARAM_NAMES, SHARD_DIMS, Sharding
from sae.train.step import SAETrainer

CHECKPOINT_VERSION = 1


def save_checkpoint(root: Path, step: int, tokens: int, jobs: list[SAETrainer], meta: dict[str, Any],
                    sharding: Sharding | None = None) -> Path | None:
    """Write checkpoint `step` as a folder, then point `latest.json` at it (one atomic rename).

    A kill during the write leaves the previous checkpoint and pointer untouched. Sharded, every rank
    takes part in gathering the full tensors and rank 0 writes them: the files are the same as one
    process writes, so a checkpoint resumes under any layout. Returns the folder (None on other ranks).
    """
    sh = sharding or Sharding()
    tensors: dict[str, torch.Tensor] = {"rng/torch": torch.get_rng_state()}

    def put(key: str, t: torch.Tensor, dim: int | None) -> None:
        full = sh.full(t.detach(), dim)  # a collective: every rank calls it in the same order
        if sh.is_main:
            tensors[key] = full.cpu()

    adam_steps: dict[str, list[float]] = {}
    for job in jobs:
        name = job.spec.name
        for i, (pname, p) in enumerate(zip(PARAM_NAMES, job.params)):
            put(f"{name}/{pname}", p, SHARD_DIMS[pname])
            st = job.opt.state.get(job.opt_params[i], {})
            if st:
                put(f"{name}/adam/{pname}/exp_avg", job.in_sae_layout(i, st["exp_avg"]), SHARD_DIMS[pname])
                put(f"{name}/adam/{pname}/exp_avg_sq", job.in_sae_layout(i, st["exp_avg_sq"]), SHARD_DIMS[pname])
                adam_steps.setdefault(name, []).append(float(st["step"]))
        put(f"{name}/last_fired", job.last_fired, SHARD_DIMS["last_fired"])
    if not sh.is_main:
        return None
    folder = root / f"step-{step:09d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_tensors(tensors, folder / "state.safetensors")
    state = {
        "version": CHECKPOINT_VERSION,
        "step": step,
        "tokens": tokens,
        "data_position": {"tokens": tokens, "batches": step},
        "k": {job.spec.name: job.config.k_at(step, job.spec, job.sae.d_in, job.n_features) for job in jobs},
        "adam_steps": adam_steps,
        **meta,
    }
    write_json(folder / "state.json", state)
    _fsync_dir(folder)
    write_json(root / "latest.json", {"checkpoint": folder.name, "step": step})
    for old in root.glob("step-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint folder `out_dir/checkpoint/latest.json` points at (None: the run has none)."""
    pointer = Path(out_dir) / "checkpoint" / "latest.json"
    if not pointer.is_file():
        return None
    folder = pointer.parent / read_json(pointer)["checkpoint"]
    if not (folder / "state.json").is_file():
        raise TrainingError(f"{pointer} points at {folder}, which is incomplete; delete {pointer.parent} to start over")
    return folder


def load_checkpoint(folder: Path, jobs: list[SAETrainer]) -> dict[str, Any]:
    """Restore the RNG, every SAE's weights, Adam state and firing history (this rank's shards); returns state.json."""
    state = read_json(folder / "state.json")
    t = read_tensors(folder / "state.safetensors")
    torch.set_rng_state(t["rng/torch"])
    for job in jobs:
        name, sh = job.spec.name, job.sh
        steps = state["adam_steps"].get(name, [])
        with torch.no_grad():
            for i, (pname, p) in enumerate(zip(PARAM_NAMES, job.params)):
                key, dim = f"{name}/{pname}", SHARD_DIMS[pname]
                part = sh.shard(t[key], dim) if key in t else None  # this rank's features of the full tensor
                if part is None or part.shape != p.shape:
                    raise TrainingError(f"checkpoint {folder} does not match SAE {name} ({key})")
                p.copy_(part)
                if i < len(steps):
                    q = job.opt_params[i]

                    def adam(key: str) -> torch.Tensor:  # in q's shape and layout (the fused kernel needs it)
                        out = torch.empty_like(q)
                        job.in_sae_layout(i, out).copy_(sh.shard(t[f"{name}/adam/{pname}/{key}"], dim))
                        return out

                    job.opt.state[q] = {
                        "step": torch.tensor(steps[i], dtype=torch.float32, device=p.device),
                        "exp_avg": adam("exp_avg"),
                        "exp_avg_sq": adam("exp_avg_sq"),
                    }
        job.last_fired.copy_(sh.shard(t[f"{name}/last_fired"], SHARD_DIMS["last_fired"]))
    return state


def check_resume(state: dict[str, Any], specs: list[SAESpec], config: TrainConfig, ckpt: Path, sh: Sharding,
                 per_rank: bool, fingerprint: Any = None) -> None:
    """Refuse to resume from a checkpoint (its state.json: `state`) written by another run, on other data
    (`fingerprint`: DataSource.fingerprint(); not checked when either side cannot say) or layout."""
    if state.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{ckpt}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
    saved = state["config"]
    for key in ("batch_size", "total_tokens", "seed", "lr", "normalize"):
        if saved.get(key) != getattr(config, key):
            raise TrainingError(
                f"{ckpt} was written with {key} = {saved.get(key)!r}, this run asks for {getattr(config, key)!r}; "
                "resume with the same settings"
            )
    if [s["name"] for s in state["specs"]] != [s.name for s in specs]:
        raise TrainingError(f"{ckpt} holds SAEs {[s['name'] for s in state['specs']]}, this run asks for {[s.name for s in specs]}")
    saved_data = state.get("data")
    if saved_data is not None and fingerprint is not None and saved_data != fingerprint:
        raise TrainingError(f"{ckpt} was written on other data ({_differences(saved_data, fingerprint)}); "
                            "resume on the same data, or train into another --out")
    # the weights resume under any layout; a stream sharded per process resumes only over as many processes
    layout = state.get("layout", {})
    world = layout.get("world", 1)
    if (per_rank or layout.get("per_rank_data")) and world != sh.world:
        raise TrainingError(f"{ckpt} was written by {world} process(es) each reading its own shard of the activations; "
                            f"resume with {world} (the data position depends on it), not {sh.world}")


def _differences(saved: Any, now: Any) -> str:
    """Which keys of two fingerprints differ, for the message ("source: 'a' -> 'b'")."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return f"{saved!r} -> {now!r}"
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return "; ".join(f"{k}: {_short(saved.get(k))} -> {_short(now.get(k))}" for k in keys)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
