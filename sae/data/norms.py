"""The dataset-wise mean activation norm per site (Llama Scope normalises every site to sqrt(d) by it)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class NormMeans:
    """Mean L2 norm per hook over the first `limit` tokens added (batches beyond it are ignored)."""

    def __init__(self, hooks: Iterable[str], limit: int):
        self.sums = {h: 0.0 for h in hooks}
        self.limit = limit
        self.seen = 0

    @property
    def full(self) -> bool:
        return self.seen >= self.limit

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        """batch: {hook: [n, d]}, the same n tokens at every hook."""
        n = next(iter(batch.values())).shape[0]
        take = min(self.limit - self.seen, n)
        if take <= 0:
            return
        for h in self.sums:
            self.sums[h] += float(batch[h][:take].double().norm(dim=-1).sum())
        self.seen += take

    def means(self) -> dict[str, float]:
        return {h: s / self.seen for h, s in self.sums.items()}


def mean_norms(batches: Iterable[dict[str, torch.Tensor]], hooks: Iterable[str], n_tokens: int) -> NormMeans:
    """The mean norms of `hooks` over the first `n_tokens` tokens of `batches` (fewer if they run out)."""
    acc = NormMeans(hooks, n_tokens)
    for batch in batches:
        acc.add(batch)
        if acc.full:
            break
    return acc
