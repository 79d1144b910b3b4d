"""Capture and evaluation cost on the embedded SmolLM2-135M-Instruct, side by side in one run.

    .venv/bin/python benchmarks/bench_capture.py                  # layer 15, 8 held-out docs per batch
    .venv/bin/python benchmarks/bench_capture.py --layers 5 15 25 --repeats 5
    .venv/bin/python benchmarks/bench_capture.py --only stream --stream-tokens 32768   # (d) alone

(a) Capture: the R, A, M and TC-input sites of one layer from one forward (`SiteRunner.capture`) against
    a plain `transformers` forward truncated at that layer (`config.num_hidden_layers = L + 1`, the
    model's own loop, no hooks). Alternating, `--repeats` times; medians and their ratio.
(b) Capture throughput: `ActivationStream` over the held-out corpus at the 4 sites of one layer
    (tokenisation, masks and copying included), ordinary tokens per second.
(d) The training stream with `sae.train`'s defaults (documents packed into rows of 1024 tokens, the model
    in the "auto" dtype: bfloat16 where the hardware has fast bf16, massive activations left out, no
    cache) against a bare `transformers` forward truncated after the layer, in the same dtype, on the
    same packed rows; alternating, best of `--repeats`. Target: stream >= 0.9x bare. A short bare
    forward in the other dtype shows what the "auto" choice is worth on this machine.
(c) Evaluation: the 8 SAEs of one layer (R, A, M, TC at 8x and 32x, TopK k=50, random weights) on the
    same token batch, in clean-forward equivalents (one clean forward = `model(input_ids).logits`):
    activation metrics only (`lm_tokens=0`) and with every LM metric (delta LM, KL, CE recovered).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae import SAEMeta, SparseAutoencoder  # noqa: E402
from sae.data.stream import ActivationStream  # noqa: E402
from sae.data.text import token_batches  # noqa: E402
from sae.eval.evaluate import evaluate  # noqa: E402
from sae.lm.embedded import load_model  # noqa: E402
from sae.lm.runner import SiteRunner  # noqa: E402
from sae.precision import dtype_name, fast_bf16, resolve_dtype  # noqa: E402


def timed(fn) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_pair(a, b, repeats):
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a))
        tb.append(timed(b))
    return statistics.median(ta), statistics.median(tb)


def random_topk(layer: int, position: str, expansion: int, d: int, seed: int) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    n = expansion * d
    hook_in = {"R": "hook_resid_post", "A": "hook_attn_out", "M": "hook_mlp_out", "TC": "ln2.hook_normalized"}[position]
    hook_out = "hook_mlp_out" if position == "TC" else hook_in
    return SparseAutoencoder.from_weights(
        torch.randn(d, n, generator=g) / d**0.5, torch.zeros(n), torch.randn(n, d, generator=g) / n**0.5,
        torch.zeros(d), activation="topk", k=50,
        meta=SAEMeta(name=f"L{layer}{position}-{expansion}x", hook_in=f"blocks.{layer}.{hook_in}",
                     hook_out=f"blocks.{layer}.{hook_out}"),
    ).requires_grad_(False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[15])
    p.add_argument("--batch-size", type=int, default=8, help="documents per batch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stream-tokens", type=int, default=4000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--only", choices=("all", "stream"), default="all", help="stream: section (d) alone")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only == "stream":
        stream_vs_bare(args.layers[0], args.stream_tokens, args.repeats)
        return
    model, tok = load_model()
    runner = SiteRunner(model)
    batch = next(token_batches("embedded-heldout", tok, batch_size=args.batch_size))
    ids, attn = batch.input_ids, batch.attention_mask
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {list(ids.shape)}, "
          f"{batch.n_tokens} ordinary tokens")

    def clean():
        with torch.no_grad():
            model(ids, attention_mask=attn)

    for L in args.layers:
        sites = [f"blocks.{L}.hook_resid_post", f"blocks.{L}.hook_attn_out", f"blocks.{L}.hook_mlp_out",
                 f"blocks.{L}.ln2.hook_normalized"]

        def truncated():
            n = model.config.num_hidden_layers
            model.config.num_hidden_layers = L + 1
            try:
                with torch.no_grad():
                    model.model(ids, attention_mask=attn, use_cache=False)
            finally:
                model.config.num_hidden_layers = n

        def capture():
            runner.capture(ids, attn, sites)

        timed(truncated), timed(capture)  # warm-up
        t_plain, t_cap = median_pair(truncated, capture, args.repeats)
        print(f"\n(a) layer {L}: plain forward truncated at the layer {t_plain * 1e3:.0f} ms, capture of R/A/M/TC "
              f"{t_cap * 1e3:.0f} ms, ratio {t_cap / t_plain:.3f}")

        saes = {s.meta.name: s for i, s in enumerate(
            random_topk(L, pos, e, runner.d_model, seed=10 * L + j)
            for j, (pos, e) in enumerate((p_, e_) for p_ in ("R", "A", "M", "TC") for e_ in (8, 32)))}
        texts = [tok.decode(r[r != tok.pad_token_id][1:]) for r in ids]  # the same documents again
        n_tok = batch.n_tokens

        def ev(lm):
            return lambda: evaluate(saes, model, texts, tokenizer=tok, tokens=n_tok, lm_tokens=lm,
                                    batch_size=args.batch_size, progress=False)

        t_clean, t_act, t_full = [], [], []
        for _ in range(max(1, args.repeats // 2)):  # alternating, so load from other jobs hits all three alike
            t_clean.append(timed(clean))
            t_act.append(timed(ev(0)))
            t_full.append(timed(ev(None)))
        t_clean, t_act, t_full = (statistics.median(v) for v in (t_clean, t_act, t_full))
        print(f"(c) layer {L}: clean forward {t_clean * 1e3:.0f} ms; 8 SAEs, activation metrics only "
              f"{t_act / t_clean:.2f} clean forwards; with delta LM / KL / CE recovered {t_full / t_clean:.2f} "
              f"(8 spliced + 3 zero-ablation reruns of blocks {L}..{runner.n_layers - 1} + LM head)")

    L = args.layers[0]
    stream = ActivationStream(model, tok, source="embedded-heldout", hooks=[
        f"blocks.{L}.hook_resid_post", f"blocks.{L}.hook_attn_out", f"blocks.{L}.hook_mlp_out",
        f"blocks.{L}.ln2.hook_normalized"], batch_size=1024, max_tokens=args.stream_tokens, shuffle=False,
        seq_batch_size=args.batch_size, progress=False)
    t = time.perf_counter()
    n = sum(b[f"blocks.{L}.hook_resid_post"].shape[0] for b in stream)
    dt = time.perf_counter() - t
    t_full_fwd = []
    for r in token_batches("embedded-heldout", tok, batch_size=args.batch_size, max_tokens=args.stream_tokens):
        t_full_fwd.append(timed(lambda r=r: model(r.input_ids, attention_mask=r.attention_mask)))
    print(f"\n(b) ActivationStream, 4 sites of layer {L}: {n} tokens in {dt:.1f} s = {n / dt:.0f} tokens/s "
          f"(a full forward with LM head over the same tokens: {n / sum(t_full_fwd):.0f} tokens/s)")



def _truncated(model, layer: int):
    """A bare forward through blocks 0..layer: the model's own loop, no hooks, no final norm or head."""
    def run(batches):
        n = model.config.num_hidden_layers
        model.config.num_hidden_layers = layer + 1
        try:
            with torch.no_grad():
                for b in batches:
                    model.model(b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        finally:
            model.config.num_hidden_layers = n
    return run


def stream_vs_bare(layer: int, tokens: int, repeats: int) -> None:
    """(d): the training stream's defaults against a bare truncated forward on the same packed rows."""
    hook = f"blocks.{layer}.hook_resid_post"
    auto = resolve_dtype("auto")
    model, tok = load_model(dtype=auto)
    other = torch.float32 if auto == torch.bfloat16 else torch.bfloat16

    def stream():
        return ActivationStream(model, tok, source="embedded-train", hooks=[hook], max_tokens=tokens, pack=True,
                                shuffle=False, progress=False)

    batches = list(stream().token_batches())
    n_rows = 0
    for i, b in enumerate(batches):  # the rows the stream reads for `tokens` ordinary tokens
        n_rows += int(b.mask.sum())
        if n_rows >= tokens:
            batches = batches[: i + 1]
            break
    bare = _truncated(model, layer)
    t_stream, t_bare = [], []
    for _ in range(repeats):
        t_bare.append(timed(lambda: bare(batches)))
        t_stream.append(timed(lambda: sum(c[hook].shape[0] for c in stream().chunks())))
    n = sum(c[hook].shape[0] for c in stream().chunks())
    best_s, best_b = min(t_stream), min(t_bare)
    print(f"(d) layer {layer}, {n:,} ordinary tokens in packed rows of {batches[0].input_ids.shape[1]}, "
          f"model in {dtype_name(auto)} (auto; fast bf16 here: {fast_bf16()}):")
    print(f"    over the same {len(batches)} token batches ({n_rows:,} ordinary tokens; the stream keeps {n:,}): bare "
          f"truncated forward {best_b:.2f} s ({n_rows / best_b:,.0f} tokens/s), training stream {best_s:.2f} s "
          f"({n_rows / best_s:,.0f} tokens/s), stream / bare speed {best_b / best_s:.3f} (target >= 0.9)")
    model.to(other)
    few = batches[: max(1, len(batches) // 16)]
    few_tokens = sum(int(b.mask.sum()) for b in few)
    print(f"    bare forward in {dtype_name(other)} on {few_tokens:,} of those tokens: "
          f"{few_tokens / timed(lambda: _truncated(model, layer)(few)):,.0f} tokens/s")


if __name__ == "__main__":
    main()
