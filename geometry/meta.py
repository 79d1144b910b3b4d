"""Meta-features (Leask et al. 2025, arXiv 2502.04878): a small TopK SAE trained on a wide SAE's unit
decoder rows. Its features are directions many decoder rows share; every row is reconstructed as a
sparse non-negative combination of k of them ("Einstein = scientist + Germany + famous").

    python -m geometry.meta demo:L15R-32x --labels out/demo/threats/labels \\
        --freq out/demo/eval/frequencies_L15R-32x.csv --out out/demo/meta

    from geometry.meta import meta_features
    m = meta_features("demo:L15R-32x", labels=labels, dead=freq == 0)
    m.explained_variance, m.l0, m.table, m.members; m.write("out/demo/meta")

The meta SAE is trained by `sae.train` (TopK, constant k, several epochs over the rows) and returned
folded to the rows' own units with unit decoder rows, so an activation is the coefficient of a unit
meta direction. docs/meta.md gives the outputs' columns and how the defaults were chosen.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import sae
from geometry.directions import decoder_rows
from geometry.inputs import load_array
from geometry.labels import label_lookup, read_labels
from geometry.options import GeometryError, check_settings
from geometry.similarity import top_k_cosine
from sae.cli import add_arguments, from_arguments, option
from sae.errors import run_cli
from sae.eval.metrics import centred_sumsq, explained_variance
from sae.io import check_writable, write_json, write_text
from sae.train import SAESpec, TrainConfig, train
from sae.train.postprocess import fold_and_normalise

__all__ = ["MetaFeatures", "MetaOptions", "build_parser", "centred_ev", "live_mask", "main", "meta_features"]

FILES = ("meta_features.csv", "members.csv", "summary.json")
N_NEAREST = 5  # original features listed per meta-feature (nearest decoder rows by cosine)


@dataclass
class MetaOptions:
    """The settings of `meta_features` that are also the flags of `python -m geometry.meta`."""

    n_meta: int | None = option(None, "number of meta-features (default: a quarter of the rows used)", min=1)
    k: int = option(4, "meta-features per decoder row (TopK k)", min=1)
    epochs: float = option(40.0, "passes over the decoder rows", above=0, max=10_000)
    batch_size: int = option(256, "decoder rows per training step", min=1)
    lr: float = option(2e-3, "Adam learning rate", above=0, max=1)
    seed: int = option(0, "seed of the initialisation and the row order")
    n_members: int = option(10, "members listed per meta-feature in meta_features.csv", min=1)
    device: str | None = option(None, "training device (default: cuda if available, else cpu)")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class MetaFeatures:
    """A trained meta SAE and what it says about the rows it was trained on."""

    sae: sae.SparseAutoencoder  # reads unit decoder rows [n, d]; W_dec [n_meta, d] has unit rows
    explained_variance: float  # 1 - SSE / sum ||row - mean row||^2 over the rows used
    l0: float  # mean number of meta-features with a positive activation per row
    table: pd.DataFrame  # one row per meta-feature
    members: pd.DataFrame  # meta, feature, activation, label: every positive (row, meta-feature) pair
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: str | Path) -> Path:
        """meta_features.csv, members.csv and summary.json into `folder`, each written atomically."""
        folder = Path(folder)
        write_text(folder / "meta_features.csv", self.table.to_csv(index=False))
        write_text(folder / "members.csv", self.members.to_csv(index=False))
        write_json(folder / "summary.json", self.summary)
        return folder


def live_mask(n: int, dead: np.ndarray | None) -> np.ndarray:
    """Boolean [n]: True for rows not in `dead` (a boolean mask [n] or feature ids)."""
    keep = np.ones(n, dtype=bool)
    if dead is None:
        return keep
    dead = np.asarray(dead)
    if dead.dtype == bool:
        if dead.shape != (n,):
            raise sae.ShapeError(f"a dead mask of {dead.size} entries for {n} features")
        return ~dead
    ids = dead.astype(np.int64).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise sae.ShapeError(f"dead feature ids must lie in [0, {n}), got {ids.min()}..{ids.max()}")
    keep[ids] = False
    return keep


def centred_ev(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Centred EV of a reconstruction of the rows x [n, d] (sae.eval.metrics' definition, in float64)."""
    x, x_hat = x.double(), x_hat.double()
    total = centred_sumsq(float(x.pow(2).sum()), x.sum(0), len(x))
    return explained_variance(float((x - x_hat).pow(2).sum()), total)


def _default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _train_meta(rows: torch.Tensor, o: MetaOptions, n_meta: int, progress: bool) -> tuple[sae.SparseAutoencoder, dict]:
    n = rows.shape[0]
    batch = min(o.batch_size, n)
    steps = max(1, math.ceil(o.epochs * n / batch))
    spec = SAESpec(name="meta", n_features=n_meta, activation="topk", k=o.k, k_anneal=False)
    # b_dec at the mean row: decoder rows share a sizeable mean direction that no sparse code should spend k on
    config = TrainConfig(total_tokens=steps * batch, batch_size=batch, lr=o.lr, seed=o.seed, b_dec_init="mean",
                         log_every=max(1, steps // 20), device=_default_device(o.device))
    result = train(rows, spec, config, out_dir=None, progress=progress)
    meta = fold_and_normalise(result.saes["meta"]).to("cpu").eval()
    return meta, {"steps": result.steps, "train_seconds": result.seconds}


@torch.no_grad()
def _codes(meta: sae.SparseAutoencoder, rows: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
    """values [n, k], indices [n, k] and the reconstruction [n, d] of every row."""
    vals, idx, rec = [], [], []
    for start in range(0, rows.shape[0], chunk):
        code = meta.encode_sparse(rows[start:start + chunk])
        vals.append(code.values)
        idx.append(code.indices)
        rec.append(meta.decode_sparse(code.values, code.indices))
    return torch.cat(vals), torch.cat(idx), torch.cat(rec)


def _members(ids: np.ndarray, vals: torch.Tensor, idx: torch.Tensor, labels: pd.DataFrame | None) -> pd.DataFrame:
    v, i = vals.numpy(), idx.numpy()
    row, slot = np.nonzero(v > 0)
    df = pd.DataFrame({"meta": i[row, slot].astype(np.int64), "feature": ids[row], "activation": v[row, slot]})
    df = df.sort_values(["meta", "activation"], ascending=[True, False], kind="stable").reset_index(drop=True)
    df["label"] = label_lookup(labels, df["feature"].to_numpy())
    return df


def _table(meta: sae.SparseAutoencoder, rows: torch.Tensor, ids: np.ndarray, members: pd.DataFrame,
           labels: pd.DataFrame | None, n_members: int) -> pd.DataFrame:
    n_meta = meta.n_features
    dirs = meta.feature_directions().detach()  # [n_meta, d]
    k = min(N_NEAREST, rows.shape[0])
    nb = top_k_cosine(dirs, rows, k, normalised=True, device="cpu", precision="fp32").a_to_b
    near_ids, near_cos = ids[nb.indices.numpy()], nb.values.numpy()
    counts = members.groupby("meta").size().reindex(range(n_meta), fill_value=0).to_numpy()
    mean_act = members.groupby("meta")["activation"].mean().reindex(range(n_meta)).to_numpy()
    top = members.groupby("meta").head(n_members).groupby("meta")
    top_ids = top["feature"].agg(lambda s: " ".join(map(str, s))).reindex(range(n_meta), fill_value="")
    top_labels = top["label"].agg(lambda s: " | ".join(x for x in s if x)).reindex(range(n_meta), fill_value="")
    near_labels = [" | ".join(x for x in label_lookup(labels, r) if x) for r in near_ids]
    return pd.DataFrame({
        "meta": np.arange(n_meta),
        "n_members": counts,
        "share": counts / rows.shape[0],
        "mean_activation": mean_act,
        "top_members": top_ids.to_numpy(),
        "top_labels": top_labels.to_numpy(),
        "nearest": [" ".join(map(str, r)) for r in near_ids],
        "nearest_cosine": [" ".join(f"{c:.3f}" for c in r) for r in near_cos],
        "nearest_labels": near_labels,
    }).sort_values(["n_members", "meta"], ascending=[False, True], kind="stable").reset_index(drop=True)


def meta_features(sae_or_rows: Any, *, n_meta: int | None = None, k: int = 4, epochs: float = 40.0,
                  batch_size: int = 256, lr: float = 2e-3, seed: int = 0, labels: pd.DataFrame | None = None,
                  dead: np.ndarray | None = None, n_members: int = 10, device: str | None = None,
                  progress: bool = False) -> MetaFeatures:
    """Train a TopK meta SAE on the unit decoder rows of `sae_or_rows` (a SparseAutoencoder, a spec for
    `sae.load` or an [F, d] matrix), leaving out `dead` rows (mask [F] or ids) and zero / non-finite ones.

    n_meta: meta-features (default: a quarter of the rows used); k: meta-features per row; labels: a
    table (feature, label) for the original features; n_members: members listed per meta-feature.
    """
    t0 = time.perf_counter()
    o = MetaOptions(n_meta=n_meta, k=k, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                    n_members=n_members, device=device)
    all_rows = decoder_rows(sae_or_rows)  # [F, d], unit
    F = all_rows.shape[0]
    keep = live_mask(F, dead)
    usable = torch.isfinite(all_rows).all(1) & (all_rows.abs().sum(1) > 0)
    n_unusable = int((~usable.numpy() & keep).sum())
    keep &= usable.numpy()
    ids = np.flatnonzero(keep)
    rows = all_rows[torch.from_numpy(ids)]  # [n, d]
    n = len(ids)
    if n < 2:
        raise sae.ShapeError(f"{n} usable decoder rows of {F}: a meta SAE needs at least 2")
    n_meta = o.n_meta or max(o.k, n // 4)
    if o.k > n_meta:
        raise GeometryError(f"--k {o.k}: must be at most --n-meta ({n_meta})")

    meta, info = _train_meta(rows, o, n_meta, progress)
    vals, idx, rec = _codes(meta, rows)
    ev = centred_ev(rows, rec)
    if not math.isfinite(ev):
        raise GeometryError("the meta SAE's reconstruction is not finite (try a lower --lr)")
    l0 = float((vals > 0).sum(1).float().mean())
    members = _members(ids, vals, idx, labels)
    table = _table(meta, rows, ids, members, labels, o.n_members)
    source = str(sae_or_rows) if isinstance(sae_or_rows, (str, Path)) else None
    summary = {
        "sae": source, "n_features": F, "n_rows": n, "n_dead": int(F - live_mask(F, dead).sum()),
        "n_unusable": n_unusable, "d": rows.shape[1], "n_meta": n_meta, "k": o.k, "epochs": o.epochs,
        "batch_size": min(o.batch_size, n), "lr": o.lr, "seed": o.seed, "explained_variance": ev, "l0": l0,
        "n_meta_used": int((table["n_members"] > 0).sum()), "labelled": labels is not None, **info,
        "seconds": time.perf_counter() - t0, "files": list(FILES),
    }
    return MetaFeatures(meta, ev, l0, table, members, summary)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m geometry.meta",
        description="Meta-features (Leask et al. 2025): train a small TopK SAE on an SAE's unit decoder rows; "
        "writes meta_features.csv (one row per meta-feature), members.csv (meta, feature, activation, label) "
        "and summary.json (explained variance, L0, settings).",
    )
    p.add_argument("sae", help="SAE name (demo:L15R-32x, L15R-32x) or folder")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--labels", type=Path, metavar="DIR", help="folder of label tables <name>.csv (feature, label), "
                   "e.g. out/demo/threats/labels")
    p.add_argument("--freq", type=Path, metavar="FILE", help="firing frequencies (.csv with feature, frequency; .npy; "
                   ".safetensors): features that never fired are left out")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    add_arguments(p, MetaOptions)
    return p


def _dead_from(path: Path | None, n_features: int) -> np.ndarray | None:
    if path is None:
        return None
    freq = load_array(path, "frequency").double().numpy().ravel()
    if len(freq) != n_features:
        raise sae.ShapeError(f"{path}: {len(freq)} firing frequencies for {n_features} features")
    return ~(freq > 0)  # NaN counts as dead too


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    o = from_arguments(MetaOptions, args)
    check_writable(args.out)
    labels = read_labels(args.labels, [args.sae]).get(args.sae)
    if args.labels is not None and labels is None and not args.quiet:
        print(f"note: no label table for {args.sae} in {args.labels}")
    spec = sae.load(args.sae)
    dead = _dead_from(args.freq, spec.n_features)
    m = meta_features(spec, n_meta=o.n_meta, k=o.k, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
                      seed=o.seed, labels=labels, dead=dead, n_members=o.n_members, device=o.device,
                      progress=not args.quiet)
    m.summary["sae"] = args.sae
    m.write(args.out)
    if not args.quiet:
        s = m.summary
        print(f"{s['n_rows']:,} rows ({s['n_dead']:,} dead left out) -> {s['n_meta']:,} meta-features, "
              f"EV {m.explained_variance:.3f}, L0 {m.l0:.2f}, {s['seconds']:.0f} s; written to {args.out}")
        print(m.table[["meta", "n_members", "top_labels"]].head(10).to_string(index=False, max_colwidth=100))
    return 0


if __name__ == "__main__":
    run_cli(main)
