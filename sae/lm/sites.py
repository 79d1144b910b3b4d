"""The paper's sites on Llama-family `transformers` models, by name (`sae.lm.runner` captures and splices them).

Positions on block `L` (`model.model.layers[L]`), named by the TransformerLens hooks Llama Scope uses:

| site | hook name | what it is |
|---|---|---|
| R  | `blocks.L.hook_resid_post`     | the residual stream after block L (= `hidden_states[L+1]` for L < n_layers-1; transformers applies the final norm to its last entry, this is the raw residual) |
| A  | `blocks.L.hook_attn_out`       | `self_attn` output, before the residual add |
| M  | `blocks.L.hook_mlp_out`        | `mlp` output, before the residual add (also the transcoder's target) |
| TC | `blocks.L.ln2.hook_normalized` | input of `post_attention_layernorm` divided by its RMS (the norm's own eps), before the weight: norm about sqrt(d_model) |
|    | `blocks.L.hook_resid_pre`      | the residual entering block L (R of block L-1; the embeddings for L = 0) |

Short names work too: `L15R`, `L15A`, `L15M`, `L15TC` (the TC *input*), `L15resid_pre`.

Architectures: see `SUPPORTED_MODEL_TYPES` (same module layout as LlamaForCausalLM).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from sae.errors import SAEError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "tc_in")
_HOOK_OF_KIND = {
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "tc_in": "ln2.hook_normalized",
}
_ORDER = {"resid_pre": 0, "attn_out": 1, "tc_in": 2, "mlp_out": 3, "resid_post": 4}  # within a block
_KIND_OF_HOOK = {v: k for k, v in _HOOK_OF_KIND.items()}
POSITIONS = ("R", "A", "M", "TC")  # the paper's SAE positions; TC reads tc_in and writes mlp_out
KIND_OF_POSITION = {"R": "resid_post", "A": "attn_out", "M": "mlp_out", "TC": "tc_in", "resid_pre": "resid_pre"}
POSITION_OF_KIND = {kind: position for position, kind in KIND_OF_POSITION.items()}
_TL_HOOK = re.compile(r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_attn_out|hook_mlp_out|ln2\.hook_normalized)")
_SHORT = re.compile(r"L(\d+)(R|A|M|TC|resid_pre)")


class SiteError(SAEError, ValueError):
    """An unknown site, an unsupported model, or activations that are not finite."""


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    kind: str  # one of KINDS

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.{_HOOK_OF_KIND[self.kind]}"

    def __str__(self) -> str:
        return self.hook


def parse_site(name: str | Site, n_layers: int | None = None) -> Site:
    """`blocks.15.hook_resid_post` or `L15R` -> Site(15, "resid_post"); range-checked if n_layers is given."""
    if isinstance(name, Site):
        site = name
    else:
        text = str(name).strip()
        m = _TL_HOOK.fullmatch(text)
        if m:
            site = Site(int(m[1]), _KIND_OF_HOOK[m[2]])
        elif m := _SHORT.fullmatch(text):
            site = Site(int(m[1]), KIND_OF_POSITION[m[2]])
        else:
            raise SiteError(
                f"unknown site {name!r}; sites are blocks.<L>.hook_resid_post (R), blocks.<L>.hook_attn_out (A), "
                "blocks.<L>.hook_mlp_out (M), blocks.<L>.ln2.hook_normalized (TC input), "
                "blocks.<L>.hook_resid_pre, or short names L15R, L15A, L15M, L15TC"
            )
    if n_layers is not None and not 0 <= site.layer < n_layers:
        raise SiteError(f"site {site.hook}: layer {site.layer} out of range; this model has layers 0..{n_layers - 1}")
    return site


def position_sites(layer: int, position: str) -> tuple[Site, Site]:
    """(input site, output site) of an SAE at a paper position R | A | M | TC."""
    if position not in POSITIONS:
        raise SiteError(f"unknown position {position!r}; positions are {', '.join(POSITIONS)}")
    out = Site(layer, KIND_OF_POSITION["M" if position == "TC" else position])
    return Site(layer, KIND_OF_POSITION[position]), out


def site_order_ok(inp: Site, out: Site) -> bool:
    """True if a splice of `out` may read `inp`: same block, `inp` computed no later than `out`."""
    return inp.layer == out.layer and _ORDER[inp.kind] <= _ORDER[out.kind]


def check_finite(name: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Raise SiteError naming the first non-finite entry (batch row, token position) of x [B, T, d]."""
    bad = ~torch.isfinite(x)
    if bad.ndim > 2:
        bad = bad.any(-1)
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        n = int(bad.sum())
        loc = f"batch row {where[0]}, token position {where[1]}" if len(where) >= 2 else f"row {where[0]}"
        raise SiteError(f"non-finite (NaN/Inf) activations at {name}: {n} position(s), first at {loc}")
