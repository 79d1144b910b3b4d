"""Evaluate SAEs on a model and a corpus: L0, explained variance, MSE, delta LM loss, KL, frequencies.

    python -m sae.evaluate demo:L15R-8x path/to/sae --model embedded --dataset embedded-heldout --out out/eval

    from sae.eval.evaluate import evaluate
    result = evaluate(["demo:L15R-8x"], model="embedded", dataset="embedded-heldout", tokens=20_000)
    result.eval, result.frequencies, result.positions    # pandas DataFrames
    result.write("out/eval")                              # eval.csv, frequencies.csv, positions.csv, run.json

Every statistic uses ordinary positions only (BOS, EOS, padding and other special tokens are masked;
see `sae.data.text`; so are massive-activation positions, `sae.data.massive`, counted in
`massive_tokens`). One clean forward per token batch serves every SAE, at every layer: it keeps the
residual entering each layer with an SAE and the activations at every site an SAE reads or writes; one
encoder matmul serves all of an SAE's inference modes.
Each splice (an SAE's reconstruction replacing its output site, special positions untouched) then
reruns only the blocks from the SAE's layer on, from that cached residual; zero-ablation baselines run
once per output site. LM metrics can be limited to the first `lm_tokens` tokens (they cost the reruns);
the activation metrics and frequencies use all `tokens`, and once the LM budget is spent the clean
forward stops after the last layer with an SAE.

The metric definitions are in `sae.eval.metrics`; the tables and their columns in `sae.eval.tables`.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from sae.data.massive import MASSIVE_FACTOR, massive_positions
from sae.data.text import TokenBatcher, describe_source, iter_texts, resolve_context
from sae.devices import check_device
from sae.errors import SAEError, ShapeError
from sae.eval.metrics import (
    DEAD_WINDOW,
    DENSE_THRESHOLD,
    MetricSums,
    NextTokenSums,
    next_token_sums,
    position_edges,
    score_mask,
)
from sae.eval.resolve import INFERENCE_MODES, Target, inference_variant, resolve_saes, sae_sites
from sae.eval.tables import EvalResult, concat_tables, run_tables
from sae.lm.models import load_model, model_name
from sae.lm.runner import Prologue, SiteRunner, Splice, zero_ablation
from sae.lm.sites import check_finite
from sae.model import SparseAutoencoder
from sae.precision import dtype_name

DEFAULT_TOKENS = 100_000
DEFAULT_LM_TOKENS = 20_000


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
    dtype: torch.dtype | str | None = "auto",
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
    dtype: of a model given by name: "auto" (bfloat16 where the hardware has fast bf16, `sae.precision`;
    delta LM within 0.001 nats of float32 on SmolLM2), a name or a torch dtype; None = float32.
    """
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise SAEError("give at least one inference mode")
    for m in modes:
        if m not in INFERENCE_MODES:
            raise SAEError(f"unknown inference mode {m!r}; modes: {', '.join(INFERENCE_MODES)}")
    if tokens < 1:
        raise SAEError(f"tokens must be positive, got {tokens}")
    device = check_device(device)
    resolved = resolve_saes(saes)
    models = model if isinstance(model, (list, tuple)) else [model]
    datasets = list(datasets) if datasets is not None else [dataset]
    parts: list[dict[str, Any]] = []
    settings = {
        "saes": [lab for lab, _ in resolved], "models": [], "model_dtypes": [],
        "datasets": [describe_source(d) for d in datasets],
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
        settings["model_dtypes"].append(dtype_name(next(lm.parameters()).dtype))
        for ds in datasets:
            ds_label = dataset_label if dataset_label and len(datasets) == 1 else describe_source(ds)
            parts.append(_evaluate_one(
                resolved, lm, tok, label, ds, ds_label, modes=modes, tokens=tokens, lm_tokens=lm_tokens,
                context=context, batch_size=batch_size, pack=pack, position_buckets=position_buckets,
                dead_window=dead_window, dense_threshold=dense_threshold, massive_factor=massive_factor,
                logit_chunk=logit_chunk, text_field=text_field, progress=progress,
            ))
    return concat_tables(parts, settings)


def _targets(resolved: list[tuple[str, SparseAutoencoder]], modes: list[str], runner: SiteRunner,
             model_label: str) -> list[Target]:
    """Every (SAE, mode) at its sites of this model, the SAEs moved to the model's device."""
    targets = []
    for label, sae in resolved:
        inp, out = sae_sites(sae, label)
        inp, out = runner.site(inp), runner.site(out)
        if sae.d_in != runner.d_model or sae.d_out != runner.d_model:
            raise ShapeError(
                f"{label}: SAE width d_in={sae.d_in}, d_out={sae.d_out} but {model_label} has width {runner.d_model} at "
                f"{inp.hook} / {out.hook}"
            )
        sae = sae.to(runner.device)
        for mode in modes:
            if mode == "topk" and not sae.k and len(resolved) > 1:
                continue  # a vanilla SAE among TopK ones has no k: it gets its other modes only
            targets.append(Target(label, sae, inference_variant(sae, mode), mode, inp, out))
    return targets


def _clean_forward(runner: SiteRunner, pro: Prologue, by_layer: dict[int, list[Target]]
                   ) -> tuple[torch.Tensor, int, dict[int, torch.Tensor], dict[str, torch.Tensor]]:
    """Run the clean model up to the last layer with an SAE: (hidden [B, T, d] after it, the next layer,
    layer -> residual entering it [B, T, d], hook -> activations [B, T, d] at every site an SAE reads or writes)."""
    hidden, prev = pro.hidden, 0
    resid_pre: dict[int, torch.Tensor] = {}
    acts: dict[str, torch.Tensor] = {}
    for L in sorted(by_layer):
        hidden, _ = runner.run_layers(pro, hidden, prev, L)
        resid_pre[L] = hidden
        sites = {s for t in by_layer[L] for s in (t.inp, t.out)}
        hidden, got = runner.run_layers(pro, hidden, L, L + 1, capture=sites)
        acts.update({s.hook: got[s.hook] for s in sites})
        prev = L + 1
    return hidden, prev, resid_pre, acts


def _spliced_hidden(runner: SiteRunner, pro: Prologue, resid: torch.Tensor, t: Target, out_acts: torch.Tensor,
                    mask: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """[B, T, d] final hidden state with y_hat [n, d] in place of t's output site at the ordinary positions
    `mask` [B, T]; the blocks from t's layer on rerun from `resid`, the residual entering it."""
    full = out_acts.clone()
    full[mask] = y_hat.to(full.dtype)
    h, _ = runner.run_layers(pro, resid, t.layer, runner.n_layers,
                             splices=[Splice(t.out, lambda _x, f=full: f, inp=t.inp, keep=mask)])
    return h


def _evaluate_one(
    resolved: list[tuple[str, SparseAutoencoder]], model: Any, tokenizer: Any, model_label: str, dataset: Any,
    dataset_label: str, *, modes: list[str], tokens: int, lm_tokens: int | None, context: int | None,
    batch_size: int, pack: bool, position_buckets: str | Sequence[int] | None, dead_window: int,
    dense_threshold: float, massive_factor: float, logit_chunk: int, text_field: str, progress: bool,
) -> dict[str, Any]:
    """The three tables of one model on one dataset."""
    from tqdm.auto import tqdm

    runner = SiteRunner(model)
    device = runner.device
    context = resolve_context(context, runner.max_context)
    edges = position_edges(position_buckets, context)
    edges_t = torch.tensor(edges, dtype=torch.long)
    targets = _targets(resolved, modes, runner, model_label)
    sums = [MetricSums(t.sae.n_features, t.sae.d_out, len(edges) - 1) for t in targets]
    by_layer: dict[int, list[Target]] = {}
    for t in targets:
        by_layer.setdefault(t.layer, []).append(t)
    lm_budget = tokens if lm_tokens is None else min(lm_tokens, tokens)
    clean = NextTokenSums()
    zero = {t.out: NextTokenSums() for t in targets}
    n_massive = seen = 0
    started = time.perf_counter()

    batcher = TokenBatcher(tokenizer, context=context, batch_size=batch_size, pack=pack, max_context=runner.max_context)
    bar = tqdm(total=tokens, unit="tok", desc=f"evaluate {model_label}", disable=not progress, leave=False)
    try:
        for b, batch in enumerate(batcher.batches(iter_texts(dataset, text_field=text_field), max_tokens=tokens)):
            batch = batch.to(device)
            need_lm = clean.tokens < lm_budget
            with torch.no_grad():
                pro = runner.prologue(batch.input_ids, batch.attention_mask)
                hidden, prev, resid_pre, acts = _clean_forward(runner, pro, by_layer)
                for hook, a in acts.items():
                    check_finite(f"{hook} (model {model_label}, token batch {b})", a, batch.mask)
                massive = massive_positions(acts.values(), batch.mask, massive_factor)
                n_massive += int(massive.sum())
                mask = batch.mask & ~massive  # [B, T] the positions every statistic uses
                if need_lm:
                    hidden, _ = runner.run_layers(pro, hidden, prev, runner.n_layers)
                    score = score_mask(mask, lm_budget - clean.tokens)
                    target_ids = batch.input_ids[:, 1:][score]
                    n_lm = int(score.sum())
                    clean_h = hidden[:, :-1][score]
                    finals: dict[Any, torch.Tensor] = {}
                    for out_site in {t.out for t in targets}:
                        L = out_site.layer
                        h, _ = runner.run_layers(pro, resid_pre[L], L, runner.n_layers,
                                                 splices=[Splice(out_site, zero_ablation, keep=mask)])
                        finals[("zero", out_site)] = h[:, :-1][score]
                pos = torch.arange(mask.shape[1], device=device).expand_as(mask)[mask].cpu()
                bucket = torch.bucketize(pos, edges_t, right=True) - 1
                shared: tuple[Any, torch.Tensor] | None = None  # (SAE, pre-activations): its modes are consecutive
                for i, (t, s) in enumerate(zip(targets, sums)):
                    x = acts[t.inp.hook][mask].float()
                    y = acts[t.out.hook][mask].float()
                    if shared is None or shared[0] is not t.base:
                        shared = (t.base, t.sae.pre_acts(x.to(t.sae.W_enc.dtype)))
                    values, idx = t.sae.sparse_code(shared[1])
                    y_hat = t.sae.decode_sparse(values, idx).float()
                    s.add(x, y, y_hat, values, idx, bucket)
                    if need_lm:
                        h = _spliced_hidden(runner, pro, resid_pre[t.layer], t, acts[t.out.hook], mask, y_hat)
                        finals[i] = h[:, :-1][score]
                if need_lm:
                    clean_ce, lm_sums = next_token_sums(runner.logits, clean_h, target_ids, finals, logit_chunk)
                    clean.add(clean_ce, 0.0, n_lm)
                    for key, (ce, kl) in lm_sums.items():
                        (zero[key[1]] if isinstance(key, tuple) else sums[key].lm).add(ce, kl, n_lm)
            seen += int(mask.sum())
            bar.update(batch.n_tokens)
    finally:
        bar.close()
    if seen == 0:
        raise SAEError(f"the corpus {dataset_label} is empty: no ordinary tokens to evaluate")
    seconds = time.perf_counter() - started
    tables = run_tables(targets, sums, model=model_label, dataset=dataset_label, context=context,
                        massive_tokens=n_massive, clean=clean, zero=zero, edges=edges, dead_window=dead_window,
                        dense_threshold=dense_threshold)
    tables["eval"].attrs["seconds"] = seconds
    return tables
