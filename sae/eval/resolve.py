"""Which SAEs, where, in which inference mode: specs to SAEs, an SAE's sites, its inference variants.

    resolve_saes(["demo:L15R-8x", my_sae])      # [(label, SparseAutoencoder), ...], labels made unique
    sae_sites(sae)                               # (input Site, output Site) from its meta
    inference_variant(sae, "topk")               # the same weights with TopK activation
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae.errors import SAEError
from sae.formats import load
from sae.lm.sites import POSITION_OF_KIND, Site, parse_site, position_sites, site_order_ok
from sae.model import SparseAutoencoder

INFERENCE_MODES = ("native", "topk", "jumprelu", "relu")


def resolve_saes(saes: Any) -> list[tuple[str, SparseAutoencoder]]:
    """SAEs, specs for `sae.load`, (label, sae) pairs or a dict label -> either, as (label, SAE) pairs."""
    if isinstance(saes, (SparseAutoencoder, str, Path)):
        saes = [saes]
    items = list(saes.items()) if isinstance(saes, dict) else list(saes)
    out: list[tuple[str, SparseAutoencoder]] = []
    for i, item in enumerate(items):
        label, obj = item if isinstance(item, tuple) else (None, item)
        if isinstance(obj, (str, Path)):
            spec = str(obj)
            obj = load(obj)
            label = label or obj.meta.name or spec
        if not isinstance(obj, SparseAutoencoder):
            raise SAEError(f"item {i} is a {type(obj).__name__}, not a SparseAutoencoder or something sae.load reads")
        out.append((str(label or obj.meta.name or f"sae{i}"), obj))
    if not out:
        raise SAEError("no SAE to evaluate")
    labels = [lab for lab, _ in out]
    for lab in set(labels):
        if labels.count(lab) > 1:
            n = 0
            for j, (l2, s) in enumerate(out):
                if l2 == lab:
                    out[j] = (f"{lab}#{n}", s)
                    n += 1
    return out


def sae_sites(sae: SparseAutoencoder, label: str = "") -> tuple[Site, Site]:
    """(input site, output site) from the SAE's meta: hook_in/hook_out, else layer/position."""
    m = sae.meta
    name = label or m.name or "SAE"
    if m.hook_in:
        inp = parse_site(m.hook_in)
        out = parse_site(m.hook_out) if m.hook_out else inp
    elif m.layer is not None and m.position:
        inp, out = position_sites(int(m.layer), str(m.position))
    else:
        raise SAEError(f"{name} does not say where it reads: set meta.hook_in/hook_out (or meta.layer and meta.position)")
    if out.kind == "tc_in":
        raise SAEError(f"{name}: {out.hook} is an input-only site; a transcoder writes blocks.{out.layer}.hook_mlp_out")
    if not site_order_ok(inp, out):
        raise SAEError(f"{name} reads {inp.hook} but writes {out.hook}: it must write a site of the same block, "
                       "at or after the one it reads")
    return inp, out


def inference_variant(sae: SparseAutoencoder, mode: str) -> SparseAutoencoder:
    """The same weights with another activation: `topk` (uses sae.k), `jumprelu` (sae.threshold), `relu`."""
    if mode not in INFERENCE_MODES:
        raise SAEError(f"unknown inference mode {mode!r}; modes: {', '.join(INFERENCE_MODES)}")
    if mode == "native" or mode == sae.activation:
        return sae
    if mode == "topk" and not sae.k:
        raise SAEError(f"{sae.meta.name or 'this SAE'} has no k: TopK inference needs one")
    return SparseAutoencoder.from_weights(
        sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold.detach().clone(),
        activation=mode, k=sae.k, topk_by_decoder_norm=sae.topk_by_decoder_norm, meta=sae.meta,
    )


@dataclass
class Target:
    """One SAE in one inference mode at its sites of the model: one row of eval.csv."""

    label: str
    base: SparseAutoencoder  # as given
    sae: SparseAutoencoder  # its inference variant
    mode: str
    inp: Site
    out: Site

    @property
    def layer(self) -> int:
        return self.out.layer

    @property
    def position(self) -> str:
        """The paper's position name (R, A, M, TC), or the site kind where it has none."""
        if self.inp.kind == "tc_in":
            return "TC"
        return POSITION_OF_KIND[self.out.kind]
