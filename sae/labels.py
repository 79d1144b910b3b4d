"""Feature labels from top-activating contexts: an offline default, and an optional LLM explainer.

    from sae.contexts import TopContexts
    from sae.labels import label_features, explain_features
    ctx = TopContexts.load("out/contexts/L15R-8x")
    labels = label_features(ctx)            # feature, label, top_tokens, top_titles, score, n_contexts
    expl = explain_features(ctx, [12, 345]) # feature, description, score (1-5); needs SAE_EXPLAINER_URL

Offline labeller: over a feature's top contexts, the activation mass on every token text (stripped,
lower-cased) is compared with that text's frequency in the streamed corpus; tokens are ranked by their
contribution to the KL divergence, share * log(share / corpus frequency), so a token must both carry the
feature's activation and be rarer in the corpus than in the feature's contexts. The titles of the documents
where it fires most come beside them. `score` is the fraction of the top contexts whose own (maximum) token
is one of the label's tokens: 1 for a feature that always peaks on the same words, near 0 for a diffuse one.

LLM explainer (the Llama Scope paper's App. D protocol): the 20 top contexts, each written as `<START>`,
one `token<TAB>activation` line per token (activations scaled to integers 0-10 by the feature's maximum)
and `<END>`, are sent to an OpenAI-compatible chat-completions endpoint, which answers a description
and an interpretability score from 1 to 5. The endpoint comes from the environment: `SAE_EXPLAINER_URL`
(the API base, e.g. http://127.0.0.1:8000/v1), `SAE_EXPLAINER_MODEL`, `SAE_EXPLAINER_KEY` (optional
bearer token). Nothing here is ever called unless you call `explain_features`.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .contexts import TopContexts
from .errors import SAEError

ENV_URL, ENV_MODEL, ENV_KEY = "SAE_EXPLAINER_URL", "SAE_EXPLAINER_MODEL", "SAE_EXPLAINER_KEY"
LABEL_COLUMNS = ["feature", "label", "top_tokens", "top_titles", "score", "n_contexts"]


class ExplainerError(SAEError, RuntimeError):
    """The explainer endpoint is not configured, cannot be reached, or answers an error."""


# ---------------------------------------------------------------------------------------------------
# offline labels
# ---------------------------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return text.strip().lower()


def label_features(
    contexts: TopContexts,
    *,
    features: Iterable[int] | None = None,
    n_tokens: int = 5,
    n_titles: int = 3,
    n_label_tokens: int = 3,
) -> pd.DataFrame:
    """One row per feature: label ("tok, tok, tok (Title; Title)"), top_tokens and top_titles (joined
    with ", " and "; "), score (share of top contexts peaking on a label token; NaN without contexts),
    n_contexts. Features that never fired get an empty label."""
    F = contexts.n_features
    feats = np.arange(F) if features is None else np.asarray(list(features), np.int64)
    top = contexts.top
    # token texts -> keys (stripped, lower-cased); every id seen in a window has a text
    ids = np.array(sorted(contexts.vocab), np.int64)
    key_text, key_of = np.unique([_norm(contexts.vocab[int(i)]) for i in ids], return_inverse=True)
    id_to_key = np.full(max(int(ids.max()) + 1 if len(ids) else 1, len(contexts.token_counts)), -1, np.int64)
    id_to_key[ids] = key_of
    background = np.bincount(key_of, weights=contexts.token_counts[ids] if len(ids) else None,
                             minlength=len(key_text))
    p_bg = (background + 1.0) / (background.sum() + len(key_text))  # add-one smoothing

    tok, act = top.tokens[feats], top.acts[feats]  # [n, slots, W]
    on = (tok >= 0) & (act > 0)
    f_loc, _, _ = np.nonzero(on)
    frame = pd.DataFrame({"f": f_loc, "key": id_to_key[tok[on]], "mass": act[on].astype(np.float64)})
    mass = frame.groupby(["f", "key"], sort=False)["mass"].sum().reset_index()
    mass["share"] = mass["mass"] / mass.groupby("f")["mass"].transform("sum")
    mass["kl"] = mass["share"] * np.log(mass["share"] / p_bg[mass["key"]])
    mass = mass[mass["kl"] > 0].sort_values(["f", "kl"], ascending=[True, False]).groupby("f").head(n_tokens)
    words = mass.groupby("f")["key"].apply(list)

    before = contexts.window[0]
    peak_key = id_to_key[np.where(top.tokens[feats, :, before] >= 0, top.tokens[feats, :, before], 0)]  # [n, slots]
    filled = top.doc[feats] >= 0
    rows = []
    for j, f in enumerate(feats):
        keys = words.get(j, [])
        toks = [key_text[k] for k in keys]
        titles = list(dict.fromkeys(contexts.titles.get(int(d), "") for d in top.doc[f][filled[j]]))
        titles = [t for t in titles if t][:n_titles]
        n_ctx = int(filled[j].sum())
        score = float(np.isin(peak_key[j][filled[j]], keys[:n_label_tokens]).mean()) if n_ctx else np.nan
        label = ", ".join(t or repr(t) for t in toks[:n_label_tokens])
        if titles:
            label += f" ({'; '.join(titles[:2])})"
        rows.append((int(f), label, ", ".join(toks), "; ".join(titles), score, n_ctx))
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)


# ---------------------------------------------------------------------------------------------------
# the LLM explainer
# ---------------------------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "You explain features of a sparse autoencoder trained on a language model's activations. You see text "
    "contexts where one feature is active. Each context starts with <START> and ends with <END>; every line "
    "between them is one token, a tab, and the feature's activation on that token as an integer from 0 (off) "
    "to 10 (its maximum). Say in one short sentence what the feature responds to, then rate how "
    "interpretable it is from 1 (no discernible pattern) to 5 (one clear, specific concept in every context). "
    'Answer with JSON only: {"description": "...", "score": N}.'
)


def format_contexts(contexts: TopContexts, feature: int, n_contexts: int = 20) -> str:
    """The user message for one feature: its top contexts in the `<START>` / token<TAB>activation / `<END>` format."""
    top = contexts.top
    slots = np.flatnonzero(top.doc[feature] >= 0)[:n_contexts]
    peak = float(top.acts[feature, slots].max()) if len(slots) else 0.0
    blocks = []
    for s in slots:
        keep = top.tokens[feature, s] >= 0
        ids, acts = top.tokens[feature, s][keep], top.acts[feature, s][keep]
        scaled = np.rint(10 * acts / peak).astype(int) if peak > 0 else np.zeros(len(acts), int)
        lines = [f"{t.replace(chr(10), ' ')}\t{a}" for t, a in zip(contexts.token_text(ids), scaled)]
        blocks.append("<START>\n" + "\n".join(lines) + "\n<END>")
    return f"Feature {feature}: {len(slots)} top-activating contexts.\n\n" + "\n\n".join(blocks)


def parse_reply(text: str) -> tuple[str, float]:
    """(description, score) from the model's answer: JSON if present, else a 'score: N' line; NaN if none."""
    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            obj = json.loads(match.group(0))
            score = float(obj.get("score"))
            return str(obj.get("description", "")).strip(), score if 1 <= score <= 5 else np.nan
        except (ValueError, TypeError, AttributeError):
            pass
    score = re.search(r"score\W{0,3}([1-5])\b", text, re.I)
    return text.strip()[:500], float(score.group(1)) if score else np.nan


def _post(url: str, body: dict, key: str | None, timeout: float) -> dict:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        detail = e.read()[:200].decode(errors="replace")
        raise ExplainerError(f"the explainer at {url} answered HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise ExplainerError(f"cannot reach the explainer at {url} ({getattr(e, 'reason', e)}); check {ENV_URL}") from None
    except ValueError as e:
        raise ExplainerError(f"the explainer at {url} did not answer JSON ({e})") from None


def explain_features(
    contexts: TopContexts,
    features: Iterable[int],
    *,
    url: str | None = None,
    model: str | None = None,
    key: str | None = None,
    n_contexts: int = 20,
    timeout: float = 120.0,
    progress: bool = True,
) -> pd.DataFrame:
    """DataFrame (feature, description, score 1-5 or NaN when the answer has none) from an
    OpenAI-compatible endpoint: url/model/key default to $SAE_EXPLAINER_URL, $SAE_EXPLAINER_MODEL,
    $SAE_EXPLAINER_KEY. Features without contexts are not sent (empty description, NaN)."""
    from tqdm.auto import tqdm

    url = url or os.environ.get(ENV_URL)
    model = model or os.environ.get(ENV_MODEL)
    key = key or os.environ.get(ENV_KEY)
    if not url or not model:
        raise ExplainerError(f"set {ENV_URL} (an OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1) and "
                             f"{ENV_MODEL} (and {ENV_KEY} if it needs one) to use the LLM explainer")
    endpoint = url.rstrip("/") + "/chat/completions"
    feats = [int(f) for f in features]
    bad = [f for f in feats if not 0 <= f < contexts.n_features]
    if bad:
        raise SAEError(f"feature {bad[0]} out of range: this SAE has {contexts.n_features} features")
    rows = []
    for f in tqdm(feats, desc="explaining", disable=not progress):
        if contexts.top.doc[f, 0] < 0:
            rows.append((f, "", np.nan))
            continue
        body = {"model": model, "temperature": 0, "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": format_contexts(contexts, f, n_contexts)}]}
        reply = _post(endpoint, body, key, timeout)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ExplainerError(f"the explainer at {endpoint} answered without choices[0].message.content") from None
        rows.append((f, *parse_reply(str(text))))
    return pd.DataFrame(rows, columns=["feature", "description", "score"])
