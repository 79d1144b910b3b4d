"""Evaluating SAEs on a model and a corpus into tidy tables (`sae.eval.evaluate.evaluate`; the command is
`python -m sae.evaluate`): which SAEs where (`resolve`), the metrics (`metrics`), the tables (`tables`),
the command line (`cli`). The function `evaluate` is imported from `sae.eval.evaluate`, so that the name
`sae.eval.evaluate` stays the module."""

from sae.eval.cli import build_parser, main
from sae.eval.evaluate import DEFAULT_LM_TOKENS, DEFAULT_TOKENS
from sae.eval.metrics import (
    DEAD_WINDOW,
    DENSE_THRESHOLD,
    MetricSums,
    NextTokenSums,
    centred_sumsq,
    explained_variance,
    firing_fractions,
    lm_metrics,
    next_token_sums,
    position_edges,
    score_mask,
)
from sae.eval.resolve import INFERENCE_MODES, Target, inference_variant, resolve_saes, sae_sites
from sae.eval.tables import EVAL_COLUMNS, FREQUENCY_COLUMNS, POSITION_COLUMNS, EvalResult

__all__ = [
    "DEAD_WINDOW",
    "DEFAULT_LM_TOKENS",
    "DEFAULT_TOKENS",
    "DENSE_THRESHOLD",
    "EVAL_COLUMNS",
    "FREQUENCY_COLUMNS",
    "INFERENCE_MODES",
    "POSITION_COLUMNS",
    "EvalResult",
    "MetricSums",
    "NextTokenSums",
    "Target",
    "build_parser",
    "centred_sumsq",
    "explained_variance",
    "firing_fractions",
    "inference_variant",
    "lm_metrics",
    "main",
    "next_token_sums",
    "position_edges",
    "resolve_saes",
    "sae_sites",
    "score_mask",
]
