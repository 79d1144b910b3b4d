"""A fresh SAE for a spec, initialised as Llama Scope does."""

from __future__ import annotations

import math

import torch

from sae.model import SAEMeta, SparseAutoencoder
from sae.train.config import SAESpec, TrainConfig


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
    norm = decoder_init_norm(config, d_out, n)
    with torch.no_grad():
        W = _kaiming_uniform(n, d_out, generator)  # [F, d_out]
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True) * norm)
        if spec.transcoder:
            E = _kaiming_uniform(n, d_in, generator)  # [F, d_in]
            sae.W_enc.copy_((E / E.norm(dim=1, keepdim=True) * norm).T)
        else:
            sae.W_enc.copy_(sae.W_dec.T)
    return sae


def decoder_init_norm(config: TrainConfig, d_out: int, n_features: int) -> float:
    """The norm of every decoder row at init: "paper" sqrt(2 d_out / F), "code" 0.5, or the number given."""
    if config.decoder_init_norm == "paper":
        return math.sqrt(2 * d_out / n_features)
    if config.decoder_init_norm == "code":
        return 0.5
    return float(config.decoder_init_norm)


def _kaiming_uniform(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    bound = math.sqrt(6 / cols)  # torch's kaiming_uniform_ (a=0, fan_in = cols): the scale is reset anyway
    return (torch.rand(rows, cols, generator=g) * 2 - 1) * bound
