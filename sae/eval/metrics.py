"""The metrics of an SAE's reconstructions, from running sums: one implementation for every reader.

    sums = MetricSums(sae.n_features, sae.d_out)
    for x, y in batches:                             # x: [n, d_in], y: [n, d_out] (y = x except transcoders)
        values, idx = sae.encode_sparse(x)
        sums.add(x, y, sae.decode_sparse(values, idx), values, idx)
    sums.summary()                                   # l0, mse, explained variances, never-fired / dead / dense ...

Definitions (x = the SAE's input, y = its target (= x except for transcoders), y_hat = its output, sums
over evaluated tokens t and dimensions; N tokens, d = width of y):
- l0: mean number of features with a non-zero activation per token.
- mse: sum ||y - y_hat||^2 / (N d), raw units.
- explained_variance_uncentred: 1 - sum ||y - y_hat||^2 / sum ||y||^2 (the Llama Scope paper's Eq. 6).
- explained_variance_centred: 1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 (pooled over all
  evaluated tokens; Gemma Scope / SAELens convention).
- ce_clean, ce_spliced: mean next-token cross-entropy (nats) at scored positions, clean and with the
  SAE spliced in; a position t is scored when both token t and its target t+1 are ordinary.
- delta_lm_loss = ce_spliced - ce_clean. kl_div: mean KL(clean || spliced) of the next-token
  distributions at the same positions.
- ce_zero_ablation: the same with the output site set to zero (ordinary positions);
  ce_loss_recovered = (ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean).
- frequency (per feature): fraction of the N tokens on which it is non-zero. never_fired_fraction:
  fraction of features with frequency 0 over the N tokens; dead_fraction: the same, but only reported
  (else NaN) when N >= dead_window (100,000, the paper's window). dense_fraction: frequency > 0.1.
Sums are float64 (counts int64) on the CPU; a ratio whose denominator is 0 is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from sae.errors import SAEError

DEAD_WINDOW = 100_000
DENSE_THRESHOLD = 0.1


def explained_variance(sse: float, total: float) -> float:
    """1 - sse / total, NaN when total is not positive. total = sum ||y||^2 gives the uncentred EV,
    sum ||y - mean(y)||^2 (`centred_sumsq`) the centred one."""
    return 1 - sse / total if total > 0 else math.nan


def centred_sumsq(sumsq: float, sum_y: torch.Tensor, n: int) -> float:
    """sum_t ||y_t - mean(y)||^2 from sum_t ||y_t||^2, sum_y = sum_t y_t [d] and the token count n."""
    return sumsq - n * float((sum_y / n).pow(2).sum())


def firing_fractions(fires: torch.Tensor, n: int, dead_window: int = DEAD_WINDOW,
                     dense_threshold: float = DENSE_THRESHOLD) -> dict[str, float]:
    """never_fired_fraction, dead_fraction (NaN below dead_window tokens) and dense_fraction of the
    features, from fires [F] (tokens on which each fired) over n tokens."""
    never = float((fires == 0).double().mean())
    return {
        "never_fired_fraction": never,
        "dead_fraction": never if n >= dead_window else math.nan,
        "dense_fraction": float((fires.double() / n > dense_threshold).double().mean()),
    }


def position_edges(spec: str | Sequence[int] | None, context: int) -> list[int]:
    """Bucket edges for the per-position table: 'log2' (1, 2, 4, ...), a width ('64'), or a list."""
    if spec is None or spec == "log2":
        edges = [1]
        while edges[-1] < context:
            edges.append(edges[-1] * 2)
        return edges if edges[-1] >= context else edges + [context]
    if isinstance(spec, str):
        parts = [p for p in spec.replace(" ", "").split(",") if p]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise SAEError(f"position buckets must be 'log2', a width or comma-separated edges, not {spec!r}") from None
        if len(nums) == 1:
            if nums[0] < 1:
                raise SAEError("the position bucket width must be positive")
            return list(range(1, context + nums[0], nums[0]))
        spec = nums
    edges = sorted(set(int(e) for e in spec))
    if len(edges) < 2 or edges[0] < 0:
        raise SAEError(f"position bucket edges must be at least two non-negative numbers, got {list(spec)}")
    return edges


@dataclass
class NextTokenSums:
    """Sums of next-token cross-entropy and KL(clean || this) over scored positions."""

    tokens: int = 0
    ce: float = 0.0
    kl: float = 0.0

    def add(self, ce: float, kl: float, n: int) -> None:
        self.ce += ce
        self.kl += kl
        self.tokens += n

    @property
    def mean_ce(self) -> float:
        return self.ce / self.tokens if self.tokens else math.nan

    @property
    def mean_kl(self) -> float:
        return self.kl / self.tokens if self.tokens else math.nan


def lm_metrics(clean: NextTokenSums, spliced: NextTokenSums, zero: NextTokenSums) -> dict[str, float]:
    """ce_clean, ce_spliced, delta_lm_loss, kl_div, ce_zero_ablation and ce_loss_recovered (NaN without LM tokens)."""
    ce_clean, ce_s, ce_z = clean.mean_ce, spliced.mean_ce, zero.mean_ce
    return {
        "ce_clean": ce_clean, "ce_spliced": ce_s, "delta_lm_loss": ce_s - ce_clean, "kl_div": spliced.mean_kl,
        "ce_zero_ablation": ce_z,
        "ce_loss_recovered": (ce_z - ce_s) / (ce_z - ce_clean) if clean.tokens and ce_z != ce_clean else math.nan,
    }


def score_mask(mask: torch.Tensor, budget: int) -> torch.Tensor:
    """[B, T-1] from mask [B, T]: position t predicts t+1 and both are ordinary; at most `budget` of them, row-major."""
    score = mask[:, :-1] & mask[:, 1:]
    if int(score.sum()) > budget:
        score = score & (score.flatten().cumsum(0) <= budget).view_as(score)
    return score


def next_token_sums(logits: Callable[[torch.Tensor], torch.Tensor], clean_h: torch.Tensor, target_ids: torch.Tensor,
                    finals: dict[Hashable, torch.Tensor], chunk: int) -> tuple[float, dict[Hashable, tuple[float, float]]]:
    """(sum of clean CE, key -> (sum of CE, sum of KL(clean || it))) over the scored positions, chunk-wise.

    clean_h and every finals[key]: [n, d_model] final hidden states; target_ids: [n] next tokens;
    logits: hidden states -> [n, vocab] logits. KL = sum p log p - sum p log q, the first sum once per
    chunk (one [n, vocab] pass less per state; a state equal to the clean one gives exactly 0)."""
    clean = 0.0
    sums = {k: [0.0, 0.0] for k in finals}
    for s in range(0, clean_h.shape[0], chunk):
        tgt = target_ids[s : s + chunk, None]
        lp_c = logits(clean_h[s : s + chunk]).float().log_softmax(-1)
        clean += float(-lp_c.gather(-1, tgt).double().sum())
        p_c = lp_c.exp()
        neg_entropy = (p_c * lp_c).sum(-1)  # [n]
        for k, h in finals.items():
            lp = logits(h[s : s + chunk]).float().log_softmax(-1)
            sums[k][0] += float(-lp.gather(-1, tgt).double().sum())
            sums[k][1] += float((neg_entropy - (p_c * lp).sum(-1)).clamp_min(0).double().sum())
    return clean, {k: (ce, kl) for k, (ce, kl) in sums.items()}


@dataclass
class MetricSums:
    """Running sums behind one SAE's metrics: activation sums, firing counts, per-position-bucket sums
    (`n_buckets` of them) and next-token sums (`lm`)."""

    n_features: int
    d_out: int
    n_buckets: int = 0
    tokens: int = 0
    l0: float = 0.0  # sum of active features over tokens
    sse: float = 0.0  # sum ||y - y_hat||^2
    sumsq: float = 0.0  # sum ||y||^2
    norm_in: float = 0.0  # sum ||x||
    norm_out: float = 0.0  # sum ||y||
    sum_y: torch.Tensor = field(init=False)  # [d_out]
    fires: torch.Tensor = field(init=False)  # [F] int64
    pos_tokens: torch.Tensor = field(init=False)  # [n_buckets] int64
    pos_l0: torch.Tensor = field(init=False)  # [n_buckets]
    pos_sse: torch.Tensor = field(init=False)  # [n_buckets]
    pos_sumsq: torch.Tensor = field(init=False)  # [n_buckets]
    lm: NextTokenSums = field(default_factory=NextTokenSums)

    def __post_init__(self) -> None:
        self.sum_y = torch.zeros(self.d_out, dtype=torch.float64)
        self.fires = torch.zeros(self.n_features, dtype=torch.int64)
        self.pos_tokens = torch.zeros(self.n_buckets, dtype=torch.int64)
        self.pos_l0 = torch.zeros(self.n_buckets, dtype=torch.float64)
        self.pos_sse = torch.zeros(self.n_buckets, dtype=torch.float64)
        self.pos_sumsq = torch.zeros(self.n_buckets, dtype=torch.float64)

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, values: torch.Tensor, idx: torch.Tensor,
            bucket: torch.Tensor | None = None) -> None:
        """Add n tokens: x [n, d_in], y and y_hat [n, d_out] (float32), the sparse code values / idx [n, m];
        bucket [n] (CPU, long): each token's position bucket, outside [0, n_buckets) = in none."""
        active = values > 0
        l0 = active.sum(-1)
        err = (y - y_hat).pow(2).sum(-1).double()
        sq = y.pow(2).sum(-1).double()
        self.tokens += x.shape[0]
        self.l0 += float(l0.sum())
        self.sse += float(err.sum())
        self.sumsq += float(sq.sum())
        self.sum_y += y.double().sum(0).cpu()
        self.norm_in += float(x.double().norm(dim=-1).sum())
        self.norm_out += float(sq.sqrt().sum())
        self.fires += torch.bincount(idx[active].flatten().cpu(), minlength=self.n_features)
        if bucket is None or not self.n_buckets:
            return
        keep = (bucket >= 0) & (bucket < self.n_buckets)
        bk, l0c, errc, sqc = bucket[keep], l0.cpu()[keep], err.cpu()[keep], sq.cpu()[keep]
        self.pos_tokens += torch.bincount(bk, minlength=self.n_buckets)
        self.pos_l0 += torch.bincount(bk, weights=l0c.double(), minlength=self.n_buckets)
        self.pos_sse += torch.bincount(bk, weights=errc, minlength=self.n_buckets)
        self.pos_sumsq += torch.bincount(bk, weights=sqc, minlength=self.n_buckets)

    def frequencies(self) -> torch.Tensor:
        """[F] float64: the fraction of the tokens on which each feature fired."""
        return self.fires.double() / self.tokens

    def summary(self, dead_window: int = DEAD_WINDOW, dense_threshold: float = DENSE_THRESHOLD) -> dict[str, float]:
        """tokens, l0, mse, explained_variance_uncentred / _centred, never_fired / dead / dense_fraction,
        input_norm and target_norm (mean ||x||, ||y||)."""
        n = self.tokens
        if n == 0:
            raise SAEError("no tokens were added: the metrics are undefined")
        return {
            "tokens": n, "l0": self.l0 / n, "mse": self.sse / (n * self.d_out),
            "explained_variance_uncentred": explained_variance(self.sse, self.sumsq),
            "explained_variance_centred": explained_variance(self.sse, centred_sumsq(self.sumsq, self.sum_y, n)),
            **firing_fractions(self.fires, n, dead_window, dense_threshold),
            "input_norm": self.norm_in / n, "target_norm": self.norm_out / n,
        }

    def position_summary(self, edges: Sequence[int]) -> list[dict[str, float]]:
        """Per non-empty bucket [edges[j], edges[j+1]): bucket_start, bucket_end, tokens, l0, mse,
        explained_variance_uncentred."""
        rows = []
        for j in range(self.n_buckets):
            m = int(self.pos_tokens[j])
            if m == 0:
                continue
            sse = float(self.pos_sse[j])
            rows.append({
                "bucket_start": edges[j], "bucket_end": edges[j + 1], "tokens": m,
                "l0": float(self.pos_l0[j]) / m, "mse": sse / (m * self.d_out),
                "explained_variance_uncentred": explained_variance(sse, float(self.pos_sumsq[j])),
            })
        return rows
