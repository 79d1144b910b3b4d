"""Loading a model by name: the embedded default or a Llama-family `transformers` model (no remote code)."""

from __future__ import annotations

import torch

from sae.devices import check_device
from sae.errors import FetchError
from sae.lm import embedded
from sae.lm.runner import SiteRunner
from sae.lm.sites import SUPPORTED_MODEL_TYPES, SiteError
from sae.precision import resolve_dtype


def model_name(model: torch.nn.Module) -> str:
    """The name a loaded model goes by in tables and cache keys (its hub name or folder)."""
    return getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__


def load_model(spec: str = "embedded", *, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None):
    """(model, tokenizer, label) for `embedded` or an HF model folder / hub name (no remote code).

    dtype: a torch dtype, a name, "auto" (bfloat16 where the hardware has fast bf16, `sae.precision`)
    or None (float32). The model is in eval mode with gradients off; its architecture is checked.
    """
    device = check_device(device)
    dtype = resolve_dtype(dtype, device)
    if spec in ("embedded", "embedded:smollm2"):
        model, tokenizer = embedded.load_model(device=device, dtype=dtype)
        return model, tokenizer, embedded.MODEL_NAME
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=False)
    except Exception as e:  # missing folder, offline hub, unknown model type
        raise FetchError(f"cannot open model {spec!r} ({str(e).splitlines()[0][:300]})") from None
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise SiteError(
            f"unsupported architecture {getattr(config, 'model_type', None)!r} for {spec}; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype or torch.float32, trust_remote_code=False)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
    SiteRunner(model)  # layout check
    return model, tokenizer, spec
