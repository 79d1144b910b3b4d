"""The numbers of a comparison's summary: quantiles of max-cosine distributions, the interference
scale epsilon, the random-direction and isotropic baselines, class counts and the split factor."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.special import betaincinv

from geometry.options import Options
from geometry.similarity import top_k_cosine, unit_rows

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def epsilon(n: int, d: int) -> float:
    """sqrt(12 ln F / D): the interference scale of F nearly-orthogonal directions in D dimensions."""
    return math.sqrt(12 * math.log(max(n, 2)) / d)


def quantiles(x: np.ndarray) -> dict[str, float]:
    """{level: value} at QUANTILES ({} for no values)."""
    return {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(x, QUANTILES))} if len(x) else {}


def distribution(x: np.ndarray, opts: Options) -> dict:
    """Quantiles, mean and the shares at or above the cut and the 'same' threshold of max cosines x: [n]."""
    return {"quantiles": quantiles(x), "mean": float(x.mean()), "frac_ge_cut": float((x >= opts.cut).mean()),
            "frac_ge_same": float((x >= opts.same).mean())}


def isotropic_quantiles(n: int, d: int) -> dict:
    """Quantiles of the max cosine between a fixed direction and n uniform random directions in R^d
    (closed form: P(cos > t) = I_{1-t^2}((d-1)/2, 1/2) / 2, independent draws)."""
    q = np.asarray(QUANTILES)
    tail = -np.expm1(np.log(q) / n)  # P(one cos > t) at the q-quantile of the max
    t = np.sqrt(1 - betaincinv((d - 1) / 2, 0.5, np.clip(2 * tail, 0, 1)))
    return {str(k): float(v) for k, v in zip(QUANTILES, t)}


def random_baselines(dirs_a: torch.Tensor, dirs_b: torch.Tensor, opts: Options, sim: dict) -> tuple[dict, dict]:
    """Max cosine of random directions against each real dictionary (a random rotation of the query
    side, which keeps the target's anisotropy), and the isotropic closed form.

    dirs_a: [n_a, d], dirs_b: [n_b, d] unit rows; sim: keywords of `top_k_cosine` (block, device, precision).
    Returns the samples {"b_to_a", "a_to_b"} and their summary (baseline_* and isotropic_* quantiles)."""
    d = dirs_a.shape[1]
    g = torch.Generator().manual_seed(0x6E0D + 7919 * opts.seed)  # not the seed users' data are likely made with
    samples, summary = {}, {}
    for key, query, target in (("b_to_a", dirs_b, dirs_a), ("a_to_b", dirs_a, dirs_b)):
        m = min(opts.baseline_samples, max(128, len(query) // 64))  # a few % of the main pass
        q = unit_rows(torch.randn(m, d, generator=g))
        samples[key] = top_k_cosine(q, target, 1, normalised=True, **sim).a_to_b.values[:, 0].numpy()
        summary[f"baseline_{key}"] = {"quantiles": quantiles(samples[key]), "n_samples": m}
        summary[f"isotropic_{key}"] = {"quantiles": isotropic_quantiles(len(target), d)}
    return samples, summary


def counts(values: pd.Series, names) -> dict[str, int]:
    """How often each of `names` occurs in `values` (0 for those absent)."""
    c = values.value_counts()
    return {n: int(c.get(n, 0)) for n in names}


def weighted(values: pd.Series, freq: np.ndarray, names) -> dict[str, float]:
    """The share of the total firing frequency freq: [n] that falls on each of `names` in values: [n]."""
    total = freq.sum()
    s = pd.Series(freq).groupby(values.to_numpy()).sum()
    return {n: float(s.get(n, 0.0) / total) if total > 0 else 0.0 for n in names}


def split_summary(children: np.ndarray) -> dict:
    """Histogram (0..7, 8+) of children per A feature children: [n_a], the share split (>= 2 children),
    the mean among those with any, and the maximum."""
    hist = np.bincount(np.minimum(children, 8), minlength=9)
    has = children[children > 0]
    return {"histogram": {**{str(i): int(hist[i]) for i in range(8)}, "8+": int(hist[8])},
            "frac_split": float((children >= 2).mean()), "mean_children_given_any": float(has.mean()) if len(has) else 0.0,
            "max_children": int(children.max()) if len(children) else 0}
