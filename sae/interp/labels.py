"""Feature labels from top-activating contexts: an offline default, and an optional LLM explainer.

    from sae.interp.store import TopContexts
    from sae.interp.labels import label_features, explain_features
    ctx = TopContexts.load("out/contexts/L15R-8x")
    labels = label_features(ctx)            # feature, label, top_tokens, top_titles, score, n_contexts
    expl = explain_features(ctx, [12, 345]) # feature, description, score (1-5); needs SAE_EXPLAINER_URL

Offline labeller: labels are words. A word of a context window is a run of tokens that starts at a token
whose text starts with a space or punctuation, after one that ends with them, or after a gap (document edge,
special token); its tokens are decoded together (`TopContexts.decode`), so a character that byte-level BPE
splits into pieces comes out whole. Over a feature's top contexts, the activation mass on every word
(stripped, lower-cased; the mass of a token goes to its word) is compared with that word's frequency in the
streamed corpus, and words are ranked by their contribution to the KL divergence, share * log(share / corpus
frequency), so a word must both carry the feature's activation and be rarer in the corpus than in the
feature's contexts. The corpus is counted in tokens, so its word counts are bounds: a word occurs at most as
often as its rarest token (over how often that token occurs in the word), and the corpus's word count is
that of its tokens whose text starts a word (among the token ids in the windows) plus one per document.
Words with U+FFFD, made only of punctuation and spaces, or cut by the window's start are never labels. The
titles of the documents where it fires most come beside them. `score` is the fraction of the top contexts
whose own (maximum) token lies in one of the label's words: 1 for a feature that always peaks on the same
words, near 0 for a diffuse one.

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
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterable

import numpy as np
import pandas as pd

from sae.errors import SAEError
from sae.interp.store import TopContexts

ENV_URL, ENV_MODEL, ENV_KEY = "SAE_EXPLAINER_URL", "SAE_EXPLAINER_MODEL", "SAE_EXPLAINER_KEY"
LABEL_COLUMNS = ["feature", "label", "top_tokens", "top_titles", "score", "n_contexts"]


class ExplainerError(SAEError, RuntimeError):
    """The explainer endpoint is not configured, cannot be reached, or answers an error."""


# ---------------------------------------------------------------------------------------------------
# offline labels
# ---------------------------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return text.strip().lower()


def _boundary(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def _readable(word: str) -> bool:
    """A possible label: no U+FFFD (a character's byte pieces), and more than punctuation and spaces."""
    return "\ufffd" not in word and not all(_boundary(ch) for ch in word)


def _edges(contexts: TopContexts) -> tuple[np.ndarray, np.ndarray]:
    """Per token id, whether its text starts a word (begins with a space or punctuation) and whether it
    ends one (ends with them); one more entry, for the -1 gaps in windows, is True in both."""
    ids = list(contexts.vocab)
    opens, closes = np.zeros((2, max(ids, default=-1) + 2), bool)
    for i, t in zip(ids, contexts.token_text(ids)):
        opens[i], closes[i] = bool(t) and _boundary(t[0]), bool(t) and _boundary(t[-1])
    opens[-1] = closes[-1] = True
    return opens, closes


def _word_spans(tok: np.ndarray, opens: np.ndarray, closes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., W] windows of token ids (-1 gaps) -> the start and end (exclusive) of every token's word in its
    window; start is -1 for a word cut by the window's start (its first token does not start a word)."""
    W = tok.shape[-1]
    new = opens[tok]
    new[..., 1:] |= closes[tok[..., :-1]]
    col = np.arange(W)
    start = np.maximum.accumulate(np.where(new, col, 0), axis=-1)
    after = np.concatenate([new[..., 1:], np.ones_like(new[..., :1])], axis=-1)
    end = np.minimum.accumulate(np.where(after, col + 1, W)[..., ::-1], axis=-1)[..., ::-1]
    return np.where((start == 0) & ~new[..., :1], -1, start), end


def _words(contexts: TopContexts, tok: np.ndarray, start: np.ndarray, end: np.ndarray,
           at: tuple[np.ndarray, ...]) -> tuple[list[tuple[int, ...]], list[str]]:
    """The token runs and texts (stripped, lower-cased; "" when cut) of the words at positions `at` of tok."""
    runs = [tuple(tok[f, s, a:b].tolist()) if a >= 0 else () for f, s, a, b in zip(*at[:2], start[at], end[at])]
    text = {r: _norm(contexts.decode(r)) for r in set(runs)}
    return runs, [text[r] for r in runs]


def _corpus_count(token_counts: np.ndarray, run: tuple[int, ...]) -> int:
    """How often a word occurs in the corpus, at most: its rarest token's count over that token's count in it
    (at least 1: a window holds it, even where the corpus count leaves its tokens out)."""
    return max(min(int(token_counts[i]) // run.count(i) for i in set(run)), 1)


def _ranked_words(contexts: TopContexts, tok: np.ndarray, act: np.ndarray, start: np.ndarray, end: np.ndarray,
                  n_words: int, n_top: int) -> pd.Series:
    """Per row of tok [n, slots, W] (the features' windows, activations act): its n_top readable words by
    share * log(share / corpus frequency), the corpus frequency of a word being its count over n_words."""
    on = np.nonzero((tok >= 0) & (act > 0))
    runs, words = _words(contexts, tok, start, end, on)
    frame = pd.DataFrame({"f": on[0], "word": words, "run": runs, "mass": act[on].astype(np.float64)})
    frame["share"] = frame["mass"] / frame.groupby("f")["mass"].transform("sum")
    frame = frame[frame["word"].isin({w for w in set(words) if _readable(w)})]
    share = frame.groupby(["f", "word"])["share"].sum()
    variants = frame.drop_duplicates(["f", "run"])  # the runs of tokens that spell each word
    count = {r: _corpus_count(contexts.token_counts, r) for r in set(variants["run"])}
    variants = variants.assign(count=[count[r] for r in variants["run"]])
    corpus = variants.groupby(["f", "word"])["count"].sum()
    kl = (share * np.log(share * n_words / corpus)).rename("kl").reset_index()
    kl = kl[kl["kl"] > 0].sort_values(["f", "kl"], ascending=[True, False]).groupby("f").head(n_top)
    return kl.groupby("f")["word"].apply(list)


def label_features(
    contexts: TopContexts,
    *,
    features: Iterable[int] | None = None,
    n_tokens: int = 5,
    n_titles: int = 3,
    n_label_tokens: int = 3,
) -> pd.DataFrame:
    """One row per feature: label ("word, word, word (Title; Title)"), top_tokens (its top n_tokens words) and
    top_titles (joined with ", " and "; "), score (share of top contexts peaking in a label word; NaN without
    contexts), n_contexts. Features that never fired get an empty label."""
    feats = np.arange(contexts.n_features) if features is None else np.asarray(list(features), np.int64)
    top = contexts.top
    tok = top.tokens[feats]  # [n, slots, W]
    opens, closes = _edges(contexts)
    start, end = _word_spans(tok, opens, closes)
    n_words = int(contexts.token_counts[: len(opens) - 1][opens[:-1]].sum()) + contexts.docs
    ranked = _ranked_words(contexts, tok, top.acts[feats], start, end, n_words, n_tokens)
    filled = top.doc[feats] >= 0
    f_ctx, s_ctx = np.nonzero(filled)
    _, peaks = _words(contexts, tok, start, end, (f_ctx, s_ctx, np.full(len(f_ctx), contexts.window[0])))
    peaks_of = pd.Series(peaks, dtype=object).groupby(f_ctx).apply(list)
    rows = []
    for j, f in enumerate(feats):
        top_words, peak = ranked.get(j, []), peaks_of.get(j, [])
        titles = list(dict.fromkeys(contexts.titles.get(int(d), "") for d in top.doc[f][filled[j]]))
        titles = [t for t in titles if t][:n_titles]
        score = float(np.mean([w in top_words[:n_label_tokens] for w in peak])) if peak else np.nan
        label = ", ".join(top_words[:n_label_tokens])
        if titles:
            label += f" ({'; '.join(titles[:2])})"
        rows.append((int(f), label, ", ".join(top_words), "; ".join(titles), score, len(peak)))
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
