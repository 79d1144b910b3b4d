"""Train TopK (Llama Scope recipe) and vanilla (ReLU + L1) SAEs and transcoders; `python -m sae.train`.

The recipe (He et al. 2024, "Llama Scope"; where the paper and the released code differ, the paper is
the default and the code an option):

- TopK ranked by ReLU(pre) x ||decoder row||, keeping the unscaled ReLU values; k = 50, annealed
  linearly from `k_start` (d/2 as the released code; `--k-start d_model` as the paper) to k over the
  first 10% of steps;
- Adam (0.9, 0.999, 1e-8), lr 8e-4, linear warm-up, then linear decay to 0 over the final 20%;
- decoder rows Kaiming-uniform rescaled to norm sqrt(2 d_model / F) (paper; 0.5 as the code by
  option), encoder = decoder^T at init (not for transcoders), zero biases;
- inputs (and, for transcoders, targets separately) scaled so their average norm is sqrt(d);
  MSE in that normalised space; no dead-feature loss.
Options beyond the paper (off by default): AuxK (Gao et al. 2024), gradient clipping, the released
code's per-token-normalised MSE.

The TopK step never builds a dense [batch, F] gradient: pre-activations are one dense matmul (the
floor), then only the k selected entries per token take part in decoding (a gather-sum over decoder
rows) and in the backward pass (the encoder gradient is x^T G with G sparse, k entries per row).

Checkpoints (safetensors + JSON, no pickles) hold the SAEs, Adam's moments, the step, k, the RNG and
the data position; a run killed at any moment resumes to the same final weights.

Under torchrun (`sae.train.parallel`, `--tp`) the same step runs on each process with a `Sharding` that does
the collectives: data-parallel activations, SAE features split over a tensor-parallel group, the
gradients averaged over data-parallel replicas; in one process every collective is the identity.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import warnings

from sae.errors import SAEError, ShapeError
from sae.formats.tensors import read_json, read_tensors, write_tensors
from sae.io import write_json
from sae.model import SAEMeta, SparseAutoencoder
from sae.train.parallel import PARAM_NAMES, SHARD_DIMS, Sharding
from sae.data.massive import MASSIVE_FACTOR
from sae.precision import DTYPE_CHOICES, resolve_dtype

# Vanilla (ReLU + L1) default: lambda multiplies mean_tokens(sum_i f_i ||W_dec,i||) against the
# per-element MSE in normalised space. Measured on the embedded model's L15R (8x, 60 steps x 2,048 tokens):
# 1e-3 -> L0 1,142; 3e-3 -> 560; 5e-3 -> 328; 6.5e-3 -> 234; 1e-2 -> 68. 7.5e-3 interpolates to the
# paper's vanilla L0 of ~150 at demo budgets; L0 still moves with the run length (see README.md, section Training).
DEFAULT_L1 = 7.5e-3
CHECKPOINT_VERSION = 1


class TrainingError(SAEError):
    """Training cannot go on (NaN/Inf loss, a checkpoint that does not match the run)."""


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
@dataclass
class SAESpec:
    """One SAE to train. `hook_out` different from `hook_in` makes it a transcoder."""

    name: str = "sae"
    hook_in: str = "x"
    hook_out: str | None = None
    n_features: int | None = None  # default: expansion x d_in
    expansion: int = 8
    activation: str = "topk"  # "topk" (Llama Scope) or "relu" (vanilla: ReLU + L1)
    k: int = 50
    k_anneal: bool = True
    l1_coefficient: float | None = None  # vanilla only; None = TrainConfig.l1_coefficient
    d_in: int | None = None  # expected widths (checked against the data before training)
    d_out: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # SAEMeta fields (model, layer, position, ...)

    @property
    def out_hook(self) -> str:
        return self.hook_out or self.hook_in

    @property
    def transcoder(self) -> bool:
        return self.out_hook != self.hook_in


@dataclass
class TrainConfig:
    """Settings shared by every SAE of a run. Defaults are the Llama Scope paper's."""

    total_tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 8e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup: float | None = None  # steps if >= 1, a fraction of the run if < 1; None = min(10,000, 5%)
    decay_frac: float = 0.2  # linear decay to 0 over this final fraction
    k_anneal_frac: float = 0.1
    k_start: str | int = "half"  # "half" = d/2 (released code), "d_model" (paper), or a number
    decoder_init_norm: str | float = "paper"  # "paper" = sqrt(2 d / F), "code" = 0.5, or a number
    b_dec_init: str = "zero"  # "zero" (paper) or "mean" (the first batch's mean target, as sparsify)
    score_dtype: str = "auto"  # TopK selection matmul: "auto" (bfloat16 where the hardware has it), "float32", "bfloat16"
    normalize: bool = True  # dataset-wise: average norm sqrt(d)
    norm_tokens: int = 16_384  # tokens used to measure the average norm (when the source has no stats)
    loss: str = "mse"  # "mse" or "batch-norm-mse" (released code: per token / ||batch-centred target||)
    l1_coefficient: float = DEFAULT_L1
    l1_warmup_frac: float = 0.05  # vanilla: lambda ramps up linearly over this fraction
    aux_k: int = 0  # AuxK: 0 = off; e.g. d/2 (Gao et al. use 512)
    aux_coef: float = 1 / 32
    dead_tokens: int = 1_000_000  # AuxK: a feature silent this long counts as dead
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    alive_window: int = 1_000_000  # "alive" = fired within the last this-many tokens
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = only at the end
    log_every: int = 10
    device: str = "cpu"
    threads: int = 0  # torch CPU threads; 0 = leave as is

    @property
    def steps(self) -> int:
        return max(self.total_tokens // self.batch_size, 1)

    def warmup_steps(self) -> int:
        if self.warmup is None:
            return max(1, min(10_000, math.ceil(0.05 * self.steps)))
        return max(1, int(self.warmup) if self.warmup >= 1 else math.ceil(self.warmup * self.steps))

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, linear decay to 0 over the final `decay_frac` (step is 0-based)."""
        T = self.steps
        factor = min(1.0, (step + 1) / self.warmup_steps())
        decay_start = T * (1 - self.decay_frac)
        if self.decay_frac > 0 and step >= decay_start:
            factor = min(factor, max(0.0, (T - step) / (T * self.decay_frac)))
        return self.lr * factor

    def k_at(self, step: int, spec: SAESpec, d_in: int, n_features: int) -> int:
        """Released code: k_t = ceil(k_start + (k - k_start) t / T_w) over T_w = 10% of the steps."""
        if spec.activation != "topk":
            return 0
        k = spec.k
        T_w = self.k_anneal_frac * self.steps
        if not spec.k_anneal or T_w <= 0 or step >= T_w:
            return k
        if self.k_start == "half":
            k0 = d_in / 2
        elif self.k_start == "d_model":
            k0 = d_in
        else:
            k0 = float(self.k_start)
        k0 = max(k0, k)
        return min(n_features, math.ceil(k0 + (k - k0) * step / T_w))

    def l1_at(self, step: int, spec: SAESpec) -> float:
        lam = self.l1_coefficient if spec.l1_coefficient is None else spec.l1_coefficient
        ramp = self.l1_warmup_frac * self.steps
        return lam * min(1.0, (step + 1) / ramp) if ramp > 0 else lam


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise SAEError(f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}")


def validate(specs: list[SAESpec], config: TrainConfig, dims: dict[str, int] | None) -> None:
    """Refuse bad requests before any compute: k, sites, widths, option values."""
    _check_choice("loss", config.loss, ("mse", "batch-norm-mse"))
    if isinstance(config.k_start, str):
        _check_choice("k_start", config.k_start, ("half", "d_model"))
    if isinstance(config.decoder_init_norm, str):
        _check_choice("decoder_init_norm", config.decoder_init_norm, ("paper", "code"))
    _check_choice("b_dec_init", config.b_dec_init, ("zero", "mean"))
    _check_choice("score_dtype", config.score_dtype, ("auto", "float32", "bfloat16"))
    if config.batch_size < 1 or config.total_tokens < config.batch_size:
        raise SAEError(f"total_tokens ({config.total_tokens}) must be at least one batch ({config.batch_size})")
    names = [s.name for s in specs]
    if not specs:
        raise SAEError("nothing to train: give at least one SAE")
    if len(set(names)) != len(names):
        raise SAEError(f"SAE names must be distinct: {names}")
    for s in specs:
        _check_choice(f"{s.name}: activation", s.activation, ("topk", "relu"))
        if dims is not None:
            for hook in (s.hook_in, s.out_hook):
                if hook not in dims:
                    raise SAEError(
                        f"{s.name}: unknown site {hook!r}; the data has {', '.join(sorted(dims)) or 'no sites'}"
                    )
            for want, hook, what in ((s.d_in, s.hook_in, "d_in"), (s.d_out, s.out_hook, "d_out")):
                if want is not None and dims[hook] != want:
                    raise ShapeError(f"{s.name}: {what} is {want} but site {hook!r} has width {dims[hook]}")
        d_in = dims[s.hook_in] if dims else s.d_in
        n = s.n_features or (s.expansion * d_in if d_in else None)
        if n is not None and s.activation == "topk" and not 0 < s.k <= n:
            raise ShapeError(f"{s.name}: k = {s.k} must be between 1 and n_features = {n}")
        if s.activation == "topk" and s.k < 1:
            raise ShapeError(f"{s.name}: k must be >= 1, got {s.k}")


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
def _as_dict(item: Any) -> dict[str, torch.Tensor]:
    if isinstance(item, torch.Tensor):
        return {"x": item}
    if isinstance(item, dict):
        return item
    raise SAEError(f"activations must be tensors or dicts of tensors keyed by hook name, not {type(item).__name__}")


class DataSource:
    """Batches of exactly `batch_size` rows as dicts hook -> float32 [batch, d], resumable by step.

    Accepts a tensor [N, d] (hook "x"), a dict of equal-length tensors (hook -> [N, d]; shuffled,
    reshuffled every epoch from the seed), a SyntheticData, or any iterable of tensors / dicts (the
    activation stream; re-chunked to `batch_size`). An iterable is re-iterated from its start on resume
    and the rows already used are skipped, unless it offers `skip_tokens(n)` / `iter_from(n)`.

    Distributed (`sharding`): every rank reads the same global batches and keeps its slice of each, so
    the ranks together see what one process would; a source holding only this rank's data (an
    ActivationStream with shard=(rank, world)) gives batches of batch_size / world rows instead.
    """

    def __init__(self, source: Any, batch_size: int, seed: int = 0, sharding: Sharding | None = None):
        from sae.data.synthetic import SyntheticData

        self.source = source
        self.sharding = sharding or Sharding()
        self.per_rank = self.sharding.per_rank_source(source)
        self.batch_size = batch_size // self.sharding.world if self.per_rank else batch_size
        self.seed = seed
        self.fixed: dict[str, torch.Tensor] | None = None
        self.synthetic = source if isinstance(source, SyntheticData) else None
        self._head: list[dict[str, torch.Tensor]] = []  # items read ahead (dims, norms), replayed first
        self._it: Iterator | None = None
        if isinstance(source, (torch.Tensor, dict)):
            fixed = _as_dict(source)
            lengths = {t.shape[0] for t in fixed.values()}
            if len(lengths) != 1:
                raise ShapeError(f"all sites must have the same number of rows, got {sorted(lengths)}")
            if next(iter(lengths)) < batch_size:
                raise ShapeError(f"{next(iter(lengths))} rows of activations is less than one batch ({batch_size})")
            self.fixed = {h: t.float() for h, t in fixed.items()}

    def dims(self) -> dict[str, int]:
        """hook -> width, without running a model where the source can say so."""
        if self.fixed is not None:
            return {h: t.shape[-1] for h, t in self.fixed.items()}
        if self.synthetic is not None:
            return {"x": self.synthetic.d}
        for attr in ("dims", "widths"):
            d = getattr(self.source, attr, None)
            d = d() if callable(d) else d
            if isinstance(d, dict) and d:
                return {str(h): int(v) for h, v in d.items()}
        first = self._take(0)
        return {h: t.shape[-1] for h, t in first.items()}

    def first_batch(self) -> dict[str, torch.Tensor]:
        if self.fixed is not None:
            return next(self._fixed_batches(0))
        if self.synthetic is not None:
            return {"x": self.synthetic.batch(0, self.batch_size)}
        return self._take(0)

    def _read_ahead(self) -> Iterator[dict[str, torch.Tensor]]:
        i = 0
        while (item := self._take(i)) is not None:
            yield item
            i += 1

    def _take(self, i: int) -> dict[str, torch.Tensor] | None:
        """Item i of a plain iterable, read once and kept until training replays it (None at the end)."""
        if self._it is None:
            self._it = iter(self.source)
        while len(self._head) <= i:
            try:
                self._head.append(_as_dict(next(self._it)))
            except StopIteration:
                if not self._head:
                    raise SAEError("the activation source is empty") from None
                return None
        return self._head[i]

    def mean_norms(self, hooks: Iterable[str], n_tokens: int) -> dict[str, float]:
        """Average activation norm per hook: the source's own statistics if it has them (a per-rank
        source: the mean over the ranks)."""
        norms = self._mean_norms(sorted(set(hooks)), n_tokens)
        if not self.per_rank:
            return norms
        mean = self.sharding.rank_mean(torch.tensor(list(norms.values()), dtype=torch.float64))
        return dict(zip(norms, mean.tolist()))

    def _mean_norms(self, hooks: list[str], n_tokens: int) -> dict[str, float]:
        stats = getattr(self.source, "mean_norms", None)
        if callable(stats):
            got = stats()
            if all(h in got for h in hooks):
                return {h: float(got[h]) for h in hooks}
        sums = {h: 0.0 for h in hooks}
        seen = 0
        items = self._global_batches(0) if self.fixed is not None or self.synthetic is not None else self._read_ahead()
        for batch in items:
            for h in hooks:
                sums[h] += float(batch[h].float().norm(dim=-1).sum())
            seen += next(iter(batch.values())).shape[0]
            if seen >= n_tokens:
                break
        return {h: sums[h] / seen for h in hooks}

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's rows of every batch from `start_step` on (one process: the whole batches)."""
        sh = self.sharding
        if self.per_rank:
            yield from sh.until_any_ends(_rechunk(self._iterate(start_step * self.batch_size), self.batch_size))
        elif sh.world > 1:
            yield from (sh.local_rows(batch) for batch in self._global_batches(start_step))
        else:
            yield from self._global_batches(start_step)

    def _global_batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        B = self.batch_size
        if self.fixed is not None:
            yield from self._fixed_batches(start_step)
        elif self.synthetic is not None:
            for t in self.synthetic.batches(B, start=start_step):
                yield {"x": t}
        else:
            yield from _rechunk(self._iterate(start_step * B), B)

    def _fixed_batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        N = next(iter(self.fixed.values())).shape[0]
        per_epoch = N // self.batch_size
        step = start_step
        while True:
            epoch, j = divmod(step, per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(N, generator=g)
            while j < per_epoch:
                rows = perm[j * self.batch_size : (j + 1) * self.batch_size]
                yield {h: t[rows] for h, t in self.fixed.items()}
                j += 1
                step += 1

    def _iterate(self, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        src = self.source
        if skip and hasattr(src, "iter_from"):
            self._head = []
            yield from (_as_dict(b) for b in src.iter_from(skip))
            return
        if skip and hasattr(src, "skip_tokens") and not self._head and self._it is None:
            src.skip_tokens(skip)
            skip = 0
        if self._it is None:
            self._it = iter(src)
        head, self._head = self._head, []
        epoch = 0
        while True:
            got = False
            for item in _chain(head, self._it) if epoch == 0 else iter(src):
                got = True
                batch = _as_dict(item)
                n = next(iter(batch.values())).shape[0]
                if skip >= n:
                    skip -= n
                    continue
                if skip:
                    batch = {h: t[skip:] for h, t in batch.items()}
                    skip = 0
                yield batch
            if not got or iter(src) is src:  # a one-shot iterator cannot be read again
                return
            epoch += 1
            if skip == 0:
                print(f"note: the activation source ended; reading it again (epoch {epoch + 1})", file=sys.stderr)


def _chain(head: list, it: Iterator) -> Iterator:
    while head:
        yield head.pop(0)
    yield from it


def _rechunk(it: Iterator[dict[str, torch.Tensor]], size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Re-cut a stream of dict batches of any size into batches of exactly `size` rows."""
    parts: list[dict[str, torch.Tensor]] = []
    have = 0
    for batch in it:
        parts.append(batch)
        have += next(iter(batch.values())).shape[0]
        while have >= size:
            cat = {h: torch.cat([p[h] for p in parts]) if len(parts) > 1 else parts[0][h] for h in parts[0]}
            yield {h: t[:size].float() for h, t in cat.items()}
            rest = {h: t[size:] for h, t in cat.items()}
            have -= size
            parts = [rest] if have else []


# ---------------------------------------------------------------------------------------------------
# initialisation and the training step
# ---------------------------------------------------------------------------------------------------
def init_sae(spec: SAESpec, d_in: int, d_out: int, config: TrainConfig, generator: torch.Generator) -> SparseAutoencoder:
    """Llama Scope init: Kaiming-uniform decoder rows rescaled to a fixed norm, W_enc = W_dec^T
    (transcoders: an independent encoder with the same column norms), zero biases."""
    n = spec.n_features or spec.expansion * d_in
    sae = SparseAutoencoder(
        d_in,
        n,
        d_out=d_out,
        activation=spec.activation,
        k=spec.k if spec.activation == "topk" else None,
        meta=SAEMeta(name=spec.name, hook_in=spec.hook_in, hook_out=spec.out_hook, **spec.meta),
        device=config.device,
    )
    if config.decoder_init_norm == "paper":
        norm = math.sqrt(2 * d_out / n)
    elif config.decoder_init_norm == "code":
        norm = 0.5
    else:
        norm = float(config.decoder_init_norm)
    with torch.no_grad():
        W = _kaiming_uniform(n, d_out, generator)
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True) * norm)
        if spec.transcoder:
            E = _kaiming_uniform(n, d_in, generator)
            sae.W_enc.copy_((E / E.norm(dim=1, keepdim=True) * norm).T)
        else:
            sae.W_enc.copy_(sae.W_dec.T)
    return sae


def _kaiming_uniform(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    bound = math.sqrt(6 / cols)  # torch's kaiming_uniform_ (a=0, fan_in = cols): the scale is reset anyway
    return (torch.rand(rows, cols, generator=g) * 2 - 1) * bound


class _Job:
    """One SAE's training state: the SAE, its optimiser, feature-firing history and log.

    With a tensor-parallel `sharding`, `sae` holds this rank's features only (`Sharding.local_sae`).
    """

    def __init__(self, spec: SAESpec, sae: SparseAutoencoder, config: TrainConfig, scale_in: float, scale_out: float,
                 sharding: Sharding | None = None):
        self.spec, self.sae, self.config = spec, sae, config
        self.sh = sharding or Sharding()
        self.n_features = sae.n_features * self.sh.tp  # over all shards
        self.scale_in, self.scale_out = scale_in, scale_out
        self.params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]  # in the SAE's own layout
        self.opt_params = list(self.params)  # what Adam updates: the same memory
        if sae.activation == "topk":
            # W_enc [d, F] is kept feature-major ([F, d] in memory) and Adam updates that contiguous [F, d]
            # view: the sparse product yields the gradient as [F, d] (no transpose of [d, F] per step), the
            # sampled product reads W_enc 2-7x faster in this order, and Adam's fused kernel stays fast.
            sae.W_enc.data = sae.W_enc.data.T.contiguous().T
            self.opt_params[0] = torch.nn.Parameter(sae.W_enc.data.T)
        fused = torch.device(config.device).type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(
            self.opt_params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, fused=fused
        )
        self.score_dtype = resolve_dtype(config.score_dtype, sae.W_enc.device)
        self.last_fired = torch.full((sae.n_features,), -1, dtype=torch.long, device=sae.W_enc.device)
        self.acc: dict[str, tuple[float, int]] = {}

    # ---- the step ---------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, tokens_before: int) -> dict[str, float]:
        cfg = self.config
        lr = cfg.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.sae.activation == "topk":
            k = cfg.k_at(step, self.spec, self.sae.d_in, self.n_features)
            loss, stats, fired = self._topk_grads(x, y, k, tokens_before)
        else:
            k = 0
            loss, stats, fired = self._relu_grads(x, y, cfg.l1_at(step, self.spec))
        if not math.isfinite(loss):
            raise TrainingError(
                f"{self.spec.name}: the loss became {loss} at step {step}; training stopped and the last "
                "good checkpoint (if any) is intact. Try a lower --lr or --grad-clip."
            )
        self.sh.reduce_grads(self.opt_params)
        if cfg.grad_clip > 0:
            self.sh.clip_grad_norm_(self.opt_params, cfg.grad_clip, [SHARD_DIMS[n] for n in PARAM_NAMES])
        self.opt.step()
        self.sh.mark_fired(self.last_fired, fired, tokens_before + x.shape[0] * self.sh.ddp)
        stats.update(loss=loss, lr=lr, k=k)
        return stats

    def _recon_loss(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The reconstruction loss (autograd-friendly; the TopK step uses its closed-form gradient)."""
        if self.config.loss == "batch-norm-mse":  # released code: per token / ||y - mean_batch(y)||
            return (e.pow(2) / _token_scale(y, self.sh.batch_mean(y))).mean()
        return e.pow(2).mean()

    @torch.no_grad()
    def _topk_grads(self, x, y, k, tokens_before):
        """Forward and backward of the TopK SAE by hand, touching only the k selected features per token.

        loss = mean((y_hat - y)^2), y_hat = sum_j v_j W_dec[idx_j] + b_dec, v = ReLU(pre[idx]).
        Gradients: dL/dy_hat = dy; b_dec: sum dy; v: <W_dec[idx_j], dy> (sampled, never [B, F]);
        W_dec[f]: sum over (token, slot) choosing f of v * dy; pre = v's grad where pre > 0;
        W_enc = x^T G and b_enc = column sums of G, with G [B, F] holding k entries per row.
        Sharded, every rank selects the global top k, keeps the entries of its own features (the others
        get value 0, so they add nothing to the sum or the gradients) and the partial y_hat are summed.
        """
        sae, sh = self.sae, self.sh
        W_enc, b_enc, W_dec, b_dec = self.params
        B, F_ = x.shape[0], sae.n_features
        # Rank by ReLU(pre) x ||W_dec row||: fold the norms into the matmul instead of a pass over
        # [B, F]; the order of positive scores is the same and ties at zero decode to nothing.
        # The ranking matmul may run in bfloat16 (the paper trains in bf16; ~2x on CPUs with AVX512-BF16):
        # then only the choice of features is bf16, their pre-activations are recomputed in fp32.
        n = W_dec.norm(dim=1).clamp_min(1e-12) if sae.topk_by_decoder_norm else torch.ones_like(b_enc)
        low = self.score_dtype
        score = torch.addmm((b_enc * n).to(low), x.to(low), (W_enc * n).to(low))
        top_scores, idx, owned = sh.topk(score, k)
        pre = _owned(_exact_pre(idx, top_scores, n, x, W_enc, b_enc, low), owned)
        values = pre.clamp_min(0)
        e = sh.sum_partials(_gather_sum(idx, W_dec, values)).add_(b_dec).sub_(y)  # y_hat - y
        numel = e.numel()
        y_mean = sh.batch_mean(y)
        recon = _recon_sums(e, y, y_mean)
        if self.config.loss == "batch-norm-mse":
            c = _token_scale(y, y_mean)
            loss_sum = (e.pow(2) / c).sum()
            dy = e * (2 / numel) / c
        else:
            loss_sum = recon[0]
            dy = e * (2 / numel)
        active = values > 0
        # one reduction over the replicas for the loss, the statistics and L0 (numel: the global batch)
        loss_sum, *sums, n_active = sh.replica_sums([loss_sum, *recon, sh.shard_sum(active.sum())])
        numel *= sh.ddp
        loss = loss_sum / numel
        stats = _recon_stats(*sums, numel)

        sel_idx, sel_pre, sel_val, sel_dy = [idx], [pre], [values], [dy]
        if self.config.aux_k > 0 and tokens_before >= self.config.dead_tokens:
            dead = (tokens_before - self.last_fired) > self.config.dead_tokens  # never fired: last = -1
            n_dead = int(sh.shard_sum(dead.sum()))
            if n_dead:
                ka = min(self.config.aux_k, n_dead)
                aux_scores, aux_idx, aux_owned = sh.topk(score.masked_fill_(~dead, -math.inf), ka)
                # picks beyond the row's positive dead scores may be masked live features: they add nothing
                aux_pre = _owned(_exact_pre(aux_idx, aux_scores, n, x, W_enc, b_enc, low), aux_owned)
                aux_pre = aux_pre.masked_fill(~dead[aux_idx], 0.0)
                aux_val = aux_pre.clamp_min(0)
                residual = -e
                diff = sh.sum_partials(_gather_sum(aux_idx, W_dec, aux_val)) - residual
                denom, diff_sq = sh.replica_sums([(residual - sh.batch_mean(residual)).pow(2).sum(), diff.pow(2).sum()])
                denom = denom or 1e-12
                aux = diff_sq / denom
                loss += self.config.aux_coef * aux
                stats["aux"] = aux
                sel_idx.append(aux_idx)
                sel_pre.append(aux_pre)
                sel_val.append(aux_val)
                # x ddp: the replicas' gradients are averaged, this term is a sum over the global batch
                sel_dy.append(diff * (2 * self.config.aux_coef * sh.ddp / denom))
        del score

        # dL/dpre at the selected entries; then every selection (aux-k ones as extra rows B.., so a token's two
        # selections never share a (feature, row) entry) in one [F, rows] CSR pattern for both weight gradients
        g = [_sampled_dot(i, dy_i, W_dec) * (p > 0) for i, p, dy_i in zip(sel_idx, sel_pre, sel_dy)]
        feats = torch.cat([i.reshape(-1) for i in sel_idx])
        rows = torch.cat([torch.arange(n * B, (n + 1) * B, device=x.device).repeat_interleave(i.shape[1])
                          for n, i in enumerate(sel_idx)])
        crow, col, order = _feature_rows(feats, rows, F_)
        size = (F_, B * len(sel_idx))
        W_dec.grad = _csr(crow, col, torch.cat([v.reshape(-1) for v in sel_val])[order], size) @ torch.cat(sel_dy)
        g_flat = torch.cat([gi.reshape(-1) for gi in g])
        xs = x if len(sel_idx) == 1 else x.repeat(len(sel_idx), 1)
        self.opt_params[0].grad = _csr(crow, col, g_flat[order], size) @ xs  # [F, d]: W_enc's memory order
        b_enc.grad = torch.zeros_like(b_enc).index_add_(0, feats, g_flat)
        b_dec.grad = dy.sum(0)
        stats["l0"] = n_active / (B * sh.ddp)
        return loss, stats, idx[active]

    def _relu_grads(self, x, y, lam):
        sh = self.sh
        W_enc, b_enc, W_dec, b_dec = self.params
        pre = torch.addmm(b_enc, x, W_enc)
        f = pre.relu()
        y_hat = sh.sum_partials(f @ W_dec) + b_dec if sh.tp > 1 else torch.addmm(b_dec, f, W_dec)
        e = y_hat - y
        mse = self._recon_loss(e, y)
        l1 = sh.sum_partials(f @ W_dec.norm(dim=1)).mean()  # L1 weighted by decoder-row norms
        loss = mse + lam * l1
        for p in self.params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            active = f > 0
            loss, l1, *sums, n_active = sh.replica_sums(
                [loss.detach(), l1.detach(), *_recon_sums(e.detach(), y, sh.batch_mean(y)), sh.shard_sum(active.sum())]
            )
            stats = _recon_stats(*sums, e.numel() * sh.ddp)
            stats["l0"] = n_active / (x.shape[0] * sh.ddp)
            stats["l1"] = l1 / sh.ddp
            fired = active.any(0).nonzero().squeeze(1)
        return loss / sh.ddp, stats, fired

    def in_sae_layout(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like Adam's i-th parameter (e.g. its state), viewed as the SAE's i-th tensor."""
        return t if self.opt_params[i] is self.params[i] else t.T

    # ---- metrics ------------------------------------------------------------------------------------
    def alive_fraction(self, tokens: int) -> float:
        window = self.config.alive_window
        fired = self.last_fired >= 0
        recent = fired & (tokens - self.last_fired <= window)
        return self.sh.feature_mean(recent.float())

    def accumulate(self, stats: dict[str, float]) -> None:
        for key, v in stats.items():
            total, n = self.acc.get(key, (0.0, 0))
            self.acc[key] = (total + float(v), n + 1)

    def flush(self) -> dict[str, float]:
        """Means since the last flush (a key present in only some steps, like aux, over those steps)."""
        out = {key: total / n for key, (total, n) in self.acc.items()}
        self.acc = {}
        return out


def _exact_pre(idx, scores, n, x, W_enc, b_enc, dtype) -> torch.Tensor:
    """fp32 pre-activations at the selected entries: from the scores when they are fp32, else recomputed."""
    if dtype == torch.float32:
        return scores / n[idx]
    return _sampled_dot(idx, x, W_enc.T) + b_enc[idx]


def _owned(pre: torch.Tensor, owned: torch.Tensor | None) -> torch.Tensor:
    """Zero the selected entries that belong to another shard (one process: all are owned)."""
    return pre if owned is None else pre.masked_fill(~owned, 0.0)


def _token_scale(y: torch.Tensor, y_mean: torch.Tensor) -> torch.Tensor:
    return (y - y_mean).norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _gather_sum(idx: torch.Tensor, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_j weights[b, j] * table[idx[b, j]] -> [B, d], without materialising [B, k, d]."""
    return F.embedding_bag(idx, table, per_sample_weights=weights, mode="sum")


def _sampled_dot(idx: torch.Tensor, dy: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """<table[idx[b, j]], dy[b]> for every (b, j): (dy @ table^T) sampled at idx, never [B, F]."""
    B, m = idx.shape
    crow = torch.arange(0, B * m + 1, m, device=idx.device)
    pattern = _csr(crow, idx.reshape(-1), torch.zeros(B * m, dtype=dy.dtype, device=dy.device), (B, table.shape[0]))
    return torch.sparse.sampled_addmm(pattern, dy, table.T, beta=0.0).values().view(B, m)


def _feature_rows(feats: torch.Tensor, rows: torch.Tensor, n_features: int) -> tuple[torch.Tensor, ...]:
    """CSR pattern [n_features, rows] of (feature, row) pairs: (crow, col, order), values go in `order`.

    Sorting once and multiplying with int32 CSR measured ~1.6x torch's COO sparse.mm (which sorts on
    every call) for the two weight gradients here."""
    order = feats.argsort(stable=True)
    crow = torch.zeros(n_features + 1, dtype=torch.int32, device=feats.device)
    crow[1:] = torch.bincount(feats, minlength=n_features).cumsum(0)
    return crow, rows[order].int(), order


def _csr(crow, col, values, size) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _recon_sums(e: torch.Tensor, y: torch.Tensor, y_mean: torch.Tensor) -> list[torch.Tensor]:
    """The sums behind _recon_stats: squared error, centred and uncentred squared norm of the target."""
    return [_sum_sq(e), _sum_sq(y - y_mean), _sum_sq(y)]


def _sum_sq(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(-1)
    return torch.dot(flat, flat)  # no [B, d] temporary, unlike t.pow(2).sum()


def _recon_stats(sq: float, var: float, yy: float, numel: int) -> dict[str, float]:
    return {
        "mse": sq / numel,
        "ev": 1 - sq / max(var, 1e-30),  # centred, pooled (Gemma Scope / SAELens)
        "ev_uncentred": 1 - sq / max(yy, 1e-30),  # the paper's Eq. 6
    }


# ---------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------
def _save_checkpoint(root: Path, step: int, tokens: int, jobs: list[_Job], meta: dict[str, Any],
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
    pointer = Path(out_dir) / "checkpoint" / "latest.json"
    if not pointer.is_file():
        return None
    folder = pointer.parent / read_json(pointer)["checkpoint"]
    if not (folder / "state.json").is_file():
        raise TrainingError(f"{pointer} points at {folder}, which is incomplete; delete {pointer.parent} to start over")
    return folder


def _load_checkpoint(folder: Path, jobs: list[_Job]) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------
LOG_FIELDS = ["step", "tokens", "lr", "k", "loss", "mse", "ev", "ev_uncentred", "l0", "alive", "aux", "l1", "elapsed_s"]


@dataclass
class TrainResult:
    saes: dict[str, SparseAutoencoder]  # trained, in the normalised space (meta says the scales)
    logs: dict[str, Any]  # name -> pandas DataFrame of the log
    out_dir: Path | None
    steps: int
    tokens: int
    seconds: float

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
        return _train(source, specs, config, out_dir, resume, progress, stop_after, sharding or Sharding())
    finally:
        torch.set_num_threads(threads)


def _train(source, specs, config, out_dir, resume, progress, stop_after, sh: Sharding) -> TrainResult:
    import pandas as pd
    from tqdm.auto import tqdm

    data = DataSource(source, config.batch_size, seed=config.seed, sharding=sh)
    validate(specs, config, None)
    dims = data.dims()
    validate(specs, config, dims)
    sh.validate({s.name: s.n_features or s.expansion * dims[s.hook_in] for s in specs}, config.batch_size)
    out = Path(out_dir) if out_dir is not None else None
    ckpt = latest_checkpoint(out) if out is not None else None
    if not sh.same_everywhere(int(ckpt.name.split("-")[-1]) if ckpt else -1):
        raise TrainingError(f"the processes see different checkpoints in {out}: put the run folder on a filesystem every node shares")
    if out is not None and ckpt is not None and not resume:
        raise TrainingError(f"{out} already holds a run (checkpoint {ckpt.name}); pass resume=True / --resume, or another --out")

    # normalisation factors (from the checkpoint when resuming, so the data is not read twice)
    state: dict[str, Any] | None = read_json(ckpt / "state.json") if (resume and ckpt) else None
    if state is not None:
        _check_resume(state, specs, config, ckpt, sh, data.per_rank)
        norms = {h: float(v) for h, v in state["mean_norms"].items()}
    elif config.normalize:
        norms = data.mean_norms({h for s in specs for h in (s.hook_in, s.out_hook)}, config.norm_tokens)
    else:
        norms = {}

    def scale(hook: str) -> float:
        return math.sqrt(dims[hook]) / norms[hook] if config.normalize else 1.0

    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    jobs = []
    for s in specs:
        sae = init_sae(s, dims[s.hook_in], dims[s.out_hook], config, g)
        sae.meta.dataset_norm_in = norms.get(s.hook_in)
        sae.meta.dataset_norm_out = norms.get(s.out_hook)
        jobs.append(_Job(s, sh.local_sae(sae), config, scale(s.hook_in), scale(s.out_hook), sh))

    if config.b_dec_init == "mean" and state is None:
        first = data.first_batch()
        with torch.no_grad():
            for job in jobs:
                mean = first[job.spec.out_hook].float().mean(0)
                if data.per_rank:  # this rank's first batch: the mean over all ranks' first batches
                    mean = sh.rank_mean(mean)
                job.sae.b_dec.copy_(mean.to(config.device) * job.scale_out)
    start_step = 0
    if state is not None:
        _load_checkpoint(ckpt, jobs)
        start_step = int(state["step"])
    run_meta = {"config": asdict(config), "specs": [asdict(s) for s in specs], "mean_norms": norms,
                "layout": {**sh.layout(), "per_rank_data": data.per_rank}}

    writers = {}
    if out is not None and sh.is_main:
        for job in jobs:
            folder = out / job.spec.name
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "config.json", {"config": asdict(config), "spec": asdict(job.spec), "mean_norms": norms,
                                                "scale_in": job.scale_in, "scale_out": job.scale_out})
            writers[job.spec.name] = _LogWriter(folder / "log.csv", start_step)

    T = config.steps
    end_step = T if stop_after is None else min(T, start_step + stop_after)
    B = config.batch_size
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
            tokens = step * B
            batch = sh.gather_rows({h: batch[h].to(config.device, torch.float32) for h in hooks})
            for job in jobs:
                x = batch[job.spec.hook_in] * job.scale_in
                y = batch[job.spec.out_hook] * job.scale_out if job.spec.transcoder else x
                job.accumulate(job.step(x, y, step, tokens))
            step += 1
            bar.update(B)
            if step % config.log_every == 0 or step == end_step:
                elapsed = time.perf_counter() - t0
                post = {}
                for job in jobs:
                    row = job.flush()
                    row.update(step=step, tokens=step * B, alive=job.alive_fraction(step * B), elapsed_s=elapsed)
                    if job.spec.name in writers:
                        writers[job.spec.name].write(row)
                    post[job.spec.name] = row
                bar.set_postfix_str(_postfix(post), refresh=False)
            if out is not None and (
                (config.checkpoint_every and step % config.checkpoint_every == 0) or step == end_step
            ):
                _save_checkpoint(out / "checkpoint", step, step * B, jobs, run_meta, sh)
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    seconds = time.perf_counter() - t0

    saes = {}
    for job in jobs:
        job.sae.W_enc.data = job.sae.W_enc.data.contiguous()  # hand over the usual layout (training is over)
        sae = sh.full_sae(job.sae, job.spec.k if job.sae.activation == "topk" else job.sae.k)
        sae.meta.provenance = {
            "trained_by": "sae.train",
            "space": "normalised" if config.normalize else "raw",
            "scale_in": job.scale_in,
            "scale_out": job.scale_out,
            "steps": step,
            "tokens": step * B,
            "config": asdict(config),
            "spec": asdict(job.spec),
        }
        if sh.world > 1:
            sae.meta.provenance["layout"] = sh.layout()
        saes[job.spec.name] = sae
        if out is not None and step == T and sh.is_main:
            sae.save(out / job.spec.name / "trained")
    logs = {name: pd.read_csv(out / name / "log.csv") for name in saes} if out is not None and sh.is_main else {}
    sh.barrier()  # the run folder is complete for every rank that returns
    return TrainResult(saes, logs, out, step, (step - start_step) * B, seconds)


def _check_resume(state: dict, specs: list[SAESpec], config: TrainConfig, ckpt: Path, sh: Sharding,
                  per_rank: bool) -> None:
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
    # the weights resume under any layout; a stream sharded per process resumes only over as many processes
    layout = state.get("layout", {})
    world = layout.get("world", 1)
    if (per_rank or layout.get("per_rank_data")) and world != sh.world:
        raise TrainingError(f"{ckpt} was written by {world} process(es) each reading its own shard of the activations; "
                            f"resume with {world} (the data position depends on it), not {sh.world}")


def _postfix(post: dict[str, dict[str, float]]) -> str:
    parts = []
    for name, r in post.items():
        head = f"{name}: " if len(post) > 1 else ""
        k = f" k={int(r['k'])}" if r.get("k") else ""
        parts.append(f"{head}mse={r['mse']:.4f} ev={r['ev']:.3f} l0={r['l0']:.1f}{k} alive={r['alive']:.2f}")
    return " | ".join(parts)


class _LogWriter:
    """log.csv, appended; on resume, rows past the checkpoint (written before a kill) are dropped."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        rows = []
        if path.is_file() and start_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= start_step]
        self.f = open(path, "w", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        self.w.writeheader()
        for r in rows:
            self.w.writerow(r)
        self.f.flush()

    def write(self, row: dict[str, float]) -> None:
        self.w.writerow({k: _fmt(row.get(k)) for k in LOG_FIELDS})
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def read_log(path: str | Path):
    """A run's log.csv (a file or an SAE's run folder) as a pandas DataFrame (Fig. 12 reads this)."""
    import pandas as pd

    path = Path(path)
    return pd.read_csv(path / "log.csv" if path.is_dir() else path)


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def _parse_count(text: str) -> int:
    """'2M', '500k', '1e6', '4096' -> int."""
    t = text.strip().lower().replace("_", "")
    mult = {"k": 10**3, "m": 10**6, "b": 10**9}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 4096, 500k, 2M)") from None


def _parse_kv(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SAEError(f"expected key=value in {text!r}")
        out[key.strip()] = json.loads(value) if value.strip()[:1] in "-0123456789.[{tf" else value
    return out


def add_data_arguments(p: argparse.ArgumentParser, default_dataset: str | None = "embedded-train") -> None:
    """The options that say where activations come from (shared with `python -m sae.postprocess`)."""
    g = p.add_argument_group("activations")
    g.add_argument("--model", default="embedded", help="language model: 'embedded' (SmolLM2-135M, offline) or an HF folder/name")
    g.add_argument("--dataset", default=default_dataset or "embedded-train",
                   help="text source for the model (embedded-train, a .txt/.jsonl/.parquet file or folder, hf:NAME), "
                   "or 'synthetic' for ground-truth activations from sae.data.synthetic (hook 'x')")
    g.add_argument("--synthetic", default="", metavar="KEY=VAL,...",
                   help="SyntheticConfig fields for --dataset synthetic, e.g. d=64,n_parents=64")
    g.add_argument("--activations", type=Path, help="a safetensors file of activations keyed by hook name (or 'x'); "
                   "overrides --model/--dataset")
    g.add_argument("--context", type=int, default=1024,
                   help="tokens per row (packed rows, or per document with --no-pack), default 1024")
    g.add_argument("--no-pack", action="store_true",
                   help="one document per row, right-padded (default: documents packed into full rows)")
    g.add_argument("--model-dtype", choices=DTYPE_CHOICES, default="auto",
                   help="dtype of the language model: auto = bfloat16 where the hardware has fast bf16 "
                   "(AVX512-BF16/AMX CPUs, CUDA), float32 elsewhere")
    g.add_argument("--massive-factor", type=float, default=MASSIVE_FACTOR,
                   help="leave out positions whose norm exceeds this many times the site's median (sae.data.massive); 0 = keep all")
    g.add_argument("--cache", action="store_true", help="cache activations on disk (later runs and resumes skip the model)")
    g.add_argument("--buffer-tokens", type=_parse_count, default=65_536,
                   help="shuffle buffer of the activation stream, per process (default 65,536, Llama Scope's)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    g.add_argument("--seed", type=int, default=0)


def open_source(args: argparse.Namespace, hooks: list[str], *, batch_size: int, max_tokens: int | None, seed: int,
                reuse: Any = None, shard: tuple[int, int] = (0, 1)) -> Any:
    """What add_data_arguments described: a dict of tensors, SyntheticData or an ActivationStream
    (`reuse`: an earlier stream whose loaded model is used again; `shard`: this process's part of the
    corpus, for a stream only, and then only rank 0 shows progress)."""
    if args.activations is not None:
        t = read_tensors(args.activations)
        missing = [h for h in hooks if h not in t]
        if missing:
            raise SAEError(f"{args.activations} has no site {missing[0]!r}; it has {', '.join(sorted(t))}")
        return {h: t[h] for h in hooks}
    if args.dataset == "synthetic":
        from sae.data.synthetic import SyntheticData

        bad = [h for h in hooks if h != "x"]
        if bad:
            raise SAEError(f"unknown site {bad[0]!r}: synthetic activations have one site, 'x'")
        return SyntheticData(**{"seed": args.seed, **_parse_kv(args.synthetic)})  # one dictionary per --seed
    from sae.data.stream import ActivationStream

    model, tokenizer = args.model, None
    if isinstance(reuse, ActivationStream):
        model, tokenizer = reuse.runner.model, reuse.tokenizer
    # a sample of N tokens: one buffer, not 65,536
    buffer = max_tokens if max_tokens else getattr(args, "buffer_tokens", 65_536)
    return ActivationStream(model, tokenizer, source=args.dataset, hooks=hooks, batch_size=batch_size,
                            max_tokens=max_tokens, context=args.context, pack=not args.no_pack, seed=seed,
                            buffer_tokens=buffer, model_dtype=args.model_dtype, massive_factor=args.massive_factor,
                            cache=True if args.cache else None, device=args.device, shard=shard,
                            progress=not getattr(args, "quiet", False) and shard[0] == 0)


def first_tokens(source: Any, hooks: list[str], n: int) -> dict[str, torch.Tensor]:
    """The first n rows of every hook, in memory (for post-processing several SAEs from one read)."""
    if isinstance(source, dict):
        return {h: source[h][:n] for h in hooks}
    from sae.data.synthetic import SyntheticData

    parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    seen = 0
    items = source.batches(4096) if isinstance(source, SyntheticData) else iter(source)
    for item in items:
        batch = _as_dict(item)
        take = min(n - seen, next(iter(batch.values())).shape[0])
        for h in hooks:
            parts[h].append(batch[h][:take].float())
        seen += take
        if seen >= n:
            break
    return {h: torch.cat(v) for h, v in parts.items()}


def spec_from_arg(text: str, args: argparse.Namespace) -> SAESpec:
    """`L15R-8x`, `L15TC-32x`, `L15R-8x-Vanilla` (the paper's names: sites and width from the name),
    or `NAME=HOOK_IN[->HOOK_OUT]` for any site (width from --expansion / --n-features)."""
    from sae.formats.names import looks_like_name, parse_name

    common = dict(k=args.k, k_anneal=not args.no_k_anneal, n_features=args.n_features)
    if "=" in text:
        name, _, hooks = text.partition("=")
        hook_in, _, hook_out = hooks.partition("->")
        return SAESpec(name=name.strip(), hook_in=hook_in.strip(), hook_out=hook_out.strip() or None,
                       expansion=args.expansion, activation=args.activation, **common)
    if not looks_like_name(text):
        return SAESpec(name=text, hook_in=text, expansion=args.expansion, activation=args.activation, **common)
    suite = "demo" if args.model == "embedded" and args.activations is None else "llama-scope"
    name = parse_name(text if ":" in text else f"{suite}:{text}")
    hook_in, hook_out = name.hooks
    model = "HuggingFaceTB/SmolLM2-135M-Instruct" if args.model == "embedded" else args.model
    if suite == "demo":  # the width is known before the model loads, so bad k / widths fail at once
        from sae.formats.names import SUITES

        common.update(d_in=SUITES["demo"].d_model, d_out=SUITES["demo"].d_model)
    return SAESpec(
        name=str(name), hook_in=hook_in, hook_out=hook_out, expansion=name.expansion,
        activation="relu" if name.variant == "Vanilla" else args.activation, **common,
        meta={"model": model, "layer": name.layer, "position": name.position},
    )


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m sae.train",
        description="Train TopK (Llama Scope recipe) and vanilla SAEs and transcoders from one activation stream, "
        "with checkpoints, resume, logs, and JumpReLU post-processing. Example: python -m sae.train "
        "--sae L15R-8x --sae L15R-32x --tokens 2M --out runs/l15",
    )
    w = p.add_argument_group("what to train")
    w.add_argument("--sae", action="append", default=[], metavar="NAME",
                   help="repeatable. Paper names (L15R-8x, L15A-32x, L15M-8x, L15TC-8x, L15R-8x-Vanilla) or "
                   "NAME=HOOK_IN[->HOOK_OUT] for any site (HOOK_OUT makes a transcoder)")
    w.add_argument("--hooks", default="", help="comma-separated hooks (blocks.15.hook_resid_post or L15R); one SAE each")
    w.add_argument("--expansion", type=int, default=8, help="features = expansion x d_in (names carry their own)")
    w.add_argument("--n-features", type=int, help="number of features (overrides --expansion)")
    w.add_argument("--activation", choices=("topk", "relu"), default="topk", help="topk (Llama Scope) or relu (vanilla)")
    w.add_argument("--k", type=int, default=50, help="TopK k (default 50)")
    w.add_argument("--out", type=Path, required=True, help="run folder: RUN/NAME/{config.json,log.csv,trained/,...}")
    w.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint (after a kill or a crash)")
    t = p.add_argument_group("recipe (defaults: the Llama Scope paper)")
    t.add_argument("--tokens", type=_parse_count, default=d.total_tokens, help=f"training tokens (default {d.total_tokens:,})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"tokens per step (default {d.batch_size})")
    t.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    t.add_argument("--betas", default=f"{d.beta1},{d.beta2}", help="Adam betas (default 0.9,0.999; released code 0.9,0.9999)")
    t.add_argument("--warmup", type=float, help="lr warm-up: steps if >= 1, a fraction if < 1 (default min(10000 steps, 5%%))")
    t.add_argument("--decay-frac", type=float, default=d.decay_frac, help="linear decay to 0 over this final fraction (0.2)")
    t.add_argument("--no-k-anneal", action="store_true", help="constant k (default: anneal over the first 10%% of steps)")
    t.add_argument("--k-anneal-frac", type=float, default=d.k_anneal_frac, help="fraction of steps for K-annealing (0.1)")
    t.add_argument("--k-start", default="half", help="annealing start: half (d/2, released code), d_model (paper) or a number")
    t.add_argument("--decoder-init-norm", default="paper", help="paper (sqrt(2 d / F)), code (0.5) or a number")
    t.add_argument("--b-dec-init", choices=("zero", "mean"), default="zero",
                   help="decoder bias at init: zero (paper) or the data mean (helps short runs on data with a large mean)")
    t.add_argument("--score-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="dtype of the TopK ranking matmul (auto: bfloat16 where the CPU/GPU has it; values stay fp32)")
    t.add_argument("--no-normalize", action="store_true", help="train on raw activations (default: average norm sqrt(d))")
    t.add_argument("--loss", choices=("mse", "batch-norm-mse"), default="mse",
                   help="mse (paper) or batch-norm-mse (released code: per token / ||batch-centred target||)")
    t.add_argument("--l1", type=float, default=d.l1_coefficient, help=f"vanilla L1 coefficient (default {d.l1_coefficient})")
    t.add_argument("--aux-k", type=int, default=0, help="AuxK dead-feature loss with this k (Gao et al.); 0 = off")
    t.add_argument("--aux-coef", type=float, default=d.aux_coef, help="AuxK weight (1/32)")
    t.add_argument("--dead-tokens", type=_parse_count, default=d.dead_tokens, help="AuxK: silent this long = dead (1M)")
    t.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm; 0 = off (released code: 0.001)")
    r = p.add_argument_group("run")
    r.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (default: about every 5%%)")
    r.add_argument("--log-every", type=int, default=d.log_every, help="steps between log rows (default 10)")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--tp", type=int, default=1,
                   help="under torchrun: split each SAE's features over groups of this many processes (tensor "
                   "parallel); the data-parallel size is processes / tp. Default 1: every process holds the whole SAE")
    r.add_argument("--distinct-tokens", type=_parse_count,
                   help="train in epochs over the first N tokens of the corpus (reshuffled each epoch; with --cache "
                   "the model runs only for the first); default: every training token is new")
    r.add_argument("--no-postprocess", action="store_true", help="skip folding + unit norms + JumpReLU at the end")
    r.add_argument("--threshold-tokens", type=int, default=32_768, help="N for the JumpReLU threshold (32768)")
    r.add_argument("--threshold-calibration", choices=("global", "per-feature"), default="global",
                   help="JumpReLU thresholds: global (one, mean L0 = k: the paper) or per-feature (each feature's "
                   "TopK firing rate); see python -m sae.postprocess")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    add_data_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sae_args = list(args.sae) + [h for h in (s.strip() for s in args.hooks.split(",")) if h]
    if not sae_args:
        raise SAEError("say what to train: --sae L15R-8x (repeatable) or --hooks blocks.15.hook_resid_post")
    specs = [spec_from_arg(a, args) for a in sae_args]
    try:
        b1, b2 = (float(b) for b in args.betas.split(","))
    except ValueError:
        raise SAEError(f"--betas wants two numbers, e.g. 0.9,0.999, not {args.betas!r}") from None
    k_start: str | int = args.k_start if args.k_start in ("half", "d_model") else int(args.k_start)
    init = args.decoder_init_norm if args.decoder_init_norm in ("paper", "code") else float(args.decoder_init_norm)
    config = TrainConfig(
        total_tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, beta1=b1, beta2=b2, warmup=args.warmup,
        decay_frac=args.decay_frac, k_anneal_frac=args.k_anneal_frac, k_start=k_start, decoder_init_norm=init,
        b_dec_init=args.b_dec_init, score_dtype=args.score_dtype, normalize=not args.no_normalize, loss=args.loss, l1_coefficient=args.l1, aux_k=args.aux_k,
        aux_coef=args.aux_coef, dead_tokens=args.dead_tokens, grad_clip=args.grad_clip, seed=args.seed,
        checkpoint_every=args.checkpoint_every or max(1, (args.tokens // args.batch_size) // 20),
        log_every=args.log_every, device=args.device, threads=args.threads,
    )
    validate(specs, config, None)  # k, options: before the model is loaded
    from sae.train.parallel import setup

    sharding = setup(args.tp, device=args.device)  # one process without torchrun
    try:
        sharding.validate({s.name: s.n_features or s.expansion * s.d_in for s in specs if s.n_features or s.d_in},
                          config.batch_size)
        if sharding.device is not None:  # under torchrun, each process has its own GPU
            config.device = str(sharding.device)
        return _train_and_postprocess(args, specs, config, sharding)
    finally:
        sharding.close()


def _train_and_postprocess(args: argparse.Namespace, specs: list[SAESpec], config: TrainConfig, sh: Sharding) -> int:
    """Train (every process reading its own shard of the corpus), then post-process on rank 0."""
    if not sh.is_main:  # one set of progress bars: rank 0's
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    hooks = list(dict.fromkeys(h for s in specs for h in (s.hook_in, s.out_hook)))
    distinct = args.distinct_tokens // sh.world if args.distinct_tokens else None
    source = open_source(args, hooks, batch_size=config.batch_size // sh.world, max_tokens=distinct, seed=args.seed,
                         shard=(sh.rank, sh.world))
    if hasattr(source, "hooks"):  # the stream canonicalises short site names (L15R -> blocks.15.hook_resid_post)
        from sae.lm.sites import parse_site

        for s in specs:
            s.hook_in = parse_site(s.hook_in).hook
            s.hook_out = parse_site(s.hook_out).hook if s.hook_out else None
    result = train(source, specs, config, out_dir=args.out, resume=args.resume, progress=not args.quiet, sharding=sh)
    if not sh.is_main:
        return 0
    print(f"trained {', '.join(result.saes)}: {result.steps} steps, {result.steps * config.batch_size:,} tokens, "
          f"{result.tokens_per_second:,.0f} tokens/s{f' ({sh.describe()})' if sh.world > 1 else ''}; run folder {args.out}")
    if args.no_postprocess:
        return 0
    from sae.train.postprocess import fold_and_normalise, postprocess_to

    topk = {name: sae for name, sae in result.saes.items() if sae.activation == "topk"}
    acts: dict[str, torch.Tensor] = {}
    if topk:  # one read of N tokens serves every SAE (the model runs once)
        need = list(dict.fromkeys(h for sae in topk.values() for h in (sae.meta.hook_in, sae.meta.hook_out)))
        src = open_source(args, need, batch_size=4096, max_tokens=args.threshold_tokens, seed=args.seed + 1, reuse=source)
        acts = first_tokens(src, need, args.threshold_tokens)
    for name, sae in result.saes.items():
        folder = args.out / name
        if name not in topk:
            fold_and_normalise(sae).save(folder)
            print(f"{name}: vanilla SAE folded to raw units with unit decoder norms -> {folder}")
            continue
        res = postprocess_to(sae, acts, folder, n_tokens=args.threshold_tokens, calibration=args.threshold_calibration)
        print(f"{name}: {res.calibration} JumpReLU thresholds over {res.n_tokens} tokens -> {folder}")
        print(res.report.to_string(index=False))
    return 0
