"""Export an atlas SAE in Neuronpedia's upload format: batch JSON files of feature dashboards.

The format is the one SAEDashboard (github.com/jbloomAus/SAEDashboard) writes for Neuronpedia: its
`sae_dashboard/neuronpedia/neuronpedia_converter.py` turns dashboard data into the dataclasses of
`neuronpedia_dashboard.py`, and `neuronpedia_runner.py` writes one file per batch of features,
`batch-0.json`, `batch-1.json`, ... This module writes the same fields from our feature records (see
docs/atlas.md); nothing of SAEDashboard is imported or needed.

A batch is `{"model_id": str, "layer": int, "sae_set": str, "features": [FEATURE, ...]}`.

A FEATURE holds `feature_index`; neuron-alignment and correlation tables (`neuron_alignment_*`,
`correlated_neurons_*`, `correlated_features_*`: we have none, so empty lists); the logit lens
(`pos_str`/`pos_values`: top tokens, `neg_str`/`neg_values`: bottom tokens); `frac_nonzero` (firing
frequency); the activation histogram (`freq_hist_data_bar_values`: bin centres,
`freq_hist_data_bar_heights`: counts); the logit histogram (`logits_hist_data_bar_*`: empty unless the
record gives one as `logits["hist"]`); `n_prompts_total`, `n_tokens_in_prompt`, `dataset`,
`decoder_weights_dist` (empty) and `activations`.

An ACTIVATION is one context: `bin_min`, `bin_max`, `bin_contains`, `tokens` (token texts) and `values`
(the feature's activation per token, same length). Top activations carry `bin_min = -1`, `bin_max` = the
feature's largest activation and `bin_contains = -1`; a quantile-interval sample carries its interval's
bounds and, as `bin_contains`, the fraction of the feature's firings in it. Values are rounded to 3
decimals, as the converter does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geometry.atlas.records import Record, SiteSAE
from sae.io import write_text

BATCH_KEYS: dict[str, type | tuple[type, ...]] = {"model_id": str, "layer": int, "sae_set": str, "features": list}

_NUMBER = (int, float)
FEATURE_KEYS: dict[str, type | tuple[type, ...]] = {
    "feature_index": int,
    "neuron_alignment_indices": list,
    "neuron_alignment_values": list,
    "neuron_alignment_l1": list,
    "correlated_neurons_indices": list,
    "correlated_neurons_l1": list,
    "correlated_neurons_pearson": list,
    "correlated_features_indices": list,
    "correlated_features_l1": list,
    "correlated_features_pearson": list,
    "neg_str": list,
    "neg_values": list,
    "pos_str": list,
    "pos_values": list,
    "frac_nonzero": _NUMBER,
    "freq_hist_data_bar_values": list,
    "freq_hist_data_bar_heights": list,
    "logits_hist_data_bar_heights": list,
    "logits_hist_data_bar_values": list,
    "n_prompts_total": int,
    "n_tokens_in_prompt": int,
    "dataset": str,
    "decoder_weights_dist": list,
    "activations": list,
}

ACTIVATION_KEYS: dict[str, type | tuple[type, ...]] = {
    "bin_min": _NUMBER,
    "bin_max": _NUMBER,
    "bin_contains": _NUMBER,
    "tokens": list,
    "values": list,
}
# written by SAEDashboard only with direct feature attribution (DFA); allowed, never required
ACTIVATION_OPTIONAL_KEYS: dict[str, type | tuple[type, ...]] = {
    "dfa_values": list,
    "dfa_maxValue": _NUMBER,
    "dfa_targetIndex": int,
}

# list fields whose items must be strings / numbers, and pairs of lists that must have the same length
STRING_LISTS = ("neg_str", "pos_str")
NUMBER_LISTS = tuple(k for k, t in FEATURE_KEYS.items() if t is list and k not in (*STRING_LISTS, "activations"))
PAIRED_LISTS = (
    ("pos_str", "pos_values"),
    ("neg_str", "neg_values"),
    ("freq_hist_data_bar_values", "freq_hist_data_bar_heights"),
    ("logits_hist_data_bar_values", "logits_hist_data_bar_heights"),
)

TOP_BIN = (-1.0, -1.0)  # (bin_min, bin_contains) of a top activation; its bin_max is the feature's max
_BATCH_FILE = re.compile(r"batch-(\d+)\.json")


def _r(x: Any, digits: int = 3) -> float:
    """`x` as a float rounded to `digits` decimals; NaN and infinities (which JSON cannot hold) become 0."""
    x = float(x)
    return round(x, digits) if math.isfinite(x) else 0.0


def _rs(xs: Iterable[Any]) -> list[float]:
    return [_r(x) for x in xs]


def _centres(edges: list[float]) -> list[float]:
    """The centre of each bin: the geometric mean of its edges when the low edge is > 0, else the mean.

    Rounded to 3 decimals unless that would move the centre out of its (narrow) bin."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        lo, hi = float(lo), float(hi)
        c = math.sqrt(lo * hi) if lo > 0 and hi > 0 else (lo + hi) / 2
        rounded = _r(c)
        out.append(rounded if lo <= rounded <= hi else float(f"{c:.6g}"))
    return out


def _activation(context: dict, bin_min: float, bin_max: float, bin_contains: float) -> dict[str, Any]:
    return {"bin_min": bin_min, "bin_max": bin_max, "bin_contains": bin_contains,
            "tokens": [str(t) for t in context["tokens"]], "values": _rs(context["acts"])}


def feature_json(record: Record, meta: dict[str, Any]) -> dict[str, Any]:
    """One feature record (docs/atlas.md) as a Neuronpedia FEATURE; `meta` is its SAE's `SiteSAE.meta`."""
    top_max = _r(record.get("max", 0.0))
    activations = [_activation(c, TOP_BIN[0], top_max, TOP_BIN[1]) for c in record.get("top") or []]
    for s in record.get("samples") or []:
        lo, hi, share = float(s["lo"]), float(s["hi"]), float(s["share"])
        activations += [_activation(c, lo, hi, share) for c in s.get("contexts") or []]

    hist = record.get("hist") or {}
    logits = record.get("logits") or {}
    logit_hist = logits.get("hist") or {}
    top, bottom = logits.get("top") or [], logits.get("bottom") or []
    return {
        "feature_index": int(record["id"]),
        **{k: [] for k in ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                           "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
                           "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson")},
        "neg_str": [str(t) for t, _ in bottom],
        "neg_values": _rs(v for _, v in bottom),
        "pos_str": [str(t) for t, _ in top],
        "pos_values": _rs(v for _, v in top),
        "frac_nonzero": float(record.get("frequency", 0.0)),
        "freq_hist_data_bar_values": _centres(hist.get("edges") or []),
        "freq_hist_data_bar_heights": [int(c) for c in hist.get("counts") or []],
        "logits_hist_data_bar_heights": [int(c) for c in logit_hist.get("counts") or []],
        "logits_hist_data_bar_values": _centres(logit_hist.get("edges") or []),
        "n_prompts_total": int(meta.get("documents") or 0),
        "n_tokens_in_prompt": int(meta.get("context") or 0),
        "dataset": str(meta.get("dataset") or ""),
        "decoder_weights_dist": [],
        "activations": activations,
    }


def export_neuronpedia(sae: SiteSAE, folder: Path, *, model_id: str, sae_set: str,
                       batch_size: int = 128) -> list[Path]:
    """Write `sae` as Neuronpedia batch files `folder/batch-0.json`, `batch-1.json`, ... and return their paths.

    Each batch holds up to `batch_size` features in id order, every feature included (one that never fired
    has no activations). Files are written atomically; `batch-N.json` files left by an earlier, longer
    export in `folder` are removed so that the folder holds exactly this SAE."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    folder = Path(folder)
    layer = sae.meta.get("layer")
    head = {"model_id": str(model_id), "layer": int(layer) if layer is not None else 0, "sae_set": str(sae_set)}
    paths = []
    for n, start in enumerate(range(0, sae.n_features, batch_size)):
        stop = min(start + batch_size, sae.n_features)
        records = sae.records(start, stop)
        ids = [int(r["id"]) for r in records]
        if ids != list(range(start, stop)):
            raise ValueError(f"{sae.name}: records({start}, {stop}) returned features {ids[:3]}..., "
                             f"not {start}..{stop - 1}")
        batch = {**head, "features": [feature_json(r, sae.meta) for r in records]}
        path = folder / f"batch-{n}.json"
        write_text(path, json.dumps(batch, ensure_ascii=False, separators=(",", ":")) + "\n")
        paths.append(path)
    if folder.is_dir():
        for old in folder.iterdir():
            m = _BATCH_FILE.fullmatch(old.name)
            if m and int(m.group(1)) >= len(paths) and old.is_file():
                old.unlink()
    return paths


def _type_ok(value: Any, want: type | tuple[type, ...]) -> bool:
    return isinstance(value, want) and not isinstance(value, bool)


def _name(want: type | tuple[type, ...]) -> str:
    return "number" if want == _NUMBER else want.__name__  # type: ignore[union-attr]


def _check_keys(obj: Any, required: dict, optional: dict, where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: is {type(obj).__name__}, not an object"]
    problems = [f"{where}: missing key {k!r}" for k in required if k not in obj]
    problems += [f"{where}: unexpected key {k!r}" for k in obj if k not in required and k not in optional]
    for k, want in {**required, **optional}.items():
        if k in obj and not _type_ok(obj[k], want):
            problems.append(f"{where}.{k}: is {type(obj[k]).__name__}, not {_name(want)}")
    return problems


def validate_batch(batch: dict) -> list[str]:
    """The problems found in one Neuronpedia batch (an empty list when there are none): missing or unexpected
    keys, values of the wrong type, and lists that should be as long as each other but are not."""
    problems = _check_keys(batch, BATCH_KEYS, {}, "batch")
    if not isinstance(batch, dict) or not isinstance(batch.get("features"), list):
        return problems
    for i, f in enumerate(batch["features"]):
        where = f"features[{i}]"
        problems += _check_keys(f, FEATURE_KEYS, {}, where)
        if not isinstance(f, dict):
            continue
        for k in STRING_LISTS:
            if isinstance(f.get(k), list) and not all(isinstance(t, str) for t in f[k]):
                problems.append(f"{where}.{k}: holds items that are not strings")
        for k in NUMBER_LISTS:
            if isinstance(f.get(k), list) and not all(_type_ok(x, _NUMBER) for x in f[k]):
                problems.append(f"{where}.{k}: holds items that are not numbers")
        for a, b in PAIRED_LISTS:
            if isinstance(f.get(a), list) and isinstance(f.get(b), list) and len(f[a]) != len(f[b]):
                problems.append(f"{where}: {a} has {len(f[a])} items, {b} {len(f[b])}")
        for j, act in enumerate(f.get("activations") if isinstance(f.get("activations"), list) else []):
            at = f"{where}.activations[{j}]"
            problems += _check_keys(act, ACTIVATION_KEYS, ACTIVATION_OPTIONAL_KEYS, at)
            if not isinstance(act, dict):
                continue
            tokens, values = act.get("tokens"), act.get("values")
            if isinstance(tokens, list) and not all(isinstance(t, str) for t in tokens):
                problems.append(f"{at}.tokens: holds items that are not strings")
            if isinstance(values, list) and not all(_type_ok(x, _NUMBER) for x in values):
                problems.append(f"{at}.values: holds items that are not numbers")
            if isinstance(tokens, list) and isinstance(values, list) and len(tokens) != len(values):
                problems.append(f"{at}: tokens has {len(tokens)} items, values {len(values)}")
    return problems
