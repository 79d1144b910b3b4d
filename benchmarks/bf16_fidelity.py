"""How much the model's dtype changes what the SAEs see: bfloat16 against float32 on the embedded model.

    .venv/bin/python benchmarks/bf16_fidelity.py                    # layer 15, 2,048 held-out tokens
    .venv/bin/python benchmarks/bf16_fidelity.py --tokens 4096 --sae demo:L15R-8x

(1) Relative error of the bf16 activations at R, A, M and the TC input of one layer: pooled
    ||a_bf16 - a_fp32|| / ||a_fp32|| over the ordinary held-out tokens, and the median per-token cosine.
(2) EV (centred, pooled) of one SAE (TopK inference) on the fp32 and on the bf16 activations.
(3) Delta LM loss of that SAE with the whole model in fp32 and in bf16 (`sae.eval.evaluate --dtype`), on the
    same tokens. The project keeps LM metrics in fp32 unless the two agree within 0.01 nats.
Results: benchmarks/results/bf16_fidelity.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae import load  # noqa: E402
from sae.data.massive import massive_positions  # noqa: E402
from sae.data.text import token_batches  # noqa: E402
from sae.eval.evaluate import evaluate  # noqa: E402
from sae.eval.resolve import inference_variant  # noqa: E402
from sae.lm.embedded import corpus_texts, load_model  # noqa: E402
from sae.lm.runner import SiteRunner  # noqa: E402
from sae.precision import fast_bf16  # noqa: E402
from sae.train.postprocess import inference_stats  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bf16_fidelity.md"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--sae", default="demo:L15R-8x")
    args = p.parse_args()
    L = args.layer
    sites = {"R": f"blocks.{L}.hook_resid_post", "A": f"blocks.{L}.hook_attn_out", "M": f"blocks.{L}.hook_mlp_out",
             "TC": f"blocks.{L}.ln2.hook_normalized"}
    model, tok = load_model()
    low = copy.deepcopy(model).to(torch.bfloat16)
    texts = corpus_texts("heldout")
    acts = {dt: {s: [] for s in sites.values()} for dt in ("fp32", "bf16")}
    t = {"fp32": 0.0, "bf16": 0.0}
    for batch in token_batches(texts, tok, batch_size=8, max_tokens=args.tokens):
        for name, m in (("fp32", model), ("bf16", low)):
            start = time.perf_counter()
            got = SiteRunner(m).capture(batch.input_ids, batch.attention_mask, list(sites.values()))
            t[name] += time.perf_counter() - start
            if name == "fp32":
                keep = batch.mask & ~massive_positions(got.values(), batch.mask)
            for s in sites.values():
                acts[name][s].append(got[s][keep].double())
    lines = [f"# bf16 against fp32 on SmolLM2-135M-Instruct, layer {L}", "",
             f"`{' '.join(sys.argv)}`; {time.strftime('%Y-%m-%d')}; torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, fast bf16 on this machine: {fast_bf16()}. Capture time fp32 "
             f"{t['fp32']:.1f} s, bf16 {t['bf16']:.1f} s.", "", "| site | relative error | median token cosine |",
             "|---|---:|---:|"]
    for pos, s in sites.items():
        a, b = torch.cat(acts["fp32"][s]), torch.cat(acts["bf16"][s])
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).median()
        lines.append(f"| {pos} | {float((a - b).norm() / a.norm()):.4f} | {float(cos):.5f} |")
    n = sum(len(x) for x in acts["fp32"][sites["R"]])
    sae = inference_variant(load(args.sae), "topk")
    hook = sae.meta.hook_in
    ev = {dt: inference_stats(sae, [x.float() for x in acts[dt][hook]], [x.float() for x in acts[dt][hook]])["ev"]
          for dt in acts}
    lines += ["", f"{args.sae} (TopK inference) on {n:,} tokens: EV {ev['fp32']:.4f} on fp32 activations, "
              f"{ev['bf16']:.4f} on bf16 ones."]
    lm = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        row = evaluate({args.sae: sae}, "embedded", texts, dtype=dtype, tokens=args.tokens, lm_tokens=args.tokens,
                       progress=False).eval.iloc[0]
        lm[name] = row
    lines += ["", "| model dtype | ce clean | ce spliced | delta LM (nats) |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {r['ce_clean']:.4f} | {r['ce_spliced']:.4f} | {r['delta_lm_loss']:.4f} |" for k, r in lm.items()]
    gap = abs(lm["fp32"]["delta_lm_loss"] - lm["bf16"]["delta_lm_loss"])
    lines += ["", f"Delta LM differs by {gap:.4f} nats between the two dtypes "
              f"({'within' if gap <= 0.01 else 'outside'} the 0.01-nat rule)."]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
