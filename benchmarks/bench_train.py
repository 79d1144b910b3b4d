"""TopK SAE training throughput and quality, side by side: this project vs EleutherAI sparsify vs SAELens.

Same activations, same shape (default: the demo model's 8x SAE, d = 576, F = 4,608, k = 50, batch
4,096), same number of tokens, one process. Reports tokens/s of the training loop, explained variance
(centred, pooled) on held-out activations after training, and the floor: the encoder's forward matmul
alone (2 x batch x d x F FLOPs) timed here.

The comparison libraries go in a throwaway venv, never in the project's .venv:

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.13.0          # first, so pip keeps the CPU build
    /tmp/benchvenv/bin/pip install "eai-sparsify==1.3.*" sae-lens safetensors pandas tqdm gguf accelerate
    /tmp/benchvenv/bin/python benchmarks/bench_train.py   # from the repository root

A library that is not installed is skipped (the table says so). Data: `--data embedded` captures the
embedded SmolLM2's L15R activations on the Wikipedia training split once into the activation cache
($SAE_CACHE/activations; needs the project's deps in the venv: transformers, gguf, accelerate; falls
back to synthetic with a note), `--data synthetic` uses
sae.data.synthetic at d = 576 (heavy-tailed, hierarchical, correlated features). Each library trains with
its own defaults for TopK (optimiser, lr, init, decoder normalisation), as its trainer would:

- ours: `sae.train.train` (Llama Scope recipe: Adam 8e-4, K-annealing d/2 -> k over 10% of steps,
  dataset-wise normalisation), and once more with K-annealing off (k = 50 throughout);
- sparsify 1.3: `SparseCoder` + the step of `sparsify.Trainer` (b_dec = data mean at step 0, unit-norm
  decoder every step, FVU loss, gradient parallel to decoder rows removed, its default optimiser:
  schedule-free signum, lr 5e-3 / sqrt(F / 2^14));
- SAELens 6: `TopKTrainingSAE.training_forward_pass` + the step of `SAETrainer._train_step`
  (Adam 3e-4, grad-norm clip 1.0, dead-neuron bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------------
def get_data(kind: str, n_train: int, n_eval: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    if kind == "embedded":
        try:
            from sae.data.stream import ActivationStream

            hook = "blocks.15.hook_resid_post"
            stream = ActivationStream("embedded", source="embedded-train", hooks=[hook], batch_size=4096,
                                      max_tokens=n_train + n_eval, seed=seed, cache=True, progress=False)
            x = torch.cat([b[hook] for b in stream])
            if x.shape[1] != d:
                raise ValueError(f"the embedded model has d = {x.shape[1]}, not {d}")
            return x[:n_train].contiguous(), x[n_train:].contiguous(), "embedded SmolLM2-135M L15R, Wikipedia train split"
        except Exception as e:  # a venv without transformers/gguf, or no cached model
            print(f"note: embedded activations unavailable ({str(e).splitlines()[0][:200]}); using synthetic", file=sys.stderr)
    from sae.data.synthetic import SyntheticData

    data = SyntheticData(d=d, n_parents=2048, children_per_parent=2, freq_min=0.002, freq_max=0.05, offset=4.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.cat([data.sample(8192, g) for _ in range(math.ceil((n_train + n_eval) / 8192))])
    return x[:n_train].contiguous(), x[n_train:n_train + n_eval].contiguous(), f"synthetic (sae.data.synthetic, d={d}, 6,144 planted features)"


def ev(predict, x_eval: torch.Tensor) -> float:
    with torch.no_grad():
        sq = sum(float((predict(c) - c).pow(2).sum()) for c in x_eval.split(4096))
    return 1 - sq / float((x_eval - x_eval.mean(0)).pow(2).sum())


def seconds_per_call(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def matmul_floor(B: int, d: int, F: int) -> dict:
    x, W, b = torch.randn(B, d), torch.randn(d, F), torch.randn(F)
    s = seconds_per_call(lambda: torch.addmm(b, x, W))
    return {"seconds_per_batch": s, "gflops": 2 * B * d * F / s / 1e9, "tokens_per_s": B / s}


def selection_floor(B: int, d: int, F: int, k: int) -> dict:
    """What our step cannot go below on a CPU with bfloat16: the ranking matmul and the top-k."""
    from sae.train.kernels import topk_by_bits

    x, W, b = torch.randn(B, d).bfloat16(), torch.randn(d, F).bfloat16(), torch.randn(F).bfloat16()
    s = seconds_per_call(lambda: topk_by_bits(torch.addmm(b, x, W), k))
    return {"seconds_per_batch": s, "tokens_per_s": B / s}


def faster(a: dict, b: dict) -> dict:
    return a if a["tokens_per_s"] >= b["tokens_per_s"] else b


# ---------------------------------------------------------------------------------------------------
def run_ours(x_train, x_eval, B, F, k, anneal: bool, lr: float = 8e-4, b_dec_init: str = "zero") -> dict:
    from sae.train import SAESpec, TrainConfig, train
    from sae.train.postprocess import fold_and_normalise

    cfg = TrainConfig(total_tokens=x_train.shape[0], batch_size=B, log_every=10**9, lr=lr, b_dec_init=b_dec_init)
    t = time.perf_counter()
    res = train(x_train, SAESpec(n_features=F, k=k, k_anneal=anneal), cfg, progress=False)
    wall = time.perf_counter() - t
    sae = fold_and_normalise(res.saes["sae"])
    return {"seconds": wall, "tokens": res.steps * B, "ev": ev(sae, x_eval)}


def run_sparsify(x_train, x_eval, B, F, k) -> dict:
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    try:
        from schedulefree import ScheduleFreeWrapper
    except ImportError:
        ScheduleFreeWrapper = None
    d = x_train.shape[1]
    torch.manual_seed(0)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=F, k=k))
    lr = 5e-3 / (F / 2**14) ** 0.5
    if ScheduleFreeWrapper is not None:  # sparsify's default optimiser ("signum")
        opt = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=lr), momentum=0.95)
        opt.train()
        which = "signum (schedule-free)"
    else:
        opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (F / 2**14) ** 0.5)
        which = "adam"
    t = time.perf_counter()
    steps = x_train.shape[0] // B
    for i in range(steps):
        x = x_train[i * B : (i + 1) * B]
        if i == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, y=x, total_variance=(x - x.mean(0)).pow(2).sum())
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    wall = time.perf_counter() - t
    if ScheduleFreeWrapper is not None:
        opt.eval()
    sae.set_decoder_norm_to_unit_norm()

    def predict(c):
        return sae(c, y=c).sae_out

    return {"seconds": wall, "tokens": steps * B, "ev": ev(predict, x_eval), "note": which}


def run_saelens(x_train, x_eval, B, F, k) -> dict:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d = x_train.shape[1]
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=F, k=k, device="cpu", dtype="float32"))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    since_fired = torch.zeros(F)
    t = time.perf_counter()
    steps = x_train.shape[0] // B
    for i in range(steps):  # SAETrainer._train_step
        x = x_train[i * B : (i + 1) * B]
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=since_fired > 1000,
                                                       n_training_steps=i, is_logging_step=False))
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired += 1
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    wall = time.perf_counter() - t
    sae.eval()
    return {"seconds": wall, "tokens": steps * B, "ev": ev(sae, x_eval)}


# ---------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=("embedded", "synthetic"), default="embedded")
    p.add_argument("--tokens", type=int, default=40 * 4096, help="training tokens per library")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training tokens (the same order for every library)")
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--features", type=int, default=4608)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2, help="rounds over all libraries; the best tokens/s of each is kept")
    p.add_argument("--lr", type=float, default=0.0, help="also run ours with this learning rate (0: no such row)")
    p.add_argument("--b-dec-init", choices=("zero", "mean"), default="zero", help="b_dec init of the --lr row")
    p.add_argument("--only", default="", help="comma list of: ours,ours-fixed-k,sparsify,saelens")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_train.md")
    args = p.parse_args(argv)

    B, F, k = args.batch_size, args.features, args.k
    x_train, x_eval, label = get_data(args.data, args.tokens, args.eval_tokens, args.d)
    if args.epochs > 1:
        x_train = x_train.repeat(args.epochs, 1)
        label += f", {args.epochs} epochs"
    floor = matmul_floor(B, args.d, F)
    selection = selection_floor(B, args.d, F, k)
    runs = {
        "ours (Llama Scope recipe, K-annealing)": lambda: run_ours(x_train, x_eval, B, F, k, True),
        "ours (k = 50 throughout)": lambda: run_ours(x_train, x_eval, B, F, k, False),
        "EleutherAI sparsify 1.3": lambda: run_sparsify(x_train, x_eval, B, F, k),
        "SAELens 6 (TopK)": lambda: run_saelens(x_train, x_eval, B, F, k),
    }
    keys = dict(zip(("ours", "ours-fixed-k", "sparsify", "saelens"), runs))
    if args.lr:
        mean = ", b_dec = data mean" if args.b_dec_init == "mean" else ""
        keys["ours-lr"] = f"ours (recipe with lr {args.lr:g}{mean})"
        runs[keys["ours-lr"]] = lambda: run_ours(x_train, x_eval, B, F, k, True, args.lr, args.b_dec_init)
    wanted = [keys[w] for w in args.only.split(",") if w] or list(runs)
    best: dict[str, dict] = {}
    for rep in range(args.repeats):  # rounds over all libraries; each keeps its best round (a shared machine is noisy)
        if rep:
            floor = faster(floor, matmul_floor(B, args.d, F))
            selection = faster(selection, selection_floor(B, args.d, F, k))
        for name in wanted:
            if "skipped" in best.get(name, {}):
                continue
            try:
                r = runs[name]()
            except ImportError as e:
                print(f"skip {name}: {e}", file=sys.stderr)
                best[name] = {"library": name, "skipped": f"not installed ({e.name})"}
                continue
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            print(f"round {rep + 1}: {name}: {r['tokens_per_s']:,.0f} tokens/s, EV {r['ev']:.4f}", file=sys.stderr)
            if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = {"library": name, **r}
    rows = [best[name] for name in wanted]

    import platform

    lines = [
        f"# TopK SAE training: d = {args.d}, F = {F}, k = {k}, batch {B}, {x_train.shape[0]:,} tokens each",
        "",
        f"Data: {label}; EV = centred, pooled explained variance on {x_eval.shape[0]:,} held-out tokens.",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads.",
        f"Floor: the encoder's forward matmul alone (fp32) runs at {floor['gflops']:.0f} GFLOP/s = "
        f"{floor['tokens_per_s']:,.0f} tokens/s. In bfloat16 with the top-k, as our step ranks: "
        f"{selection['tokens_per_s']:,.0f} tokens/s (no step of ours can beat this).",
        "",
        "| library | tokens/s | vs floor | EV after the same tokens | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['library']} | - | - | - | {r['skipped']} |")
        else:
            lines.append(f"| {r['library']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / floor['tokens_per_s']:.2f} | "
                         f"{r['ev']:.4f} | {r.get('note', '')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"floor": floor, "selection_floor": selection, "rows": rows, "data": label}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
