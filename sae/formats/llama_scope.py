"""Llama Scope's release layout, read with its authors' inference semantics.

A folder `Llama3_1-8B-Base-L15R-8x/` holds `hyperparams.json` and `checkpoints/final.safetensors` with
`encoder.weight [F, D_in]`, `encoder.bias [F]`, `decoder.weight [D_out, F]` (feature i = column i),
`decoder.bias [D_out]`, trained on inputs scaled to mean norm sqrt(D). Loading, as the authors' code does:
  1. fold the dataset-wise norms: s = sqrt(D) / dataset_average_activation_norm, separately in and out;
  2. rescale every decoder column to unit norm, moving the norm into the encoder row and bias;
  3. JumpReLU on raw activations with the scalar `jump_relu_threshold` (chosen so mean L0 ~ top_k).
SAELens's loader instead gates before step 2 (threshold x s_in on un-normed pre-activations), which
picks a different set of features; we follow the authors.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sae.errors import FormatError
from sae.formats.names import site_of_hooks
from sae.formats.tensors import check_tensors, read_json, read_tensors, require_finite, require_keys, write_tensors
from sae.io import write_json
from sae.model import SAEMeta, SparseAutoencoder

HYPERPARAMS = "hyperparams.json"
WEIGHTS = ("checkpoints/final.safetensors", "checkpoints/final.pt")
REQUIRED = (
    "d_model",
    "d_sae",
    "hook_point_in",
    "hook_point_out",
    "act_fn",
    "jump_relu_threshold",
    "norm_activation",
    "dataset_average_activation_norm",
)
MODEL = "meta-llama/Llama-3.1-8B"


def is_llama_scope_folder(path: Path) -> bool:
    return (path / HYPERPARAMS).is_file()


def weights_file(folder: Path) -> Path:
    for rel in WEIGHTS:
        if (folder / rel).is_file():
            return folder / rel
    return folder / WEIGHTS[0]


def _dataset_norms(hp: dict, path: Path, d_in: int, d_out: int) -> tuple[float, float]:
    mode = hp["norm_activation"]
    if mode in ("none", None):
        return math.sqrt(d_in), math.sqrt(d_out)
    if mode != "dataset-wise":
        raise FormatError(f"{path}: norm_activation {mode!r} is not supported (expected 'dataset-wise')")
    norms = hp["dataset_average_activation_norm"]
    if not isinstance(norms, dict) or not isinstance(norms.get("in"), (int, float)):
        raise FormatError(f"{path}: dataset_average_activation_norm must be {{'in': x, 'out': y}}, got {norms!r}")
    norm_in = float(norms["in"])
    norm_out = float(norms.get("out") if isinstance(norms.get("out"), (int, float)) else norm_in)
    if not (norm_in > 0 and norm_out > 0 and math.isfinite(norm_in + norm_out)):
        raise FormatError(f"{path}: dataset norms must be positive and finite, got {norms!r}")
    return norm_in, norm_out


def read(folder: Path, *, device=None, dtype: torch.dtype | None = None, allow_pickle: bool = False) -> SparseAutoencoder:
    """Load a Llama Scope folder into a raw-units JumpReLU SparseAutoencoder (keeping `k` for TopK)."""
    hp_path = folder / HYPERPARAMS
    hp = read_json(hp_path)
    require_keys(hp, REQUIRED, hp_path)
    if hp["act_fn"] not in ("jumprelu", "topk"):
        raise FormatError(f"{hp_path}: act_fn {hp['act_fn']!r} is not supported (jumprelu or topk)")
    d_in, n = int(hp["d_model"]), int(hp["d_sae"])
    d_out = int(hp.get("d_model_out", d_in))
    wpath = weights_file(folder)
    t = read_tensors(wpath, device=device, allow_pickle=allow_pickle)
    shapes = {"encoder.weight": (n, d_in), "encoder.bias": (n,), "decoder.weight": (d_out, n), "decoder.bias": (d_out,)}
    check_tensors(t, shapes, wpath, finite=False)  # the big ones are checked below, on what we compute anyway
    theta = hp["jump_relu_threshold"]
    if not isinstance(theta, (int, float)) or not math.isfinite(theta):
        raise FormatError(f"{hp_path}: jump_relu_threshold must be a finite number, got {theta!r}")
    norm_in, norm_out = _dataset_norms(hp, hp_path, d_in, d_out)
    s_in, s_out = math.sqrt(d_in) / norm_in, math.sqrt(d_out) / norm_out

    layer_pos = site_of_hooks(hp["hook_point_in"], hp["hook_point_out"])
    meta = SAEMeta(
        name=folder.name.removeprefix("Llama3_1-8B-Base-"),
        model=MODEL,
        layer=layer_pos[0] if layer_pos else None,
        position=layer_pos[1] if layer_pos else None,
        hook_in=hp["hook_point_in"],
        hook_out=hp["hook_point_out"],
        dataset_norm_in=norm_in,
        dataset_norm_out=norm_out,
        source=str(folder),
        provenance={"format": "llama-scope", "hyperparams": hp},
    )
    # Steps 1 and 2 in closed form, one pass per matrix, computed in fp32 (bf16 rounding of the scales
    # would move features across theta) and cast once to `dtype` at the end:
    # with n_i = ||decoder column i||, W_enc[:, i] = E_i n_i s_in / s_out, b_enc_i = b_e_i n_i / s_out,
    # W_dec[i] = D[:, i] / n_i, b_dec = b_d / s_out.
    W_dec = t["decoder.weight"].T.contiguous().float()  # [F, d_out]; transposing in the file's dtype is cheaper
    norms = torch.linalg.vector_norm(W_dec, dim=1, dtype=torch.float32)  # [F]
    require_finite(norms, t["decoder.weight"], "decoder.weight", wpath)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))  # an all-zero (dead) column stays zero
    W_dec.div_(norms[:, None])
    W_enc = t["encoder.weight"].to(torch.float32, copy=True).mul_((norms * (s_in / s_out))[:, None])  # [F, d_in]
    require_finite(W_enc, t["encoder.weight"], "encoder.weight", wpath)
    for key in ("encoder.bias", "decoder.bias"):
        require_finite(t[key], t[key], key, wpath)
    b_enc = t["encoder.bias"].float() * norms / s_out
    b_dec = t["decoder.bias"].float() / s_out
    target = dtype or torch.float32
    return SparseAutoencoder.from_weights(
        W_enc.to(target).T, b_enc, W_dec.to(target), b_dec, threshold=float(theta),  # W_enc: a view of [F, d_in] rows
        activation="jumprelu", k=int(hp.get("top_k") or 50), meta=meta,
    )


def write(sae: SparseAutoencoder, folder: Path) -> Path:
    """Write in the release layout (fp of the SAE's dtype); exact inverse of `read` for jumprelu SAEs."""
    meta = sae.meta
    d_in, d_out, n = sae.d_in, sae.d_out, sae.n_features
    norm_in = meta.dataset_norm_in or math.sqrt(d_in)
    norm_out = meta.dataset_norm_out or math.sqrt(d_out)
    s_in, s_out = math.sqrt(d_in) / norm_in, math.sqrt(d_out) / norm_out
    with torch.no_grad():
        unit = SparseAutoencoder(d_in, n, d_out=d_out, activation="jumprelu", dtype=torch.float32)
        unit.load_state_dict({k: v.float() for k, v in sae.state_dict().items()})
        unit.set_unit_decoder_norms()
        thr = unit.threshold
        if sae.activation != "jumprelu" or not torch.allclose(thr, thr[0].expand_as(thr), rtol=1e-5, atol=0):
            raise FormatError(
                "the Llama Scope layout holds a JumpReLU SAE with one scalar threshold on unit-norm decoder rows"
            )
        # With decoder columns of norm s_out/s_in, reading back rescales nothing (see module docstring).
        tensors = {
            "encoder.weight": unit.W_enc.T,
            "encoder.bias": unit.b_enc * s_in,
            "decoder.weight": unit.W_dec.T * (s_out / s_in),
            "decoder.bias": unit.b_dec * s_out,
        }
        tensors = {k: v.to(sae.W_enc.dtype) for k, v in tensors.items()}
    hook_in, hook_out = meta.hook_in or "unknown", meta.hook_out or meta.hook_in or "unknown"
    hp = {
        "d_model": d_in,
        "d_sae": n,
        "expansion_factor": n // d_in,
        "dtype": str(sae.W_enc.dtype),
        "hook_point_in": hook_in,
        "hook_point_out": hook_out,
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "act_fn": "jumprelu",
        "jump_relu_threshold": float(thr[0]),
        "top_k": sae.k,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_out},
        "sparsity_include_decoder_norm": True,
    }
    if d_out != d_in:
        hp["d_model_out"] = d_out
    write_tensors(tensors, folder / WEIGHTS[0])
    write_json(folder / HYPERPARAMS, hp)
    return folder

