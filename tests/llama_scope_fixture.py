"""Writes folders in the exact Llama Scope release layout, independently of sae.formats.

Layout (see shared/reference/llama_scope.md): <folder>/hyperparams.json with the release's 30 keys and
<folder>/checkpoints/final.safetensors with bf16 encoder.weight [F, D], encoder.bias [F],
decoder.weight [D, F], decoder.bias [D]; decoder columns are not unit-norm.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def hyperparams(d: int, f: int, *, hook_in: str, hook_out: str, theta: float, norm_in: float, norm_out: float) -> dict:
    return {
        "device": "cuda",
        "seed": 42,
        "dtype": "torch.bfloat16",
        "hook_point_in": hook_in,
        "hook_point_out": hook_out,
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "expansion_factor": f // d,
        "d_model": d,
        "d_sae": f,
        "bias_init_method": "all_zero",
        "act_fn": "jumprelu",
        "jump_relu_threshold": theta,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_out},
        "decoder_exactly_fixed_norm": False,
        "sparsity_include_decoder_norm": True,
        "use_glu_encoder": False,
        "init_decoder_norm": 0.5,
        "init_encoder_norm": None,
        "init_encoder_with_decoder_transpose": True,
        "lp": 1,
        "l1_coefficient": 0.00008,
        "l1_coefficient_warmup_steps": 39062,
        "top_k": 50,
        "k_warmup_steps": 39062,
        "use_batch_norm_mse": True,
        "use_ghost_grads": False,
        "tp_size": 1,
        "ddp_size": 1,
    }


def write_fixture(
    folder: Path,
    *,
    d: int = 32,
    f: int = 256,
    layer: int = 15,
    position: str = "R",
    theta: float = 0.35546875,
    norm_in: float = 10.8125,
    norm_out: float | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Write one SAE folder; returns its raw (bf16) tensors for independent reference computations."""
    g = torch.Generator().manual_seed(seed)
    hooks = {
        "R": (f"blocks.{layer}.hook_resid_post",) * 2,
        "A": (f"blocks.{layer}.hook_attn_out",) * 2,
        "M": (f"blocks.{layer}.hook_mlp_out",) * 2,
        "TC": (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"),
    }[position]
    # Decoder columns with norms spread over [0.3, 3] (the release's average is ~1.5).
    dec = torch.randn(d, f, generator=g)
    dec = dec / dec.norm(dim=0) * (0.3 + 2.7 * torch.rand(f, generator=g))
    tensors = {
        "encoder.weight": torch.randn(f, d, generator=g) / d**0.5,
        "encoder.bias": 0.3 * torch.randn(f, generator=g),
        "decoder.weight": dec,
        "decoder.bias": 0.2 * torch.randn(d, generator=g),
    }
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "checkpoints" / "final.safetensors")
    hp = hyperparams(d, f, hook_in=hooks[0], hook_out=hooks[1], theta=theta, norm_in=norm_in,
                     norm_out=norm_in if norm_out is None else norm_out)
    (folder / "hyperparams.json").write_text(json.dumps(hp, indent=4))
    return tensors


def authors_formula(tensors: dict[str, torch.Tensor], x: torch.Tensor, *, theta: float, norm_in: float,
                    norm_out: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The literal formulas of llama_scope.md in float64: (features [n, F], reconstruction [n, D]).

    f_i = (n_i / s_out) h_i 1[(n_i / s_out) h_i > theta], h = E (s_in x) + b_e;
    x_hat = sum_i f_i D[:, i] / n_i + b_d / s_out.
    """
    E, be, D, bd = (tensors[k].double() for k in ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"))
    d_in, d_out = E.shape[1], D.shape[0]
    s_in, s_out = d_in**0.5 / norm_in, d_out**0.5 / norm_out
    n = D.norm(dim=0)
    h = (s_in * x.double()) @ E.T + be
    scaled = n / s_out * h
    f = scaled * (scaled > theta)
    return f, f @ (D / n).T + bd / s_out
