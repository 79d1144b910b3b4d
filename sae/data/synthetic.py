"""Activations from a known dictionary: ground truth for training tests and benchmarks.

The generator plants `n_features` unit directions in R^d and writes every token as a sparse,
non-negative combination of them plus a little noise:

- hierarchy: features come in families. A parent fires on its own; when it fires, with probability
  `p_child` one of its children fires too (never a child without its parent), and a child's direction
  refines its parent's (cosine `child_cos`), the way "animal" and "dog" do in a language model;
- correlated firing: parents are grouped; within a group, the Gaussians that decide firing share a
  factor (correlation `corr`), so features of a group tend to fire together;
- heavy-tailed magnitudes: log-normal with shape `sigma`, and parents' firing rates log-uniform between
  `freq_min` and `freq_max` (a few frequent features, a long tail of rare ones).

`recovery(true, learned)` scores a learned decoder: the mean over true features of their best cosine
to any decoder row, and the fraction of true features recovered at cosine >= 0.9.
Every batch is a pure function of (seed, batch index), so an interrupted run can restart at any batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from sae.errors import SAEError


@dataclass
class SyntheticConfig:
    d: int = 64
    n_parents: int = 48
    children_per_parent: int = 2
    child_cos: float = 0.5  # cosine between a child's direction and its parent's
    p_child: float = 0.5  # P(one child fires | parent fires)
    freq_min: float = 0.02  # parents' firing rates are log-uniform in [freq_min, freq_max]
    freq_max: float = 0.1
    group_size: int = 4  # parents per correlated group
    corr: float = 0.5  # correlation of the firing Gaussians inside a group
    sigma: float = 0.75  # log-normal shape of the magnitudes (heavier tail when larger)
    noise: float = 0.02  # isotropic noise, per dimension, relative to a unit feature
    offset: float = 0.0  # norm of a constant vector added to every token (a mean the SAE's b_dec learns)
    seed: int = 0

    def __post_init__(self) -> None:
        bad = next(((key, rule) for key, ok, rule in (
            ("d", self.d >= 1, ">= 1"), ("n_parents", self.n_parents >= 1, ">= 1"),
            ("children_per_parent", self.children_per_parent >= 0, ">= 0"), ("group_size", self.group_size >= 1, ">= 1"),
            ("child_cos", -1 <= self.child_cos <= 1, "in [-1, 1]"), ("p_child", 0 <= self.p_child <= 1, "in [0, 1]"),
            ("corr", 0 <= self.corr < 1, "in [0, 1)"), ("freq_min", 0 < self.freq_min <= self.freq_max <= 1,
                                                        "0 < freq_min <= freq_max <= 1"),
            ("sigma", self.sigma >= 0, ">= 0"), ("noise", self.noise >= 0, ">= 0")) if not ok), None)
        if bad:
            raise SAEError(f"synthetic {bad[0]}={getattr(self, bad[0])!r}: must be {bad[1]}")

    @property
    def n_features(self) -> int:
        return self.n_parents * (1 + self.children_per_parent)


class SyntheticData:
    """A planted dictionary and a sampler. `features` is [n_features, d], unit rows: parents first,
    then children in parent order (child j of parent p is row n_parents + p * children_per_parent + j).

    Iterating yields [batch_size, d] float32 tensors forever (`batches(...)` sets the size and start).
    """

    def __init__(self, config: SyntheticConfig | None = None, **overrides):
        cfg = config or SyntheticConfig()
        if overrides:
            cfg = SyntheticConfig(**{**asdict(cfg), **overrides})
        self.config = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        P, C, d = cfg.n_parents, cfg.children_per_parent, cfg.d
        parents = _unit(torch.randn(P, d, generator=g))
        if C:
            r = torch.randn(P, C, d, generator=g)
            r = r - (r * parents[:, None]).sum(-1, keepdim=True) * parents[:, None]  # orthogonal to parent
            kids = cfg.child_cos * parents[:, None] + math.sqrt(1 - cfg.child_cos**2) * _unit(r)
            self.features = torch.cat([parents, _unit(kids.reshape(P * C, d))])
        else:
            self.features = parents
        u = torch.rand(P, generator=g)
        self.freq = torch.exp(math.log(cfg.freq_min) + u * (math.log(cfg.freq_max) - math.log(cfg.freq_min)))
        normal = torch.distributions.Normal(0.0, 1.0)
        self._cut = normal.icdf(1 - self.freq)  # fire when the (unit-variance) Gaussian exceeds this
        self.group = torch.arange(P) // max(cfg.group_size, 1)
        self.offset = _unit(torch.randn(d, generator=g)) * cfg.offset

    @property
    def d(self) -> int:
        return self.config.d

    @property
    def n_features(self) -> int:
        return self.features.shape[0]

    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, n_features] non-negative coefficients (mostly zero)."""
        cfg = self.config
        P, C = cfg.n_parents, cfg.children_per_parent
        n_groups = int(self.group.max()) + 1
        shared = torch.randn(n, n_groups, generator=generator)[:, self.group]
        z = math.sqrt(cfg.corr) * shared + math.sqrt(1 - cfg.corr) * torch.randn(n, P, generator=generator)
        fire = z > self._cut
        codes = torch.zeros(n, self.n_features)
        mags = torch.exp(cfg.sigma * torch.randn(n, self.n_features, generator=generator))
        codes[:, :P] = fire * mags[:, :P]
        if C:
            has_child = fire & (torch.rand(n, P, generator=generator) < cfg.p_child)
            which = torch.randint(C, (n, P), generator=generator)
            child = torch.zeros(n, P, C, dtype=torch.bool)
            child.scatter_(2, which[..., None], has_child[..., None])
            codes[:, P:] = child.reshape(n, P * C) * mags[:, P:]
        return codes

    def sample(self, n: int, generator: torch.Generator | None = None, *, return_codes: bool = False):
        """n tokens [n, d] (and their codes [n, n_features] with return_codes)."""
        g = generator or torch.Generator().manual_seed(self.config.seed + 1)
        codes = self.sample_codes(n, g)
        x = codes @ self.features + self.offset + self.config.noise * torch.randn(n, self.d, generator=g)
        return (x, codes) if return_codes else x

    def batch(self, index: int, batch_size: int) -> torch.Tensor:
        """Batch number `index`: the same tensor every time it is asked for."""
        g = torch.Generator().manual_seed(_mix(self.config.seed, index))
        return self.sample(batch_size, g)

    def batches(self, batch_size: int = 4096, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        i = start
        while stop is None or i < stop:
            yield self.batch(i, batch_size)
            i += 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches()

    def recovery(self, decoder: torch.Tensor, threshold: float = 0.9) -> dict[str, float]:
        return recovery(self.features, decoder, threshold)


def recovery(true_features: torch.Tensor, decoder: torch.Tensor, threshold: float = 0.9) -> dict[str, float]:
    """How well decoder rows [F, d] recover true unit features [n, d].

    mean_max_cos: mean over true features of the best cosine to any decoder row;
    frac_recovered: fraction of true features whose best cosine is >= threshold.
    """
    cos = _unit(true_features.float()) @ _unit(decoder.detach().float()).T
    best = cos.max(dim=1).values
    return {
        "mean_max_cos": float(best.mean()),
        "frac_recovered": float((best >= threshold).float().mean()),
        "threshold": threshold,
    }


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _mix(seed: int, index: int) -> int:
    """A batch's generator seed: distinct for every (seed, index), stable across runs."""
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1)
