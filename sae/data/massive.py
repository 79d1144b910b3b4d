"""Massive activations: positions left out like BOS, by one rule used everywhere.

Some tokens get a residual norm tens to hundreds of times the typical one (Sun et al. 2024, "Massive
activations in large language models"). Llama-3.1-8B has its own at BOS, which is masked anyway;
SmolLM2 has them at the first token after BOS of some documents (at L15R: norms of 1,000-26,000 against
a median of about 170). A handful of such tokens carries most of the squared error of any SAE, so they
would dominate pooled metrics, the dataset-wise normalisation and the training loss.

The rule: **a position is massive when its activation norm at any site of the run exceeds
`MASSIVE_FACTOR` (10) times the median norm of that site over the ordinary positions of its token
batch.** It is applied on top of the special-token mask in the activation stream (training batches and
the dataset-wise normalisation), in `sae.eval.evaluate` (every metric, the LM metrics included: massive
positions keep the model's own activation and are not scored, as BOS) and in top-context collection.
The tables report how many positions it left out (`massive_tokens`). `massive_factor=0` turns it off.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

MASSIVE_FACTOR = 10.0


def massive_positions(acts: Iterable[torch.Tensor], mask: torch.Tensor, factor: float = MASSIVE_FACTOR) -> torch.Tensor:
    """[B, T] bool: ordinary positions (`mask`) whose norm at any of `acts` ([B, T, d] each) exceeds
    `factor` x that site's median norm over the ordinary positions; all False when factor <= 0."""
    out = torch.zeros_like(mask, dtype=torch.bool)
    if factor <= 0 or not bool(mask.any()):
        return out
    for a in acts:
        norms = a.float().norm(dim=-1)
        median = norms[mask].median()
        out |= mask & (norms > factor * median)
    return out


__all__ = ["MASSIVE_FACTOR", "massive_positions"]
