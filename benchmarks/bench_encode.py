"""Encoding the demo suite in its evaluation modes (native JumpReLU or ReLU, and TopK) on captured
activations, as `sae.eval.evaluate` and post-processing do, side by side with the routes they replaced:

- per mode: each mode's own `encode_sparse` (one encoder matmul per mode) against one shared
  `pre_acts` and a `sparse_code` per mode (one matmul per SAE);
- the threshold code: `sparse_code`'s mask-and-non-zeros against the dense route (activations [n, F],
  then their top-m entries by `topk`), which also checks that both decode to the same reconstruction.

    .venv/bin/python benchmarks/bench_encode.py [--tokens 8192] [--chunk 2048] [--repeats 3]

Needs the demo suite and its capture (`make demo`). Floor: the encoder matmul's FLOPs at the rate an
fp32 matmul of the same shape reaches here (evaluation encodes in fp32). Writes
benchmarks/results/bench_encode.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_table  # noqa: E402
from sae.eval.resolve import inference_variant  # noqa: E402
from sae.formats import load  # noqa: E402
from sae.pipelines.demo import HOOK, SUITE, DemoSettings, training_stream  # noqa: E402
from sae.train import first_tokens  # noqa: E402


def best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def dense_route(sae, pre: torch.Tensor):
    """The replaced threshold code: dense activations, then the top m of each row."""
    acts = sae._dense_acts(pre)
    m = max(int((acts > 0).sum(-1).max()), 1)
    return acts.topk(m, dim=-1, sorted=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=2048, help="tokens per encoder call (an evaluation batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_encode.md")
    args = ap.parse_args()
    x = first_tokens(training_stream(DemoSettings()), [HOOK], args.tokens)[HOOK].float()
    chunks = x.split(args.chunk)
    rows = []
    for name in SUITE:
        sae = load(f"demo:{name}")
        modes = [inference_variant(sae, m) for m in (("native", "topk") if sae.k else ("native",))]
        a, b = torch.randn(args.chunk, sae.d_in), sae.W_enc.detach().contiguous()
        floor = best_seconds(lambda: a @ b, args.repeats) * len(chunks) * len(modes)
        with torch.no_grad():
            for chunk in chunks:  # the threshold code and the dense route agree
                pre = sae.pre_acts(chunk)
                new, old = sae.sparse_code(pre), dense_route(sae, pre)
                assert torch.allclose(sae.decode_sparse(*new), sae.decode_sparse(old.values, old.indices), atol=1e-4)
            per_mode = best_seconds(lambda: [v.encode_sparse(c) for c in chunks for v in modes], args.repeats)
            shared = best_seconds(lambda: [v.sparse_code(p) for c in chunks for p in [sae.pre_acts(c)] for v in modes],
                                  args.repeats)
            dense = best_seconds(lambda: [dense_route(sae, sae.pre_acts(c)) for c in chunks], args.repeats)
            native = best_seconds(lambda: [sae.sparse_code(sae.pre_acts(c)) for c in chunks], args.repeats)
        rows.append(f"| {name} | {sae.activation} | {' + '.join(v.activation for v in modes)} | {per_mode * 1e3:.0f} | "
                    f"{shared * 1e3:.0f} | {per_mode / shared:.2f} | {dense * 1e3:.0f} | {native * 1e3:.0f} | "
                    f"{dense / native:.2f} | {floor / len(modes) * 1e3:.0f} |")
        print(rows[-1], flush=True)
    write_table(args.out, [
        f"# Encoding the demo suite: {args.tokens:,} captured tokens in chunks of {args.chunk:,}",
        "",
        f"`python benchmarks/bench_encode.py --tokens {args.tokens} --chunk {args.chunk} --repeats {args.repeats}`; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats}, ms for all tokens.",
    ], ["SAE", "native", "modes", "per mode", "shared pre", "ratio", "native: dense + topk", "native: sparse_code",
        "ratio", "fp32 matmul floor (one mode)"], rows, numeric_from=3)


if __name__ == "__main__":
    main()
