"""Running a Llama-family model site by site: capture the paper's sites and splice SAEs into them.

`SiteRunner` drives the decoder layers itself (embedding, mask and rotary tables come from the model's
own forward, stopped before block 0), so a capture stops after the last block it needs (no later
blocks, no final norm, no LM head), and a spliced forward can restart at block L from a cached
residual. Site names: `sae.lm.sites`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sae.errors import ShapeError
from sae.lm.sites import SUPPORTED_MODEL_TYPES, Site, SiteError, parse_site, site_order_ok


@dataclass
class Splice:
    """Replace site `out` by `fn(input activation)` for the rest of the forward.

    `fn` gets the activation at `inp` (default: `out` itself; a transcoder reads the TC input and writes
    M) as [B, T, d_in] and returns [B, T, d_out]. Positions where `keep` is False (BOS/EOS/pad) keep the
    model's own value; `keep` None splices everywhere.
    """

    out: Site | str
    fn: Callable[[torch.Tensor], torch.Tensor]
    inp: Site | str | None = None
    keep: torch.Tensor | None = None


def zero_ablation(_x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(_x)


class _Stop(Exception):
    pass


@dataclass
class Prologue:
    """What every decoder layer receives besides the hidden state (mask, rotary tables, positions)."""

    hidden: torch.Tensor  # the embeddings, [B, T, d]
    args: tuple
    kwargs: dict


class SiteRunner:
    """Capture and splice the R/A/M/TC sites of a Llama-family causal LM.

        runner = SiteRunner(model)
        acts = runner.capture(input_ids, attention_mask, ["blocks.3.hook_resid_post", "L3TC"])
        logits = runner.forward(input_ids, attention_mask, splices=[Splice("L3M", sae, inp="L3TC", keep=mask)])
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.base = self._base_model(model)
        self.layers = self.base.layers
        self.n_layers = len(self.layers)
        self.config = model.config
        self.d_model = int(self.config.hidden_size)
        self.lm_head = getattr(model, "lm_head", None)

    @staticmethod
    def _base_model(model: nn.Module) -> nn.Module:
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        supported = ", ".join(SUPPORTED_MODEL_TYPES)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise SiteError(
                f"unsupported architecture {model_type or type(model).__name__!r}; supported model types: "
                f"{supported} (LlamaForCausalLM and models with the same module layout)"
            )
        base = getattr(model, "model", model)
        layers = getattr(base, "layers", None)
        needed = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
        if not isinstance(layers, nn.ModuleList) or not len(layers) or any(
            not hasattr(layers[0], a) for a in needed
        ):
            raise SiteError(
                f"{type(model).__name__} does not have the Llama module layout (model.layers[i] with "
                f"{', '.join(needed)}); supported model types: {supported}"
            )
        kinds = set(getattr(config, "layer_types", None) or ())
        if len(kinds) > 1:  # every block must take the same mask: it is captured once, from block 0
            raise SiteError(f"{type(model).__name__} mixes attention types ({', '.join(sorted(kinds))}); "
                            "models whose blocks all use one attention type are supported")
        extra = [n for n, _ in layers[0].named_children() if "feedforward_layernorm" in n]
        if extra:
            raise SiteError(f"{type(model).__name__} has extra norms ({', '.join(extra)}); supported: {supported}")
        return base

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_context(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    def site(self, name: str | Site) -> Site:
        return parse_site(name, self.n_layers)

    # ---- the three pieces of a forward ------------------------------------------------------------
    def prologue(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Prologue:
        """Run the model's own forward up to block 0 and keep what block 0 receives."""
        if input_ids.ndim != 2:
            raise ShapeError(f"input_ids must be [batch, tokens], got shape {list(input_ids.shape)}")
        if self.max_context and input_ids.shape[1] > self.max_context:
            raise SiteError(
                f"context of {input_ids.shape[1]} tokens is longer than the model allows ({self.max_context})"
            )
        got: dict = {}

        def grab(module, args, kwargs):
            got["args"], got["kwargs"] = args, kwargs
            raise _Stop

        handle = self.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.base(input_ids=input_ids.to(self.device), attention_mask=None if attention_mask is None
                      else attention_mask.to(self.device), use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        args, kwargs = got["args"], dict(got["kwargs"])
        if args:
            hidden, args = args[0], tuple(args[1:])
        else:
            hidden = kwargs.pop("hidden_states")
        return Prologue(hidden, args, kwargs)

    def run_layers(
        self,
        pro: Prologue,
        hidden: torch.Tensor,
        start: int,
        stop: int,
        *,
        capture: Iterable[Site] = (),
        splices: Iterable[Splice] = (),
        keep_resid_pre: Iterable[int] = (),
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run blocks start..stop-1 on `hidden` (the residual entering `start`); returns (hidden, captured).

        captured maps hook names to [B, T, d] tensors for the sites in `capture` (and for the residual
        entering each block in `keep_resid_pre`).
        """
        capture = {self.site(s) for s in capture} | {Site(L, "resid_pre") for L in keep_resid_pre}
        splices = [self._norm_splice(s) for s in splices]
        for s in splices:
            if not start <= s.out.layer < stop:
                raise SiteError(f"splice at {s.out.hook} is outside the blocks being run ({start}..{stop - 1})")
            if not site_order_ok(s.inp, s.out):
                raise SiteError(f"a splice must read a site of its own block at or before {s.out.hook}, not {s.inp.hook}")
        out: dict[str, torch.Tensor] = {}
        with self._hooks(capture, splices, out):
            for L in range(start, stop):
                if Site(L, "resid_pre") in capture:
                    out[Site(L, "resid_pre").hook] = hidden
                hidden = self._splice_value(Site(L, "resid_pre"), hidden, splices, out)
                result = self.layers[L](hidden, *pro.args, **pro.kwargs)
                hidden = result[0] if isinstance(result, tuple) else result
                post = Site(L, "resid_post")
                if post in capture or any(s.inp == post for s in splices):
                    out[post.hook] = hidden
                hidden = self._splice_value(post, hidden, splices, out)
        return hidden, out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on the residual after the last block."""
        if self.lm_head is None:
            raise SiteError(f"{type(self.model).__name__} has no lm_head: load it with AutoModelForCausalLM")
        return self.lm_head(self.base.norm(hidden))

    # ---- the public calls -------------------------------------------------------------------------
    @torch.no_grad()
    def capture(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, sites: Iterable[str | Site]
    ) -> dict[str, torch.Tensor]:
        """Activations at `sites` (hook name -> [B, T, d]) from one forward that stops after the last block needed."""
        sites = sorted({self.site(s) for s in sites})
        if not sites:
            return {}
        pro = self.prologue(input_ids, attention_mask)
        stop = max(s.layer + (s.kind != "resid_pre") for s in sites)
        pre = [s.layer for s in sites if s.kind == "resid_pre"]
        hidden, out = self.run_layers(pro, pro.hidden, 0, stop, capture=[s for s in sites if s.kind != "resid_pre"],
                                      keep_resid_pre=[L for L in pre if L < stop])
        if stop in pre:
            out[Site(stop, "resid_pre").hook] = hidden
        return {s.hook: out[s.hook] for s in sites}

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        splices: Iterable[Splice] = (),
        capture: Iterable[str | Site] = (),
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Full forward with splices: (logits [B, T, vocab], captured activations)."""
        pro = self.prologue(input_ids, attention_mask)
        hidden, out = self.run_layers(pro, pro.hidden, 0, self.n_layers, capture=capture, splices=splices)
        return self.logits(hidden), out

    # ---- internals --------------------------------------------------------------------------------
    def _norm_splice(self, s: Splice) -> Splice:
        out = self.site(s.out)
        inp = self.site(s.inp) if s.inp is not None else out
        if out.kind == "tc_in":
            raise SiteError(f"{out.hook} is an input-only site (the TC input); splice the block's M output instead")
        return Splice(out, s.fn, inp, s.keep)

    def _splice_value(self, site: Site, value: torch.Tensor, splices: list[Splice], out: dict) -> torch.Tensor:
        for s in splices:
            if s.out == site:
                x = value if s.inp == site else out.get(s.inp.hook)
                if x is None:
                    raise SiteError(f"splice input {s.inp.hook} was not computed before {site.hook}")
                new = s.fn(x)
                if new.shape != value.shape:
                    raise ShapeError(
                        f"splice at {site.hook} returned shape {list(new.shape)}, the site has {list(value.shape)}"
                    )
                new = new.to(value.dtype)
                value = new if s.keep is None else torch.where(s.keep.to(value.device)[..., None], new, value)
        return value

    @contextmanager
    def _hooks(self, capture: set[Site], splices: list[Splice], out: dict) -> Iterator[None]:
        handles = []
        needed_inputs = {s.inp for s in splices}
        layers_with = {s.layer for s in capture | needed_inputs} | {s.out.layer for s in splices}
        try:
            for L in sorted(layers_with):
                block = self.layers[L]
                a, m, tc = Site(L, "attn_out"), Site(L, "mlp_out"), Site(L, "tc_in")
                if a in capture or a in needed_inputs or any(s.out == a for s in splices):
                    handles.append(block.self_attn.register_forward_hook(self._module_hook(a, capture, splices, out)))
                if m in capture or m in needed_inputs or any(s.out == m for s in splices):
                    handles.append(block.mlp.register_forward_hook(self._module_hook(m, capture, splices, out)))
                if tc in capture or tc in needed_inputs:
                    norm = block.post_attention_layernorm
                    handles.append(norm.register_forward_pre_hook(self._tc_hook(tc, norm, out)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _module_hook(self, site: Site, capture: set[Site], splices: list[Splice], out: dict):
        def hook(module, args, output):
            value = output[0] if isinstance(output, tuple) else output
            out[site.hook] = value
            new = self._splice_value(site, value, splices, out)
            if new is value:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    @staticmethod
    def _tc_hook(site: Site, norm: nn.Module, out: dict):
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))

        def hook(module, args):
            x = args[0]
            x32 = x.float()
            normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
            out[site.hook] = normed.to(x.dtype)

        return hook
