"""Top-context sampling against plain activation capture, side by side in one run (embedded SmolLM2).

    .venv/bin/python benchmarks/bench_contexts.py                      # 8x and 32x shapes, 32 documents
    .venv/bin/python benchmarks/bench_contexts.py --docs 64 --repeats 5 --wide 131072 --saes demo:L15R-8x

Per SAE, alternating `--repeats` times over the same held-out documents:
(a) plain capture: `ActivationStream(...).chunks()` at the SAE's site (tokenisation, forward, masking,
    copying: what any consumer of activations pays);
(b) `sae.interp.contexts.top_contexts` on the same documents: the same stream plus tokenising the documents
    beside it, encoding every token with the SAE (`encode_sparse`), and the top / random bookkeeping.
Ordinary tokens per second, medians, and the ratio (b)/(a) (target >= 0.9), in wall-clock time and in
process CPU time (all threads; less sensitive to other jobs on a shared machine). (b) also reports the
share of its own wall time spent in the SAE (encoding) and in the bookkeeping (`Collector.update`
minus encoding), timed inside the same run. The SAEs read layer 15's
residual stream: random JumpReLU SAEs of the demo's shapes (8x = 4,608 and 32x = 18,432 features) with
one threshold set so that L0 = 50 on the benchmark's tokens (speed depends on the shape and L0, not on
training), `--saes` adds named ones, and `--wide F` a random TopK SAE (k = 50) with F features: the
bookkeeping at Llama Scope's width (131,072), with d_model 576. Results:
benchmarks/results/bench_contexts.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sae  # noqa: E402
from sae.data.stream import ActivationStream  # noqa: E402
from sae.eval.resolve import sae_sites  # noqa: E402
from sae.interp import collector as ctx_module  # noqa: E402
from sae.interp.contexts import top_contexts  # noqa: E402
from sae.lm.embedded import corpus_texts, load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def capture(model, tok, docs, hook) -> int:
    n = 0
    for chunk in ActivationStream(model, tok, source=docs, hooks=[hook], shuffle=False, progress=False).chunks():
        n += len(chunk[hook])
    return n


SPENT = {"update": 0.0, "encode": 0.0}


def timed(name: str, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - t
    return wrapper


ctx_module.Collector.update = timed("update", ctx_module.Collector.update)
ctx_module.Collector._active = timed("encode", ctx_module.Collector._active)


def contexts(model, tok, docs, sae_) -> int:
    return top_contexts(sae_, model=model, tokenizer=tok, dataset=docs, tokens=10**9, progress=False).tokens


def random_sae(n: int, x: torch.Tensor, activation: str, hook: str) -> sae.SparseAutoencoder:
    """Random directions; JumpReLU with one threshold giving L0 = 50 on x [tokens, d], or TopK k = 50."""
    g = torch.Generator().manual_seed(n)
    d = x.shape[1]
    s = sae.SparseAutoencoder.from_weights(
        torch.randn(d, n, generator=g) / d**0.5, torch.zeros(n), torch.randn(n, d, generator=g) / d**0.5,
        torch.zeros(d), activation=activation, k=50, meta=sae.SAEMeta(name=f"random {activation} {n:,}", hook_in=hook))
    s.requires_grad_(False)
    if activation == "jumprelu":
        pre = s.pre_acts(x).flatten()
        s.threshold.fill_(float(pre.kthvalue(pre.numel() - 50 * len(x)).values))
    return s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--saes", nargs="*", default=[], help="named SAEs to add (e.g. demo:L15R-8x)")
    p.add_argument("--docs", type=int, default=32, help="held-out documents per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--wide", type=int, default=0, help="also a random TopK SAE with this many features (e.g. 131072)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_contexts.json")
    args = p.parse_args()

    model, tok = load_model()
    docs = corpus_texts("heldout")[: args.docs]
    hook = "blocks.15.hook_resid_post"
    x = next(ActivationStream(model, tok, source=docs, hooks=[hook], shuffle=False, progress=False).chunks())[hook]
    saes = {s.meta.name: s for s in (random_sae(8 * x.shape[1], x, "jumprelu", hook),
                                     random_sae(32 * x.shape[1], x, "jumprelu", hook))}
    saes.update({name: sae.load(name).requires_grad_(False) for name in args.saes})
    if args.wide:
        saes[f"random topk {args.wide:,}"] = random_sae(args.wide, x, "topk", hook)
    capture(model, tok, docs[:2], hook)  # warm-up
    rows = []
    for name, s in saes.items():
        hook = sae_sites(s)[0].hook
        t_cap, t_ctx, c_cap, c_ctx = [], [], [], []
        SPENT.update(update=0.0, encode=0.0)
        for _ in range(args.repeats):
            runs = ((t_cap, c_cap, lambda: capture(model, tok, docs, hook)),
                    (t_ctx, c_ctx, lambda: contexts(model, tok, docs, s)))
            for times, cpu, fn in runs:
                gc.collect()
                t, c = time.perf_counter(), time.process_time()
                n = fn()
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        cap, ctx = statistics.median(t_cap), statistics.median(t_ctx)
        cpu_ratio = statistics.median(c_cap) / statistics.median(c_ctx)
        encode_share, book_share = SPENT["encode"] / sum(t_ctx), (SPENT["update"] - SPENT["encode"]) / sum(t_ctx)
        rows.append({"sae": name, "n_features": s.n_features, "tokens": n, "capture_s": cap, "contexts_s": ctx,
                     "capture_tok_s": n / cap, "contexts_tok_s": n / ctx, "ratio": cap / ctx,
                     "capture_runs_s": t_cap, "contexts_runs_s": t_ctx, "cpu_ratio": cpu_ratio,
                     "capture_cpu_s": c_cap, "contexts_cpu_s": c_ctx, "encode_share": encode_share,
                     "bookkeeping_share": book_share})
        print(f"{name}: {n} tokens; capture {n / cap:.0f} tok/s, contexts {n / ctx:.0f} tok/s, ratio {cap / ctx:.3f} "
              f"(CPU time {cpu_ratio:.3f}); of the contexts time: encoding {encode_share:.1%}, bookkeeping {book_share:.1%}", flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    result = {"docs": args.docs, "repeats": args.repeats, "rows": rows, "torch": torch.__version__,
              "python": platform.python_version(), "threads": torch.get_num_threads(), "loadavg_after": load,
              "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| SAE | features | tokens | capture tok/s | top contexts tok/s | ratio (wall) | ratio (CPU) | "
             "encoding share | bookkeeping share |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['sae']} | {r['n_features']:,} | {r['tokens']:,} | {r['capture_tok_s']:.0f} | "
              f"{r['contexts_tok_s']:.0f} | {r['ratio']:.3f} | {r['cpu_ratio']:.3f} | {r['encode_share']:.1%} | "
              f"{r['bookkeeping_share']:.1%} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + f"\n\nload average after the run: {' '.join(load)}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
