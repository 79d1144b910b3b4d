"""SAEs the tests build: random ones of any shape, random ones at the tiny Llama's sites, planted detectors."""

from __future__ import annotations

import torch
from conftest import TINY_D

from sae import SAEMeta, SparseAutoencoder


def random_sae(activation="topk", d_in=12, n=48, d_out=None, k=5, seed=0, threshold=0.0):
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(d_in, n, d_out=d_out, activation=activation, k=k, threshold=threshold)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.copy_(0.5 * torch.randn(n, generator=g))
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g) * (0.2 + 3 * torch.rand(n, 1, generator=g)))
        sae.b_dec.copy_(torch.randn(sae.d_out, generator=g))
    return sae


def site_sae(hook_in: str, hook_out: str | None = None, activation: str = "topk", seed: int = 0, n: int = 256,
             k: int = 8, threshold: float = 0.3) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    s = SparseAutoencoder.from_weights(
        torch.randn(TINY_D, n, generator=g) / TINY_D**0.5, torch.randn(n, generator=g) * 0.1,
        torch.randn(n, TINY_D, generator=g) / n**0.5, torch.randn(TINY_D, generator=g) * 0.1, threshold,
        activation=activation, k=k, meta=SAEMeta(hook_in=hook_in, hook_out=hook_out or hook_in),
    )
    return s.requires_grad_(False)


def detector_sae(model, token_ids: list[int], hook: str = "blocks.0.hook_resid_pre") -> SparseAutoencoder:
    """Feature i fires (with activation 1) on token_ids[i] only: it reads the embeddings."""
    emb = model.get_input_embeddings().weight
    sae = SparseAutoencoder(emb.shape[1], len(token_ids) + 1, activation="jumprelu",
                            meta=SAEMeta(name="planted", hook_in=hook))
    with torch.no_grad():
        for i, t in enumerate(token_ids):
            sae.W_enc[:, i] = emb[t] / emb[t].norm() ** 2
        sae.W_enc[:, -1] = 0.0  # never fires
        sae.threshold.fill_(0.8)
        sae.W_dec.normal_()
    return sae.requires_grad_(False)
