"""After training: fold normalisation, unit decoder norms, TopK -> JumpReLU; `python -m sae.postprocess`.

Llama Scope's three steps, on an SAE trained in the normalised space (`sae.train` records the scales
in `meta.provenance`):
1. fold the dataset-wise normalisation into the weights (`SparseAutoencoder.fold_scales`), so the SAE
   reads raw activations and returns raw units;
2. rescale every feature so its decoder row has norm 1 (`set_unit_decoder_norms`; outputs unchanged);
3. JumpReLU thresholds from N calibration tokens (default N = 32,768; special and massive positions
   already removed by the stream), by one of two calibrations:
   - `global` (the paper's): one threshold, the (N x k)-th largest pre-activation over the N tokens,
     so the mean L0 on those tokens is k;
   - `per-feature`: feature i gets the threshold at which it fires on exactly as many of the N tokens as
     TopK selects it (n_i): midway between its n_i-th and (n_i+1)-th largest pre-activation, at least 0
     (a feature TopK never selects gets its largest pre-activation). The mean L0 is again k, and every
     feature keeps its TopK firing rate, so a token where many features sit just above one global
     threshold no longer gets hundreds of them.
`k` stays in the saved SAE: `sae.activation = "topk"` gives TopK inference back.
L0 (mean and per-token 5th / 50th / 95th percentiles), MSE and explained variance are reported in both
inference modes.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae.cli import add_arguments, check_options, from_arguments, option
from sae.errors import SAEError
from sae.eval.metrics import MetricSums
from sae.eval.resolve import inference_variant
from sae.formats import load, save
from sae.io import check_writable, write_json
from sae.model import SparseAutoencoder
from sae.train.data_options import DataOptions, open_source
from sae.train.source import as_batch

DEFAULT_TOKENS = 32_768
CALIBRATIONS = ("global", "per-feature")
CHUNK = 4096  # calibration tokens per encoder pass


@dataclass
class PostprocessResult:
    sae: SparseAutoencoder  # JumpReLU, raw units, unit decoder rows, k kept
    threshold: float  # the global (paper's) threshold, whichever calibration the SAE carries
    n_tokens: int
    report: Any  # pandas DataFrame: one row per inference mode (topk, jumprelu (global), jumprelu (per-feature))
    calibration: str = "global"

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "calibration": self.calibration, "n_tokens": self.n_tokens,
                "report": self.report.to_dict("records")}


def fold_and_normalise(sae: SparseAutoencoder) -> SparseAutoencoder:
    """Steps 1 and 2 on a copy: raw units, unit-norm decoder rows. An SAE already in raw units is
    only rescaled."""
    out = copy.deepcopy(sae)
    prov = dict(out.meta.provenance or {})
    if prov.get("space") == "normalised":
        out.fold_scales(float(prov["scale_in"]), float(prov["scale_out"]))
        prov["space"] = "raw"
    out.set_unit_decoder_norms()
    prov["unit_decoder_norms"] = True
    out.meta.provenance = prov
    return out


def _pairs(activations: Any, hook_in: str, hook_out: str, n_tokens: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) raw chunks, n_tokens in all, from a tensor, a dict of tensors or an iterable of either."""
    if isinstance(activations, (torch.Tensor, dict)):
        activations = [activations]
    seen = 0
    for item in activations:
        batch = as_batch(item)
        if hook_in not in batch or hook_out not in batch:
            have = ", ".join(sorted(batch))
            raise SAEError(f"the activations lack site {hook_in if hook_in not in batch else hook_out!r} (they have {have})")
        x, y = batch[hook_in], batch[hook_out]
        take = min(n_tokens - seen, x.shape[0])
        yield x[:take].float(), y[:take].float()
        seen += take
        if seen >= n_tokens:
            return


@torch.no_grad()
def jumprelu_threshold(sae: SparseAutoencoder, xs: list[torch.Tensor], k: int, chunk: int = 1024) -> float:
    """The (N k)-th largest pre-activation over the N tokens in xs (streamed: never all N x F values)."""
    n = sum(x.shape[0] for x in xs)
    m = n * k
    best = torch.empty(0, device=sae.W_enc.device)
    for x in xs:
        for i in range(0, x.shape[0], chunk):
            vals = sae.pre_acts(x[i : i + chunk].to(sae.W_enc.device)).flatten()
            if best.numel() >= m:
                vals = vals[vals > best.min()]
            best = torch.cat([best, vals])
            if best.numel() > m:
                best = best.topk(m, sorted=False).values
    if best.numel() < m:
        raise SAEError(f"only {best.numel()} pre-activations for the {m}-th largest: use more tokens")
    return float(best.min())


@torch.no_grad()
def feature_thresholds(sae: SparseAutoencoder, xs: list[torch.Tensor], block: int = 512) -> torch.Tensor:
    """[F] per-feature JumpReLU thresholds: feature i fires (pre > theta_i) on as many of the tokens in xs
    as TopK at `sae.k` selects it. `sae` must have unit decoder rows (TopK then ranks by pre-activation)."""
    topk = inference_variant(sae, "topk")
    counts = torch.zeros(sae.n_features, dtype=torch.long, device=sae.W_enc.device)
    for x in xs:
        code = topk.encode_sparse(x)
        counts += torch.bincount(code.indices[code.values > 0], minlength=sae.n_features)
    x_all = torch.cat(xs)
    theta = torch.empty(sae.n_features, device=sae.W_enc.device)
    for s in range(0, sae.n_features, block):
        n = counts[s : s + block]
        pre = x_all @ sae.W_enc[:, s : s + block] + sae.b_enc[s : s + block]  # [N, block]
        m = min(int(n.max()) + 1, pre.shape[0])
        top = pre.topk(m, dim=0).values  # [m, block], descending
        nth = top.gather(0, (n - 1).clamp_min(0)[None]).squeeze(0)  # n_i-th largest
        next_ = top.gather(0, n.clamp_max(m - 1)[None]).squeeze(0)  # (n_i+1)-th largest
        mid = torch.where(n >= pre.shape[0], torch.zeros_like(nth), (nth + next_) / 2)  # fires everywhere: 0
        theta[s : s + block] = torch.where(n > 0, mid, top[0]).clamp_min(0.0)
    return theta


@torch.no_grad()
def inference_sums(sae: SparseAutoencoder, xs: list[torch.Tensor], ys: list[torch.Tensor]
                   ) -> tuple[MetricSums, torch.Tensor]:
    """The metric sums of the SAE's own inference over the token batches (firing counts in `.fires`)
    and each token's L0 [n] (CPU)."""
    sums = MetricSums(sae.n_features, sae.d_out)
    per_token = []
    for x, y in zip(xs, ys):
        code = sae.encode_sparse(x)
        sums.add(x, y, sae.decode(code), code.values, code.indices)
        per_token.append((code.values > 0).sum(-1).cpu())
    return sums, torch.cat(per_token)


def inference_stats(sae: SparseAutoencoder, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> dict[str, float]:
    """Mean L0 and its per-token 5th/50th/95th percentiles, MSE (raw units, per element), explained
    variance (centred, pooled; and uncentred), the fractions of features that never fire and that fire
    on more than 10% of the tokens (the definitions of `sae.eval.evaluate`)."""
    sums, per_token = inference_sums(sae, xs, ys)
    m = sums.summary()
    l0 = per_token.double()
    p05, p50, p95 = torch.quantile(l0, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
    return {"l0": m["l0"], "l0_p05": p05, "l0_median": p50, "l0_p95": p95, "mse": m["mse"],
            "ev": m["explained_variance_centred"], "ev_uncentred": m["explained_variance_uncentred"],
            "tokens": m["tokens"], "never_fired": m["never_fired_fraction"], "dense": m["dense_fraction"]}


def postprocess(sae: SparseAutoencoder, activations: Any, *, n_tokens: int = DEFAULT_TOKENS, k: int | None = None,
                calibration: str = "global") -> PostprocessResult:
    """Fold, unit-normalise and convert a trained TopK SAE to JumpReLU; report TopK and both calibrations.

    activations: raw activations (a tensor, a dict hook -> tensor, or an iterable of either, e.g. the
    activation stream) holding the SAE's sites (`meta.hook_in`/`hook_out`; a bare tensor is hook "x").
    calibration: "global" (the paper's one threshold) or "per-feature" (each feature's TopK firing
    rate); the returned SAE carries that one, the report shows both.
    """
    import pandas as pd

    if calibration not in CALIBRATIONS:
        raise SAEError(f"calibration must be one of {', '.join(CALIBRATIONS)}, not {calibration!r}")
    k = k or sae.k
    if not k:
        raise SAEError("the threshold needs k (the SAE has none): pass k=")
    hook_in = sae.meta.hook_in or "x"
    hook_out = sae.meta.hook_out or hook_in
    if isinstance(activations, torch.Tensor):
        hook_in = hook_out = "x"
    out = fold_and_normalise(sae)
    xs, ys = [], []
    for x, y in _pairs(activations, hook_in, hook_out, n_tokens):
        if x.shape[-1] != out.d_in or y.shape[-1] != out.d_out:
            raise SAEError(f"activations have widths {x.shape[-1]} -> {y.shape[-1]}, the SAE {out.d_in} -> {out.d_out}")
        # in chunks: a [chunk, F] pre-activation stays small (memory and cache) however many tokens
        xs.extend(x.to(out.W_enc.device).split(CHUNK))
        ys.extend(y.to(out.W_enc.device).split(CHUNK))
    got = sum(x.shape[0] for x in xs)
    if got == 0:
        raise SAEError("no activations to compute the JumpReLU threshold on")
    out.k = k
    out.activation = "topk"
    theta = jumprelu_threshold(out, xs, k)
    thresholds = {"global": torch.full_like(out.threshold, theta), "per-feature": feature_thresholds(out, xs)}
    rows = [{"mode": "topk", **inference_stats(out, xs, ys)}]
    out.activation = "jumprelu"
    for name, values in thresholds.items():
        out.threshold.copy_(values)
        rows.append({"mode": f"jumprelu ({name})", **inference_stats(out, xs, ys)})
    out.threshold.copy_(thresholds[calibration])
    out.meta.provenance = {**out.meta.provenance, "jumprelu_threshold": theta, "threshold_tokens": got,
                           "threshold_calibration": calibration}
    report = pd.DataFrame(rows)
    report.insert(0, "sae", out.meta.name)
    return PostprocessResult(out, theta, got, report, calibration)


def postprocess_to(sae: SparseAutoencoder, activations: Any, folder: str | Path, *, n_tokens: int = DEFAULT_TOKENS,
                   calibration: str = "global") -> PostprocessResult:
    """postprocess() and write the JumpReLU SAE (native format) and postprocess.json to `folder`."""
    result = postprocess(sae, activations, n_tokens=n_tokens, calibration=calibration)
    save(result.sae, folder)
    write_json(Path(folder) / "postprocess.json", result.to_dict())
    return result


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def _trained_folder(path: Path) -> Path:
    if (path / "trained" / "cfg.json").is_file():
        return path / "trained"
    if (path / "cfg.json").is_file():
        return path
    raise SAEError(f"{path} holds no trained SAE (expected cfg.json or trained/cfg.json)")


def postprocess_folder(trained: str | Path, data: DataOptions, out: str | Path | None = None, *,
                       n_tokens: int = DEFAULT_TOKENS, calibration: str = "global") -> tuple[PostprocessResult, Path]:
    """postprocess_to() on a trained SAE folder (RUN/NAME/trained, or RUN/NAME holding trained/), with
    N tokens of the activations `data` describes; writes to `out` (default RUN/NAME). Returns the result
    and the folder written."""
    folder = _trained_folder(Path(trained))
    sae = load(folder)
    out = Path(out) if out is not None else folder.parent
    hooks = list(dict.fromkeys([sae.meta.hook_in or "x", sae.meta.hook_out or sae.meta.hook_in or "x"]))
    source = open_source(data, hooks, batch_size=min(n_tokens, 4096), max_tokens=n_tokens, seed=data.seed + 1)
    return postprocess_to(sae, source, out, n_tokens=n_tokens, calibration=calibration), out


@dataclass
class PostprocessOptions:
    """The flags of `python -m sae.postprocess` besides the SAE folder, --out and the activations."""

    tokens: int = option(DEFAULT_TOKENS, "N, tokens for the threshold", min=1)
    calibration: str = option("global", "global: one threshold, mean L0 = k (the paper); per-feature: each feature "
                              "keeps its TopK firing rate on the N tokens", choices=CALIBRATIONS)

    def __post_init__(self) -> None:
        check_options(self)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sae.postprocess",
        description="Fold normalisation, set unit decoder norms and convert a trained TopK SAE to JumpReLU "
        "(threshold = the (N*k)-th largest pre-activation over N tokens). Reports L0 and MSE in both modes.",
    )
    p.add_argument("trained", type=Path, help="a trained SAE folder (RUN/NAME/trained, or RUN/NAME holding trained/)")
    p.add_argument("--out", type=Path, help="where to write the JumpReLU SAE (default: the SAE's run folder, RUN/NAME)")
    add_arguments(p, PostprocessOptions)
    add_arguments(p.add_argument_group("activations"), DataOptions)
    args = p.parse_args(argv)
    opts = from_arguments(PostprocessOptions, args)
    if args.out is not None:
        check_writable(args.out)
    result, out = postprocess_folder(args.trained, from_arguments(DataOptions, args), args.out, n_tokens=opts.tokens,
                                     calibration=opts.calibration)
    print(result.report.to_string(index=False))
    print(f"{opts.calibration} thresholds over {result.n_tokens} tokens (global: {result.threshold:.6g}); "
          f"JumpReLU SAE written to {out}")
    return 0
