"""Two dictionaries A (narrow) and B (wide) with planted structure, and the truth about every feature.

Used by the tests and the benchmark. Every planted relation sits well inside the default thresholds
of docs/methods.md (cut 0.7, same 0.9), so a correct `compare` recovers it:

  B kind       how it is made                                    class      family (of its component)
  copy         an A row                                          same       1:1
  noisy        an A row + noise, cos ~0.95                       same       1:1
  child        2-3 per parent A row, cos ~0.8 to the parent      refined    split
  merge        u, between two A rows u + noise (cos ~0.85)       refined    merge
  tangled      2 B rows and 2 A rows around u, all cos ~0.8      refined    tangled
  mixture      2-3 "lost" A rows, non-negative weights + noise   composite  novel
  new          a random direction                                novel      novel
  dead         zero rows, or firing frequency 0                  dead       -
A rows that nothing in B comes from are `lost` (1:0); mixtures draw their atoms from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass
class Planted:
    a: torch.Tensor  # [n_a, d]
    b: torch.Tensor  # [n_b, d]
    truth_a: pd.DataFrame  # feature, kind, family
    truth_b: pd.DataFrame  # feature, kind, cls, family, sources (the A rows it was made from)
    freq_a: np.ndarray  # firing frequencies (0 marks frequency-dead rows)
    freq_b: np.ndarray


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def planted(
    n_a: int = 1000,
    d: int = 256,
    *,
    n_b: int | None = None,
    noise: float = 1.0,
    dead_frac: float = 0.01,
    seed: int = 0,
) -> Planted:
    """A [n_a, d] and B [n_b, d] with planted copies, splits, merges, tangles, mixtures, new and dead
    rows. B holds about 0.95 n_a rows of planted structure; `n_b` pads it with new directions.
    `noise` scales every perturbation (1.0 = the cosines in the module docstring); use d >= 512 so
    that random projections (sd ~ 1/sqrt(d)) stay well inside the thresholds."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    jitter = lambda x, s: _unit(_unit(x) + noise * s * _unit(randn(*x.shape)))  # noqa: E731
    u = lambda n: _unit(randn(n, d))  # noqa: E731

    # A is laid out in blocks: copies, noisy, split parents, merge pairs, tangled pairs, lost, dead.
    q = n_a // 20
    n_copy, n_noisy, n_split, n_merge, n_tangle = 2 * q, 2 * q, 3 * q, q, q  # merge/tangle: pairs
    n_dead_a = max(1, int(dead_frac * n_a))
    n_lost = n_a - (n_copy + n_noisy + n_split + 2 * n_merge + 2 * n_tangle + n_dead_a)
    a_parts, b_parts, ta, tb = [], [], [], []

    def add_a(x, kind, fam):
        ta.extend((kind, fam) for _ in range(len(x)))
        a_parts.append(x)

    def add_b(x, kind, cls, fam, sources):
        tb.extend((kind, cls, fam, s) for s in sources)
        b_parts.append(x)

    off = 0  # index of the next A block
    x = u(n_copy)
    add_a(x, "copy", "1:1")
    add_b(x.clone(), "copy", "same", "1:1", [(off + i,) for i in range(n_copy)])
    off += n_copy
    x = u(n_noisy)
    add_a(x, "noisy", "1:1")
    add_b(jitter(x, 0.33), "noisy", "same", "1:1", [(off + i,) for i in range(n_noisy)])
    off += n_noisy
    x = u(n_split)
    add_a(x, "parent", "split")
    n_child = 2 + torch.randint(0, 2, (n_split,), generator=g)
    par = torch.repeat_interleave(torch.arange(n_split), n_child)
    add_b(jitter(x[par], 0.75), "child", "refined", "split", [(off + int(p),) for p in par])
    off += n_split
    c = u(n_merge)
    add_a(jitter(c.repeat_interleave(2, 0), 0.62), "merged", "merge")
    add_b(c, "merge", "refined", "merge", [(off + 2 * i, off + 2 * i + 1) for i in range(n_merge)])
    off += 2 * n_merge
    c = u(n_tangle).repeat_interleave(2, 0)
    add_a(jitter(c, 0.5), "tangled", "tangled")
    add_b(jitter(c, 0.5), "tangled", "refined", "tangled", [(off + i - i % 2, off + i - i % 2 + 1) for i in range(2 * n_tangle)])
    off += 2 * n_tangle
    lost = u(n_lost)
    add_a(lost, "lost", "lost")
    # Mixtures of 2 (equal weights) or 3 (weights 0.9-1.1) lost rows: best single cosine <= 0.65,
    # R^2 about 0.85, so "composite" by the rule, which the best cosine alone would not show.
    n_mix = max(1, n_lost // 3)
    srcs, rows = [], []
    for i in range(n_mix):
        pick = torch.randperm(n_lost, generator=g)[: 2 + i % 2]
        w = torch.ones(len(pick)) if len(pick) == 2 else 0.9 + 0.2 * torch.rand(len(pick), generator=g)
        rows.append((w[:, None] * lost[pick]).sum(0))
        srcs.append(tuple(off + int(p) for p in pick))
    add_b(jitter(torch.stack(rows), 0.42), "mixture", "composite", "novel", srcs)
    off += n_lost
    add_a(torch.zeros(n_dead_a, d), "dead", "-")
    made = sum(len(p) for p in b_parts)
    total = n_b or made + q + max(2, int(dead_frac * made))
    n_dead_b = max(2, int(dead_frac * total))
    n_new = max(1, total - made - n_dead_b)
    add_b(u(n_new), "new", "novel", "novel", [() for _ in range(n_new)])
    add_b(torch.zeros(n_dead_b // 2, d), "dead", "dead", "-", [() for _ in range(n_dead_b // 2)])
    add_b(u(n_dead_b - n_dead_b // 2), "dead", "dead", "-", [() for _ in range(n_dead_b - n_dead_b // 2)])

    a, b = torch.cat(a_parts), torch.cat(b_parts)
    # Shuffle both, so nothing can lean on positions.
    pa, pb = torch.randperm(len(a), generator=g), torch.randperm(len(b), generator=g)
    inv_a = torch.argsort(pa)
    truth_a = pd.DataFrame(ta, columns=["kind", "family"]).iloc[pa.numpy()].reset_index(drop=True)
    truth_b = pd.DataFrame(tb, columns=["kind", "cls", "family", "sources"]).iloc[pb.numpy()].reset_index(drop=True)
    truth_b["sources"] = [tuple(int(inv_a[s]) for s in src) for src in truth_b["sources"]]
    truth_a.insert(0, "feature", np.arange(len(a)))
    truth_b.insert(0, "feature", np.arange(len(b)))
    rng = np.random.default_rng(seed)
    freq_a = np.where(truth_a["kind"] == "dead", 0.0, rng.uniform(1e-4, 1e-2, len(a)))
    freq_b = np.where(truth_b["kind"] == "dead", 0.0, rng.uniform(1e-4, 1e-2, len(b)))
    return Planted(a[pa], b[pb], truth_a, truth_b, freq_a, freq_b)
