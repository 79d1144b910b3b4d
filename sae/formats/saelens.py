"""SAELens layout (`cfg.json` + `sae_weights.safetensors`), and our native format on top of it.

The native format is the SAELens layout with our metadata under `cfg["metadata"]["llama_sae"]`:
SAELens ignores it and opens the SAE; we read it back losslessly (activation, k, meta). A threshold that
the SAELens architecture has no slot for (a TopK SAE that also carries a JumpReLU threshold) goes to
`llama_sae_extra.safetensors`, which SAELens never opens.
Architectures: standard (ReLU), topk, jumprelu, and the transcoder / jumprelu_transcoder variants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.errors import FormatError
from sae.formats.names import site_of_hooks
from sae.formats.tensors import check_tensors, read_json, read_tensors, require_keys, write_tensors
from sae.io import write_json
from sae.model import SAEMeta, SparseAutoencoder

CFG = "cfg.json"
WEIGHTS = ("sae_weights.safetensors", "sae_weights.pt")
EXTRA = "llama_sae_extra.safetensors"
NATIVE_KEY = "llama_sae"
NATIVE_VERSION = 1
_ARCH = {  # SAELens architecture -> (our activation, is transcoder)
    "standard": ("relu", False),
    "topk": ("topk", False),
    "jumprelu": ("jumprelu", False),
    "transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", True),
}


def is_saelens_folder(path: Path) -> bool:
    return (path / CFG).is_file()


def _architecture(cfg: dict[str, Any], path: Path) -> str:
    arch = cfg.get("architecture", "standard")
    if arch == "standard" and cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk":
        arch = "topk"  # SAELens < 6 wrote topk SAEs as standard + activation_fn "topk"
    if arch not in _ARCH:
        raise FormatError(f"{path}: architecture {arch!r} is not supported; supported: {', '.join(_ARCH)}")
    return arch


def read(folder: Path, *, device=None, dtype: torch.dtype | None = None, allow_pickle: bool = False) -> SparseAutoencoder:
    cfg_path = folder / CFG
    cfg = read_json(cfg_path)
    require_keys(cfg, ("d_in", "d_sae"), cfg_path)
    arch = _architecture(cfg, cfg_path)
    activation = _ARCH[arch][0]
    d_in, n = int(cfg["d_in"]), int(cfg["d_sae"])
    d_out = int(cfg.get("d_out", d_in))
    wpath = next((folder / w for w in WEIGHTS if (folder / w).is_file()), folder / WEIGHTS[0])
    t = read_tensors(wpath, device=device, allow_pickle=allow_pickle)
    if (folder / EXTRA).is_file():
        t.update(read_tensors(folder / EXTRA, device=device))
    if "log_threshold" in t and "threshold" not in t:
        t["threshold"] = t.pop("log_threshold").exp()
    shapes = {"W_enc": (d_in, n), "b_enc": (n,), "W_dec": (n, d_out), "b_dec": (d_out,)}
    if activation == "jumprelu":
        shapes["threshold"] = (n,)
    check_tensors(t, shapes, wpath)

    metadata = cfg.get("metadata") or {}
    native = metadata.get(NATIVE_KEY) or {}
    k = native.get("k", cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k")))
    if activation == "topk" and not k:
        raise FormatError(f"{cfg_path}: a topk SAE needs 'k'")
    activation = native.get("activation", activation)
    meta = _meta(cfg, metadata, native, folder)
    target = dtype or torch.float32
    w = {key: t[key].to(target) for key in shapes}
    if "threshold" in t and tuple(t["threshold"].shape) == (n,):  # native files keep it for any activation
        w["threshold"] = t["threshold"].to(target)
    sae = SparseAutoencoder.from_weights(
        w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], threshold=w.get("threshold", 0.0),
        activation=activation,
        k=int(k) if k else None,
        topk_by_decoder_norm=bool(native.get("topk_by_decoder_norm", cfg.get("rescale_acts_by_decoder_norm", False))),
        meta=meta,
    )
    _fold_saelens_preprocessing(sae, cfg, cfg_path)
    return sae


def _meta(cfg: dict, metadata: dict, native: dict, folder: Path) -> SAEMeta:
    if "meta" in native:
        meta = SAEMeta.from_dict(native["meta"])
        meta.source = str(folder)
        return meta
    hook_in = metadata.get("hook_name", cfg.get("hook_name"))
    hook_out = metadata.get("hook_name_out", cfg.get("hook_name_out", hook_in))
    site = site_of_hooks(hook_in, hook_out) if hook_in else None
    return SAEMeta(
        name=metadata.get("neuronpedia_id") or folder.name,
        model=metadata.get("model_name", cfg.get("model_name")),
        layer=site[0] if site else None,
        position=site[1] if site else None,
        hook_in=hook_in,
        hook_out=hook_out,
        source=str(folder),
        provenance={"format": "saelens", "cfg": cfg},
    )


def _fold_saelens_preprocessing(sae: SparseAutoencoder, cfg: dict, path: Path) -> None:
    """Fold what SAELens does around encode/decode into the weights, so outputs match SAELens's."""
    with torch.no_grad():
        if cfg.get("apply_b_dec_to_input", False):  # SAELens encodes x - b_dec
            sae.b_enc -= sae.b_dec @ sae.W_enc
    norm = cfg.get("normalize_activations", "none")
    if norm in ("none", None, False):
        return
    factor = cfg.get("norm_scaling_factor") or (cfg.get("metadata") or {}).get("norm_scaling_factor")
    if norm == "expected_average_only_in" and isinstance(factor, (int, float)):
        # SAELens scales x by `factor` before encoding and divides the output by it.
        with torch.no_grad():
            sae.W_enc.mul_(factor)
        sae.fold_scales(1.0, factor)
        return
    raise FormatError(f"{path}: normalize_activations {norm!r} without a stored scaling factor is not supported")


def write(sae: SparseAutoencoder, folder: Path, *, native: bool) -> Path:
    """Write SAELens layout; `native` adds our metadata so the round trip is lossless."""
    transcoder = sae.d_out != sae.d_in
    if sae.activation == "topk":
        if transcoder and not native:
            raise FormatError("SAELens has no TopK transcoder; save it in the native format instead")
        arch = "topk"
    else:
        arch = {"relu": "standard", "jumprelu": "jumprelu"}[sae.activation]
        arch = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}[arch] if transcoder else arch
    meta = sae.meta
    metadata: dict[str, Any] = {
        "sae_lens_version": "6.0.0",  # the cfg schema this file follows
        "model_name": meta.model,
        "hook_name": meta.hook_in,
        "hook_head_index": None,
        "prepend_bos": True,
    }
    if transcoder or (meta.hook_out and meta.hook_out != meta.hook_in):
        metadata["hook_name_out"] = meta.hook_out
    if native:
        metadata[NATIVE_KEY] = {
            "version": NATIVE_VERSION,
            "activation": sae.activation,
            "k": sae.k,
            "topk_by_decoder_norm": sae.topk_by_decoder_norm,
            "meta": {**meta.to_dict(), "source": None},
        }
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.n_features,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if transcoder:
        cfg["d_out"] = sae.d_out
    if arch == "topk":
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = sae.topk_by_decoder_norm
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if arch.startswith("jumprelu"):
        tensors["threshold"] = sae.threshold
    elif native and bool(sae.threshold.any()):
        write_tensors({"threshold": sae.threshold}, folder / EXTRA)
    write_tensors(tensors, folder / WEIGHTS[0])
    write_json(folder / CFG, cfg)
    return folder

