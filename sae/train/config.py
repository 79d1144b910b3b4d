"""What to train (`SAESpec`) and how (`TrainConfig`: the Llama Scope paper's defaults), their schedules
and the checks that refuse a bad request before any compute.

The fields declared with `option()` are also the flags of `python -m sae.train` (`sae.cli`); their
`group` keys place them in its help.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sae.cli import check_options, name_or_number, option, parse_count
from sae.devices import check_device
from sae.errors import SAEError, ShapeError

# Vanilla (ReLU + L1) default: lambda multiplies mean_tokens(sum_i f_i ||W_dec,i||) against the
# per-element MSE in normalised space. On the embedded model's L15R, trained on the whole train split
# (925-1,850 steps of 1,024 tokens), 1.4e-3 gives the paper's vanilla L0 of ~150 (docs/training.md,
# "The vanilla L1 default"); short runs need more (L0 falls as training goes on).
DEFAULT_L1 = 1.4e-3
MAX_TOKENS = 10**13  # more than any corpus a run could read: a larger budget is a typo
MAX_BATCH = 2**24

ACTIVATIONS = ("topk", "relu")
LOSSES = ("mse", "batch-norm-mse")
K_STARTS = ("half", "d_model")
DECODER_INIT_NORMS = ("paper", "code")
B_DEC_INITS = ("zero", "mean")
SCORE_DTYPES = ("auto", "float32", "bfloat16")


class TrainingError(SAEError):
    """Training cannot go on (NaN/Inf loss, a checkpoint that does not match the run)."""


@dataclass
class SAESpec:
    """One SAE to train. `hook_out` different from `hook_in` makes it a transcoder."""

    name: str = "sae"
    hook_in: str = "x"
    hook_out: str | None = None
    n_features: int | None = option(None, "number of features (overrides --expansion)", min=1)  # default: expansion x d_in
    expansion: int = option(8, "features = expansion x d_in (names carry their own)", min=1)
    activation: str = option("topk", "topk (Llama Scope) or relu (vanilla: ReLU + L1)", choices=ACTIVATIONS)
    k: int = option(50, "TopK k", min=1)
    k_anneal: bool = option(True, "constant k (default: anneal over the first 10% of steps)", switch=True,
                            group="recipe")
    l1_coefficient: float | None = None  # vanilla only; None = TrainConfig.l1_coefficient
    d_in: int | None = None  # expected widths (checked against the data before training)
    d_out: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # SAEMeta fields (model, layer, position, ...)

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def out_hook(self) -> str:
        return self.hook_out or self.hook_in

    @property
    def transcoder(self) -> bool:
        return self.out_hook != self.hook_in


@dataclass
class TrainConfig:
    """Settings shared by every SAE of a run. Defaults are the Llama Scope paper's."""

    total_tokens: int = option(2_000_000, "training tokens", flag="tokens", parse=parse_count, min=1, max=MAX_TOKENS)
    batch_size: int = option(4096, "tokens per step", min=1, max=MAX_BATCH)
    lr: float = option(8e-4, "Adam learning rate", above=0, max=1)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup: float | None = option(None, "lr warm-up: steps if >= 1, a fraction if < 1 (default min(10000 steps, 5%))", min=0)
    decay_frac: float = option(0.2, "linear decay to 0 over this final fraction", min=0, max=1)
    k_anneal_frac: float = option(0.1, "fraction of steps for K-annealing", min=0, max=1)
    k_start: str | int = option("half", "annealing start: half (d/2, released code), d_model (paper) or a number",
                                parse=name_or_number(K_STARTS, int), min=1)
    decoder_init_norm: str | float = option("paper", "paper (sqrt(2 d / F)), code (0.5) or a number",
                                            parse=name_or_number(DECODER_INIT_NORMS, float), above=0)
    b_dec_init: str = option("zero", "decoder bias at init: zero (paper) or the data mean (helps short runs on data "
                             "with a large mean; as sparsify: the first batch's mean target)", choices=B_DEC_INITS)
    score_dtype: str = option("auto", "dtype of the big matmuls: the TopK ranking, AuxK's and the vanilla SAE's "
                              "(auto: bfloat16 where the CPU/GPU has it; weights, TopK values and losses stay fp32)",
                              choices=SCORE_DTYPES)
    normalize: bool = option(True, "train on raw activations (default: dataset-wise, average norm sqrt(d))", switch=True)
    norm_tokens: int = 16_384  # tokens used to measure the average norm (when the source has no stats)
    loss: str = option("mse", "mse (paper) or batch-norm-mse (released code: per token / ||batch-centred target||)",
                       choices=LOSSES)
    l1_coefficient: float = option(DEFAULT_L1, "vanilla L1 coefficient", flag="l1", min=0)
    l1_warmup_frac: float = 0.05  # vanilla: lambda ramps up linearly over this fraction
    aux_k: int = option(0, "AuxK dead-feature loss with this k (Gao et al. use 512; e.g. d/2); 0 = off", min=0)
    aux_coef: float = option(1 / 32, "AuxK weight", min=0)
    dead_tokens: int = option(1_000_000, "AuxK: a feature silent this many tokens counts as dead", parse=parse_count, min=1)
    grad_clip: float = option(0.0, "max global gradient norm; 0 = off (released code: 0.001)", min=0)
    alive_window: int = 1_000_000  # "alive" = fired within the last this-many tokens
    seed: int = 0
    checkpoint_every: int = option(0, "steps between checkpoints; 0 = only at the end (python -m sae.train: "
                                   "about every 5%)", group="run", min=0)
    log_every: int = option(10, "steps between log rows", group="run", min=1)
    device: str = "cpu"
    threads: int = option(0, "torch CPU threads; 0 = leave as is (torch's choice)", group="run", min=0)

    def __post_init__(self) -> None:
        check_options(self)
        check_device(self.device)

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
    _check_choice("loss", config.loss, LOSSES)
    if isinstance(config.k_start, str):
        _check_choice("k_start", config.k_start, K_STARTS)
    if isinstance(config.decoder_init_norm, str):
        _check_choice("decoder_init_norm", config.decoder_init_norm, DECODER_INIT_NORMS)
    _check_choice("b_dec_init", config.b_dec_init, B_DEC_INITS)
    _check_choice("score_dtype", config.score_dtype, SCORE_DTYPES)
    if config.batch_size < 1 or config.total_tokens < config.batch_size:
        raise SAEError(f"total_tokens ({config.total_tokens}) must be at least one batch ({config.batch_size})")
    names = [s.name for s in specs]
    if not specs:
        raise SAEError("nothing to train: give at least one SAE")
    if len(set(names)) != len(names):
        raise SAEError(f"SAE names must be distinct: {names}")
    for s in specs:
        _check_choice(f"{s.name}: activation", s.activation, ACTIVATIONS)
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
