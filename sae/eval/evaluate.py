"""Evaluate SAEs on a model and a corpus: L0, explained variance, MSE, delta LM loss, KL, frequencies.

    python -m sae.evaluate demo:L15R-8x path/to/sae --model embedded --dataset embedded-heldout --out out/eval

    from sae.eval.evaluate import evaluate
    result = evaluate(["demo:L15R-8x"], model="embedded", dataset="embedded-heldout", tokens=20_000)
    result.eval, result.frequencies, result.positions    # pandas DataFrames
    result.write("out/eval")                              # eval.csv, frequencies.csv, positions.csv, run.json

Every statistic uses ordinary positions only (BOS, EOS, padding and other special tokens are masked;
see `sae.data.text`; so are massive-activation positions, `sae.data.massive`, counted in `massive_tokens`). One clean forward per token batch serves every SAE, at every layer: it keeps the
residual entering each layer with an SAE and the activations at every site an SAE reads or writes.
Each splice (an SAE's reconstruction replacing its output site, special positions untouched) then
reruns only the blocks from the SAE's layer on, from that cached residual; zero-ablation baselines run
once per output site. LM metrics can be limited to the first `lm_tokens` tokens (they cost the reruns);
the activation metrics and frequencies use all `tokens`, and once the LM budget is spent the clean
forward stops after the last layer with an SAE.

Metric definitions (x = the SAE's input, y = its target (= x except for transcoders), y_hat = its
output, sums over evaluated tokens t and dimensions; N tokens, d = width of y):
- l0: mean number of features with a non-zero activation per token.
- mse: sum ||y - y_hat||^2 / (N d), raw units.
- explained_variance_uncentred: 1 - sum ||y - y_hat||^2 / sum ||y||^2 (the Llama Scope paper's Eq. 6).
- explained_variance_centred: 1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 (pooled over all
  evaluated tokens; Gemma Scope / SAELens convention).
- ce_clean, ce_spliced: mean next-token cross-entropy (nats) at scored positions, clean and with the
  SAE spliced in; a position t is scored when both token t and its target t+1 are ordinary.
- delta_lm_loss = ce_spliced - ce_clean. kl_div: mean KL(clean || spliced) of the next-token
  distributions at the same positions.
- ce_zero_ablation: the same with the output site set to zero (ordinary positions);
  ce_loss_recovered = (ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean).
- frequency (per feature): fraction of the N tokens on which it is non-zero. never_fired_fraction:
  fraction of features with frequency 0 over the N tokens; dead_fraction: the same, but only reported
  (else NaN) when N >= dead_window (100,000, the paper's window). dense_fraction: frequency > 0.1.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae.data.text import DEFAULT_CONTEXT, TokenBatcher, describe_source, iter_texts, resolve_context
from sae.errors import SAEError, ShapeError
from sae.io import atomic_path, write_json
from sae.data.massive import MASSIVE_FACTOR, massive_positions
from sae.model import SparseAutoencoder
from sae.lm.sites import (
    Site,
    SiteRunner,
    Splice,
    check_finite,
    load_model,
    model_name,
    parse_site,
    position_sites,
    site_order_ok,
    zero_ablation,
)

INFERENCE_MODES = ("native", "topk", "jumprelu", "relu")
DEAD_WINDOW = 100_000
DENSE_THRESHOLD = 0.1
DEFAULT_TOKENS = 100_000
DEFAULT_LM_TOKENS = 20_000
_POSITION_OF_KIND = {"resid_post": "R", "attn_out": "A", "mlp_out": "M", "tc_in": "TC", "resid_pre": "resid_pre"}

EVAL_COLUMNS = [
    "sae", "model", "dataset", "mode", "arch", "layer", "position", "hook_in", "hook_out", "d_in", "d_out",
    "n_features", "width", "k", "context", "tokens", "massive_tokens", "lm_tokens", "l0", "mse", "explained_variance_uncentred",
    "explained_variance_centred", "ce_clean", "ce_spliced", "delta_lm_loss", "kl_div", "ce_zero_ablation",
    "ce_loss_recovered", "frequency_tokens", "never_fired_fraction", "dead_fraction", "dense_fraction",
    "dead_window", "input_norm", "target_norm",
]
FREQUENCY_COLUMNS = ["sae", "model", "dataset", "mode", "layer", "position", "feature", "fires", "tokens", "frequency"]
POSITION_COLUMNS = [
    "sae", "model", "dataset", "mode", "layer", "position", "bucket_start", "bucket_end", "tokens", "l0", "mse",
    "explained_variance_uncentred",
]


# ---------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """The three tables (pandas DataFrames) and the run's settings."""

    eval: Any
    frequencies: Any
    positions: Any
    settings: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write eval.csv, frequencies.csv, positions.csv and run.json (atomically) into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("eval", "frequencies", "positions"):
            path = out / f"{name}.csv"
            with atomic_path(path) as tmp:
                getattr(self, name).to_csv(tmp, index=False)
            paths[name] = path
        paths["run"] = write_json(out / "run.json", self.settings)
        return paths


# ---------------------------------------------------------------------------------------------------
# which SAEs, where, in which inference mode
# ---------------------------------------------------------------------------------------------------
def resolve_saes(saes: Any) -> list[tuple[str, SparseAutoencoder]]:
    """SAEs, specs for `sae.load`, (label, sae) pairs or a dict label -> either, as (label, SAE) pairs."""
    from sae.formats import load

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


def position_edges(spec: str | Sequence[int] | None, context: int) -> list[int]:
    """Bucket edges for the per-position table: 'log2' (1, 2, 4, ...), a width ('64'), or a list."""
    if spec is None or spec == "log2":
        edges = [1]
        while edges[-1] < context:
            edges.append(edges[-1] * 2)
        return edges if edges[-1] >= context else edges + [context]
    if isinstance(spec, str):
        parts = [p for p in spec.replace(" ", "").split(",") if p]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise SAEError(f"position buckets must be 'log2', a width or comma-separated edges, not {spec!r}") from None
        if len(nums) == 1:
            if nums[0] < 1:
                raise SAEError("the position bucket width must be positive")
            return list(range(1, context + nums[0], nums[0]))
        spec = nums
    edges = sorted(set(int(e) for e in spec))
    if len(edges) < 2 or edges[0] < 0:
        raise SAEError(f"position bucket edges must be at least two non-negative numbers, got {list(spec)}")
    return edges


@dataclass
class _Target:
    label: str
    base: SparseAutoencoder
    sae: SparseAutoencoder  # the inference variant
    mode: str
    inp: Site
    out: Site
    n_edges: int
    # accumulators (float64 / int64)
    n: int = 0
    l0: float = 0.0
    sse: float = 0.0
    sumsq: float = 0.0
    sum_y: torch.Tensor | None = None
    norm_in: float = 0.0
    norm_out: float = 0.0
    fires: torch.Tensor | None = None
    pos_n: torch.Tensor | None = None
    pos_l0: torch.Tensor | None = None
    pos_sse: torch.Tensor | None = None
    pos_sumsq: torch.Tensor | None = None
    lm_n: int = 0
    ce: float = 0.0
    kl: float = 0.0

    def __post_init__(self) -> None:
        d = self.sae.d_out
        self.sum_y = torch.zeros(d, dtype=torch.float64)
        self.fires = torch.zeros(self.sae.n_features, dtype=torch.int64)
        nb = self.n_edges - 1
        self.pos_n = torch.zeros(nb, dtype=torch.int64)
        self.pos_l0 = torch.zeros(nb, dtype=torch.float64)
        self.pos_sse = torch.zeros(nb, dtype=torch.float64)
        self.pos_sumsq = torch.zeros(nb, dtype=torch.float64)

    @property
    def layer(self) -> int:
        return self.out.layer

    @property
    def position(self) -> str:
        if self.inp.kind == "tc_in":
            return "TC"
        return _POSITION_OF_KIND[self.out.kind]


# ---------------------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------------------
def evaluate(
    saes: Any,
    model: Any = "embedded",
    dataset: Any = "embedded-heldout",
    *,
    datasets: Sequence[Any] | None = None,
    tokenizer: Any = None,
    modes: Iterable[str] = ("native",),
    tokens: int = DEFAULT_TOKENS,
    lm_tokens: int | None = DEFAULT_LM_TOKENS,
    context: int | None = None,
    batch_size: int = 8,
    pack: bool = False,
    position_buckets: str | Sequence[int] | None = "log2",
    dead_window: int = DEAD_WINDOW,
    dense_threshold: float = DENSE_THRESHOLD,
    massive_factor: float = MASSIVE_FACTOR,
    logit_chunk: int = 1024,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    model_label: str | None = None,
    dataset_label: str | None = None,
    text_field: str = "text",
    progress: bool = True,
) -> EvalResult:
    """Evaluate SAEs on one or several models and datasets; returns the eval, frequency and position tables.

    saes: SparseAutoencoders, specs for `sae.load`, (label, SAE) pairs or a dict label -> either. Each
    SAE's `meta.hook_in`/`hook_out` (or `layer`/`position`) says where it reads and writes.
    model: "embedded", an HF folder or hub name, a loaded causal LM (then pass `tokenizer`), or a list
    of those (one set of rows per model: base vs instruct). dataset: anything `sae.data.iter_texts`
    reads (a name, a path, or an in-memory list of documents); `datasets=[...]` evaluates several. modes: inference modes, "native" (the SAE's own
    activation), "topk" (its k), "jumprelu" (its threshold), "relu". tokens: ordinary tokens per
    (model, dataset); lm_tokens: how many of them also get the LM metrics (None = all, 0 = none).
    """
    import pandas as pd

    modes = list(dict.fromkeys(modes))
    if not modes:
        raise SAEError("give at least one inference mode")
    for m in modes:
        if m not in INFERENCE_MODES:
            raise SAEError(f"unknown inference mode {m!r}; modes: {', '.join(INFERENCE_MODES)}")
    if tokens < 1:
        raise SAEError(f"tokens must be positive, got {tokens}")
    resolved = resolve_saes(saes)
    models = model if isinstance(model, (list, tuple)) else [model]
    datasets = list(datasets) if datasets is not None else [dataset]
    tables: dict[str, list] = {"eval": [], "frequencies": [], "positions": []}
    settings = {
        "saes": [lab for lab, _ in resolved], "models": [], "datasets": [describe_source(d) for d in datasets],
        "modes": modes, "tokens": tokens, "lm_tokens": lm_tokens, "context": context, "batch_size": batch_size,
        "pack": pack, "dead_window": dead_window, "dense_threshold": dense_threshold, "massive_factor": massive_factor,
        "torch": torch.__version__, "python": platform.python_version(),
    }
    for mod in models:
        if isinstance(mod, (str, Path)):
            lm, tok, label = load_model(str(mod), device=device, dtype=dtype)
        else:
            lm, tok, label = mod, tokenizer, model_name(mod)
            if tok is None:
                raise SAEError("pass tokenizer= with a model object")
        label = model_label if model_label and len(models) == 1 else label
        settings["models"].append(label)
        for ds in datasets:
            ds_label = dataset_label if dataset_label and len(datasets) == 1 else describe_source(ds)
            res = _evaluate_one(
                resolved, lm, tok, label, ds, ds_label, modes=modes, tokens=tokens, lm_tokens=lm_tokens,
                context=context, batch_size=batch_size, pack=pack, position_buckets=position_buckets,
                dead_window=dead_window, dense_threshold=dense_threshold, massive_factor=massive_factor,
                logit_chunk=logit_chunk,
                text_field=text_field, progress=progress,
            )
            for k in tables:
                tables[k].append(res[k])
    frames = {
        k: pd.concat(v, ignore_index=True) if v else pd.DataFrame(columns=c)
        for (k, v), c in zip(tables.items(), (EVAL_COLUMNS, FREQUENCY_COLUMNS, POSITION_COLUMNS))
    }
    return EvalResult(frames["eval"], frames["frequencies"], frames["positions"], settings)


def _evaluate_one(
    resolved, model, tokenizer, model_label, dataset, dataset_label, *, modes, tokens, lm_tokens, context,
    batch_size, pack, position_buckets, dead_window, dense_threshold, massive_factor, logit_chunk, text_field,
    progress,
):
    import pandas as pd
    from tqdm.auto import tqdm

    runner = SiteRunner(model)
    device = runner.device
    D = runner.d_model
    context = resolve_context(context, runner.max_context)
    edges = position_edges(position_buckets, context)
    edges_t = torch.tensor(edges, dtype=torch.long)
    targets: list[_Target] = []
    for label, sae in resolved:
        inp, out = sae_sites(sae, label)
        inp, out = runner.site(inp), runner.site(out)
        if sae.d_in != D or sae.d_out != D:
            raise ShapeError(
                f"{label}: SAE width d_in={sae.d_in}, d_out={sae.d_out} but {model_label} has width {D} at "
                f"{inp.hook} / {out.hook}"
            )
        sae = sae.to(device)
        for mode in modes:
            if mode == "topk" and not sae.k and len(resolved) > 1:
                continue  # a vanilla SAE among TopK ones has no k: it gets its other modes only
            targets.append(_Target(label, sae, inference_variant(sae, mode), mode, inp, out, len(edges)))
    by_layer: dict[int, list[_Target]] = {}
    for t in targets:
        by_layer.setdefault(t.layer, []).append(t)
    layers = sorted(by_layer)
    lm_budget = tokens if lm_tokens is None else min(lm_tokens, tokens)
    lm_seen = 0
    clean_ce = 0.0
    zero_ce: dict[Site, float] = {t.out: 0.0 for t in targets}
    n_massive = 0
    started = time.perf_counter()

    batcher = TokenBatcher(tokenizer, context=context, batch_size=batch_size, pack=pack, max_context=runner.max_context)
    bar = tqdm(total=tokens, unit="tok", desc=f"evaluate {model_label}", disable=not progress, leave=False)
    seen = 0
    try:
        for b, batch in enumerate(batcher.batches(iter_texts(dataset, text_field=text_field), max_tokens=tokens)):
            batch = batch.to(device)
            mask = batch.mask
            need_lm = lm_seen < lm_budget
            with torch.no_grad():
                pro = runner.prologue(batch.input_ids, batch.attention_mask)
                hidden, prev = pro.hidden, 0
                resid_pre: dict[int, torch.Tensor] = {}
                acts: dict[str, torch.Tensor] = {}
                for L in layers:
                    hidden, _ = runner.run_layers(pro, hidden, prev, L)
                    resid_pre[L] = hidden
                    sites = {s for t in by_layer[L] for s in (t.inp, t.out)}
                    hidden, got = runner.run_layers(pro, hidden, L, L + 1, capture=sites)
                    acts.update({s.hook: got[s.hook] for s in sites})
                    prev = L + 1
                for hook, a in acts.items():
                    check_finite(f"{hook} (model {model_label}, token batch {b})", a, mask)
                massive = massive_positions(acts.values(), mask, massive_factor)
                n_massive += int(massive.sum())
                mask = mask & ~massive
                if need_lm:
                    hidden, _ = runner.run_layers(pro, hidden, prev, runner.n_layers)
                    score = _score_mask(mask, lm_budget - lm_seen)
                    targets_ids = batch.input_ids[:, 1:][score]
                    n_lm = int(score.sum())
                    clean_h = hidden[:, :-1][score]
                    finals: dict[Any, torch.Tensor] = {}
                    for out_site in {t.out for t in targets}:
                        L = out_site.layer
                        h, _ = runner.run_layers(pro, resid_pre[L], L, runner.n_layers,
                                                 splices=[Splice(out_site, zero_ablation, keep=mask)])
                        finals[("zero", out_site)] = h[:, :-1][score]
                pos = torch.arange(mask.shape[1], device=device).expand_as(mask)[mask].cpu()
                bucket = (torch.bucketize(pos, edges_t, right=True) - 1)
                in_range = (bucket >= 0) & (bucket < len(edges) - 1)
                for i, t in enumerate(targets):
                    x = acts[t.inp.hook][mask].float()
                    y = acts[t.out.hook][mask].float()
                    values, idx = t.sae.encode_sparse(x.to(t.sae.W_enc.dtype))
                    y_hat = t.sae.decode_sparse(values, idx).float()
                    active = values > 0
                    l0 = active.sum(-1)
                    err = (y - y_hat).pow(2).sum(-1).double()
                    sq = y.pow(2).sum(-1).double()
                    t.n += x.shape[0]
                    t.l0 += float(l0.sum())
                    t.sse += float(err.sum())
                    t.sumsq += float(sq.sum())
                    t.sum_y += y.double().sum(0).cpu()
                    t.norm_in += float(x.double().norm(dim=-1).sum())
                    t.norm_out += float(sq.sqrt().sum())
                    t.fires += torch.bincount(idx[active].flatten().cpu(), minlength=t.sae.n_features)
                    bk, l0c, errc, sqc = bucket[in_range], l0.cpu()[in_range], err.cpu()[in_range], sq.cpu()[in_range]
                    t.pos_n += torch.bincount(bk, minlength=len(edges) - 1)
                    t.pos_l0 += torch.bincount(bk, weights=l0c.double(), minlength=len(edges) - 1)
                    t.pos_sse += torch.bincount(bk, weights=errc, minlength=len(edges) - 1)
                    t.pos_sumsq += torch.bincount(bk, weights=sqc, minlength=len(edges) - 1)
                    if need_lm:
                        full = acts[t.out.hook].clone()
                        full[mask] = y_hat.to(full.dtype)
                        L = t.layer
                        h, _ = runner.run_layers(pro, resid_pre[L], L, runner.n_layers,
                                                 splices=[Splice(t.out, lambda _x, f=full: f, inp=t.inp, keep=mask)])
                        finals[i] = h[:, :-1][score]
                        del full
                if need_lm:
                    sums = _lm_sums(runner, clean_h, targets_ids, finals, logit_chunk)
                    clean_ce += sums.pop("clean")[0]
                    for key, (ce, kl) in sums.items():
                        if isinstance(key, tuple):
                            zero_ce[key[1]] += ce
                        else:
                            targets[key].ce += ce
                            targets[key].kl += kl
                            targets[key].lm_n += n_lm
                    lm_seen += n_lm
            seen += int(mask.sum())
            bar.update(batch.n_tokens)
    finally:
        bar.close()
    if seen == 0:
        raise SAEError(f"the corpus {dataset_label} is empty: no ordinary tokens to evaluate")
    seconds = time.perf_counter() - started

    rows, freq_rows, pos_rows = [], [], []
    ce_clean = clean_ce / lm_seen if lm_seen else math.nan
    for t in targets:
        n = t.n
        mean_y = t.sum_y / n
        centred = t.sumsq - n * float(mean_y.pow(2).sum())
        freq = t.fires.double() / n
        never = float((t.fires == 0).double().mean())
        ce_s = t.ce / t.lm_n if t.lm_n else math.nan
        ce_z = zero_ce[t.out] / lm_seen if lm_seen else math.nan
        base = t.base
        rows.append({
            "sae": t.label, "model": model_label, "dataset": dataset_label, "mode": t.mode, "arch": base.activation,
            "layer": t.layer, "position": t.position, "hook_in": t.inp.hook, "hook_out": t.out.hook,
            "d_in": base.d_in, "d_out": base.d_out, "n_features": base.n_features,
            "width": f"{base.n_features / base.d_in:g}x", "k": base.k if t.sae.activation == "topk" else None,
            "context": context, "tokens": n, "massive_tokens": n_massive, "lm_tokens": t.lm_n,
            "l0": t.l0 / n, "mse": t.sse / (n * base.d_out),
            "explained_variance_uncentred": 1 - t.sse / t.sumsq if t.sumsq > 0 else math.nan,
            "explained_variance_centred": 1 - t.sse / centred if centred > 0 else math.nan,
            "ce_clean": ce_clean, "ce_spliced": ce_s, "delta_lm_loss": ce_s - ce_clean, "kl_div": t.kl / t.lm_n if t.lm_n else math.nan,
            "ce_zero_ablation": ce_z,
            "ce_loss_recovered": (ce_z - ce_s) / (ce_z - ce_clean) if lm_seen and ce_z != ce_clean else math.nan,
            "frequency_tokens": n, "never_fired_fraction": never,
            "dead_fraction": never if n >= dead_window else math.nan,
            "dense_fraction": float((freq > dense_threshold).double().mean()), "dead_window": dead_window,
            "input_norm": t.norm_in / n, "target_norm": t.norm_out / n,
        })
        key = {"sae": t.label, "model": model_label, "dataset": dataset_label, "mode": t.mode,
               "layer": t.layer, "position": t.position}
        freq_rows.append(pd.DataFrame({
            **key, "feature": range(base.n_features), "fires": t.fires.numpy(), "tokens": n, "frequency": freq.numpy(),
        }))
        for j in range(len(edges) - 1):
            m = int(t.pos_n[j])
            if m == 0:
                continue
            pos_rows.append({
                **key, "bucket_start": edges[j], "bucket_end": edges[j + 1], "tokens": m,
                "l0": float(t.pos_l0[j]) / m, "mse": float(t.pos_sse[j]) / (m * base.d_out),
                "explained_variance_uncentred": 1 - float(t.pos_sse[j]) / float(t.pos_sumsq[j])
                if float(t.pos_sumsq[j]) > 0 else math.nan,
            })
    eval_df = pd.DataFrame(rows, columns=EVAL_COLUMNS)
    eval_df.attrs["seconds"] = seconds
    return {
        "eval": eval_df,
        "frequencies": pd.concat(freq_rows, ignore_index=True)[FREQUENCY_COLUMNS],
        "positions": pd.DataFrame(pos_rows, columns=POSITION_COLUMNS),
    }


def _score_mask(mask: torch.Tensor, budget: int) -> torch.Tensor:
    """[B, T-1]: position t predicts t+1 and both are ordinary; at most `budget` of them, row-major."""
    score = mask[:, :-1] & mask[:, 1:]
    if int(score.sum()) > budget:
        score = score & (score.flatten().cumsum(0) <= budget).view_as(score)
    return score


def _lm_sums(runner: SiteRunner, clean_h: torch.Tensor, target_ids: torch.Tensor, finals: dict, chunk: int) -> dict:
    """Sums of CE (and KL against clean) over the scored positions, computed chunk-wise over positions."""
    sums = {"clean": [0.0, 0.0], **{k: [0.0, 0.0] for k in finals}}
    for s in range(0, clean_h.shape[0], chunk):
        tgt = target_ids[s : s + chunk]
        lp_c = runner.logits(clean_h[s : s + chunk]).float().log_softmax(-1)
        sums["clean"][0] += float(-lp_c.gather(-1, tgt[:, None]).double().sum())
        p_c = lp_c.exp()
        for k, h in finals.items():
            lp = runner.logits(h[s : s + chunk]).float().log_softmax(-1)
            sums[k][0] += float(-lp.gather(-1, tgt[:, None]).double().sum())
            sums[k][1] += float((p_c * (lp_c - lp)).sum(-1).clamp_min(0).double().sum())
    return sums


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sae.evaluate",
        description="Evaluate SAEs on a language model and a corpus; writes eval.csv (one row per SAE x model "
        "x dataset x inference mode), frequencies.csv (one row per feature) and positions.csv (per token-position "
        "bucket) plus run.json. Metrics and columns: README.md, section Evaluation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("saes", nargs="+", metavar="SAE",
                   help="SAEs: names (demo:L15R-8x, L15R-8x) or folders, anything sae.load accepts; each "
                   "SAE's metadata (hook_in/hook_out or layer/position) says where it reads and writes")
    p.add_argument("--model", action="append", default=None,
                   help="'embedded' (SmolLM2-135M-Instruct, the default) or an HF model folder / hub name of a "
                   "Llama-family model (no remote code); repeat to evaluate the same SAEs on several models "
                   "(e.g. base vs instruct)")
    p.add_argument("--dataset", action="append", default=None,
                   help="'embedded-heldout' (the default), 'embedded-train', a .txt/.jsonl/.parquet file or "
                   "folder, or hf:NAME[:CONFIG][@SPLIT] (needs `datasets`); repeat for several")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                   help="ordinary (non-special) tokens to evaluate per model and dataset; dead_fraction needs "
                   "at least --dead-window of them")
    p.add_argument("--lm-tokens", type=int, default=DEFAULT_LM_TOKENS,
                   help="how many of those tokens also get the LM metrics (delta LM loss, KL, CE recovered), "
                   "which cost one partial forward per SAE; -1 = all, 0 = none")
    p.add_argument("--context", type=int, default=None,
                   help=f"tokens per document including BOS (longer documents are truncated); default "
                   f"{DEFAULT_CONTEXT}, or the model's maximum if that is smaller")
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward pass")
    p.add_argument("--pack", action="store_true",
                   help="pack documents into rows of exactly --context tokens (default: one document per row)")
    p.add_argument("--modes", default="native",
                   help="comma-separated inference modes: native (the SAE's own activation), topk (its k), "
                   "jumprelu (its threshold), relu; e.g. native,topk for TopK vs JumpReLU inference")
    p.add_argument("--position-buckets", default="log2",
                   help="token-position buckets of positions.csv: log2 (1,2,4,...), a bucket width (64), or "
                   "comma-separated edges (1,128,512,1024)")
    p.add_argument("--dead-window", type=int, default=DEAD_WINDOW,
                   help="a feature is dead if it never fires in this many tokens; dead_fraction is NaN when "
                   "fewer tokens were evaluated (never_fired_fraction is always given)")
    p.add_argument("--dense-threshold", type=float, default=DENSE_THRESHOLD,
                   help="a feature is dense if it fires on more than this fraction of tokens")
    p.add_argument("--massive-factor", type=float, default=MASSIVE_FACTOR,
                   help="leave out positions whose norm at a site exceeds this many times the site's median in "
                   "the token batch (massive activations, sae.data.massive), like BOS; 0 = keep all")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="model dtype (SAEs run in their own dtype, metrics in float64)")
    p.add_argument("--out", default="out/eval", help="folder for eval.csv, frequencies.csv, positions.csv, run.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    result = evaluate(
        args.saes,
        model=args.model or ["embedded"],
        datasets=args.dataset or ["embedded-heldout"],
        modes=modes,
        tokens=args.tokens,
        lm_tokens=None if args.lm_tokens < 0 else args.lm_tokens,
        context=args.context,
        batch_size=args.batch_size,
        pack=args.pack,
        position_buckets=args.position_buckets,
        dead_window=args.dead_window,
        dense_threshold=args.dense_threshold,
        massive_factor=args.massive_factor,
        device=device,
        dtype=dtype,
        progress=not args.quiet,
    )
    paths = result.write(args.out)
    cols = ["sae", "model", "mode", "tokens", "l0", "explained_variance_uncentred", "explained_variance_centred",
            "delta_lm_loss", "ce_loss_recovered", "never_fired_fraction"]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.eval[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for name, path in paths.items():
        print(f"{name}: {path}", file=sys.stderr)
    return 0
