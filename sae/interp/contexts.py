"""Top-activating contexts of every feature of an SAE, streamed from a corpus through the model.

    python -m sae.contexts demo:L15R-8x --tokens 100000 --out out/contexts/L15R-8x

    from sae.interp.contexts import top_contexts
    ctx = top_contexts("demo:L15R-8x", tokens=100_000, out="out/contexts/L15R-8x", resume=True)
    ctx.table([12, 345])     # one row per (feature, kind, rank): text window, activations, title
    ctx.firing               # feature, count, frequency

Documents are read in a seeded random order by default (the embedded corpus is sorted by title, so a
token budget would otherwise see only its first titles); `shuffle=False` keeps corpus order, and streamed
`hf:` sources are always read in order. For every feature it keeps, in one pass and without a dense
[tokens, features] array:
- `top`: the `n_top` documents where it fires most, one context per document (the window around the
  document's maximum, first position on ties; equal maxima keep the document read first);
- `random`: `n_random` activating tokens drawn uniformly without replacement (reservoir sampling by
  random keys: every activating (document, position) gets a key from a seeded hash and the largest
  keys are kept, so the sample does not depend on batching and a resumed run draws the same one);
- firing counts, and the corpus count of every token id (the labeller's background);
- the text of every token id in the windows, and the bytes of those that are pieces of a character
  (byte-level BPE splits some non-ASCII characters into tokens that decode alone to U+FFFD), so that
  `decode` gives runs of tokens, such as words, whole.
A context is a window of `window = (before, after)` tokens around its token with the feature's
activation on each; BOS/EOS/padding are left out, and massive-activation positions (`sae.data.massive`) never
start a context (they may still sit inside another token's window). Windows hold token ids and activations in fixed
[features, slots, width] arrays, so memory is set by the SAE's width, not by the corpus.

Activations come from `ActivationStream` (one forward per token batch for every SAE at once, NaN checks);
the same documents are tokenised beside it to know each token's document, position and id. The state
is checkpointed atomically (one safetensors file whose header holds the progress) every
`checkpoint_s` seconds; `resume=True` picks it up (a larger `tokens` extends a finished run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice, tee
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae.data.stream import ActivationStream
from sae.data.text import describe_source, iter_documents
from sae.errors import SAEError, SAEFileError, ShapeError
from sae.io import atomic_path, write_json, write_text
from sae.data.massive import massive_positions
from sae.model import SparseAutoencoder

SCHEMA = "sae.interp.contexts/1"
DEFAULT_TOKENS = 100_000
DEFAULT_WINDOW = (24, 8)  # tokens before and after a context's own token
STATE_FILE = "contexts.safetensors"
MARK = ("«", "»")  # around a context's own token in `text`


class ContextsError(SAEError, ValueError):
    """Bad options, or a saved state that does not belong to this SAE / these settings."""


# ---------------------------------------------------------------------------------------------------
# the data
# ---------------------------------------------------------------------------------------------------
@dataclass
class Slots:
    """The kept contexts of every feature: [F, n] per slot, [F, n, W] per window token (-1 / 0 pads)."""

    score: np.ndarray  # [F, n] float64: the activation (top) or the random key (random); -inf = empty
    doc: np.ndarray  # [F, n] int64 document index, -1 = empty
    pos: np.ndarray  # [F, n] int64 token position in the document (0 = BOS)
    value: np.ndarray  # [F, n] float32 activation at that token
    tokens: np.ndarray  # [F, n, W] int32 token ids of the window, -1 outside the document / special
    acts: np.ndarray  # [F, n, W] float32 the feature's activation on each window token

    @classmethod
    def empty(cls, n_features: int, n: int, width: int) -> "Slots":
        return cls(np.full((n_features, n), -np.inf), np.full((n_features, n), -1, np.int64),
                   np.zeros((n_features, n), np.int64), np.zeros((n_features, n), np.float32),
                   np.full((n_features, n, width), -1, np.int32), np.zeros((n_features, n, width), np.float32))

    FIELDS = ("score", "doc", "pos", "value", "tokens", "acts")

    def merge(self, f: np.ndarray, cand: dict[str, np.ndarray]) -> None:
        """Merge candidates (feature f [c], one array per field [c, ...]) into the kept slots: per
        feature the n best scores, existing entries and earlier candidates first on ties."""
        if not len(f):
            return
        order = np.argsort(f, kind="stable")
        f = f[order]
        uniq, start, count = np.unique(f, return_index=True, return_counts=True)
        row = np.repeat(np.arange(len(uniq)), count)
        col = self.score.shape[1] + np.arange(len(f)) - np.repeat(start, count)
        width = self.score.shape[1] + int(count.max())
        score = np.full((len(uniq), width), -np.inf)
        score[:, : self.score.shape[1]] = self.score[uniq]
        score[row, col] = cand["score"][order]
        pick = np.argsort(-score, axis=1, kind="stable")[:, : self.score.shape[1]]  # [U, n]
        for name in self.FIELDS:
            mine = getattr(self, name)
            both = np.empty((len(uniq), width, *mine.shape[2:]), mine.dtype)
            both[:, : mine.shape[1]] = mine[uniq]
            both[row, col] = cand[name][order]
            idx = pick.reshape(*pick.shape, *([1] * (mine.ndim - 2)))
            mine[uniq] = np.take_along_axis(both, idx, axis=1)

    def threshold(self) -> np.ndarray:
        """[F] the score a candidate must beat: the n-th best kept (-inf while a feature has room)."""
        if not self.score.shape[1]:  # n = 0 keeps nothing
            return np.full(self.score.shape[0], np.inf)
        return self.score[:, -1]


@dataclass
class TopContexts:
    """Top and random contexts of one SAE's features, firing counts and corpus token counts."""

    name: str
    settings: dict  # schema, sae, fingerprint, n_features, model, dataset, context, n_top, n_random, window, seed
    tokens: int  # ordinary tokens streamed
    docs: int  # documents streamed (in stream order: the next one to read)
    complete: bool  # the corpus ran out before the token budget
    counts: np.ndarray  # [F] int64 tokens on which each feature fires
    token_counts: np.ndarray  # [V] int64 occurrences of every token id among the streamed ordinary tokens
    top: Slots
    random: Slots
    titles: dict[int, str]  # document index -> title, for the documents referenced
    vocab: dict[int, str]  # token id -> its text, for the ids in the windows
    token_bytes: dict[int, str] = field(default_factory=dict)  # token id -> its bytes (hex), where its text has U+FFFD

    @property
    def n_features(self) -> int:
        return len(self.counts)

    @property
    def window(self) -> tuple[int, int]:
        before, after = self.settings["window"]
        return int(before), int(after)

    @property
    def firing(self):
        """DataFrame (feature, count, frequency): activating tokens per feature over `tokens`."""
        import pandas as pd

        return pd.DataFrame({"feature": np.arange(self.n_features), "count": self.counts,
                             "frequency": self.counts / max(self.tokens, 1)})

    def token_text(self, ids: Iterable[int]) -> list[str]:
        return [self.vocab.get(int(i), f"<{int(i)}>") for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a run of tokens decoded together: a character split into byte pieces comes out whole."""
        ids = [int(i) for i in ids]
        raw = b"".join(bytes.fromhex(self.token_bytes[i]) if i in self.token_bytes else t.encode()
                       for i, t in zip(ids, self.token_text(ids)))
        return raw.decode(errors="replace")

    def table(self, features: Iterable[int] | None = None):
        """DataFrame, one row per kept context (feature, kind "top"/"random", rank): activation (max in
        the window), value (at the context's own token), doc, position, title, tokens (list of str),
        acts (list of float), text (the window with the context's own token in «»)."""
        import pandas as pd

        feats = np.arange(self.n_features) if features is None else np.asarray(list(features), np.int64)
        bad = feats[(feats < 0) | (feats >= self.n_features)]
        if len(bad):
            raise ContextsError(f"feature {int(bad[0])} out of range: this SAE has {self.n_features} features")
        before = self.window[0]
        rows = []
        for kind, slots in (("top", self.top), ("random", self.random)):
            for f in feats:
                for rank in np.flatnonzero(slots.doc[f] >= 0):
                    ids, acts = slots.tokens[f, rank], slots.acts[f, rank]
                    keep = ids >= 0
                    words = self.token_text(ids[keep])
                    centre = int(keep[:before].sum())  # the context's own token after dropping pads
                    marked = words.copy()
                    marked[centre] = f"{MARK[0]}{marked[centre]}{MARK[1]}"
                    doc = int(slots.doc[f, rank])
                    rows.append((int(f), kind, int(rank), float(acts.max()), float(slots.value[f, rank]), doc,
                                 int(slots.pos[f, rank]), self.titles.get(doc, ""), words,
                                 acts[keep].astype(float).tolist(), "".join(marked)))
        cols = ["feature", "kind", "rank", "activation", "value", "doc", "position", "title", "tokens", "acts", "text"]
        df = pd.DataFrame(rows, columns=cols)
        return df.sort_values(["feature", "kind", "rank"], ascending=[True, False, True], kind="stable",
                              ignore_index=True)

    # ---- files -------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """contexts.safetensors (everything, progress in its header, one atomic write), contexts.json
        (settings and progress, for people) and firing.csv into `folder`."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {"counts": self.counts, "token_counts": self.token_counts}
        for kind, slots in (("top", self.top), ("random", self.random)):
            tensors.update({f"{kind}.{name}": getattr(slots, name) for name in Slots.FIELDS})
        meta = {"settings": self.settings, "progress": self.progress(),
                "titles": {str(k): v for k, v in self.titles.items()}, "vocab": {str(k): v for k, v in self.vocab.items()},
                "token_bytes": {str(k): v for k, v in self.token_bytes.items()}}
        with atomic_path(folder / STATE_FILE) as tmp:
            save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(tmp),
                      metadata={k: json.dumps(v) for k, v in meta.items()})
        write_json(folder / "contexts.json", {"settings": self.settings, "progress": self.progress()})
        write_text(folder / "firing.csv", self.firing.to_csv(index=False))
        return folder

    def progress(self) -> dict:
        return {"tokens": self.tokens, "docs": self.docs, "complete": self.complete}

    @classmethod
    def load(cls, folder: str | Path) -> "TopContexts":
        """Read what `save` wrote (never unpickles)."""
        from safetensors import SafetensorError, safe_open

        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise SAEFileError(f"no saved contexts in {folder} (missing {STATE_FILE})")
        try:
            with safe_open(str(path), "np") as f:
                meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise SAEFileError(f"{path} is not a readable contexts file (truncated or corrupt?): {e}") from None
        need = ["counts", "token_counts"] + [f"{k}.{n}" for k in ("top", "random") for n in Slots.FIELDS]
        missing = [k for k in need if k not in t] + [k for k in ("settings", "progress", "titles", "vocab") if k not in meta]
        if missing or meta["settings"].get("schema") != SCHEMA:
            raise SAEFileError(f"{path} is not a {SCHEMA} file (missing {', '.join(missing) or 'schema'})")
        slots = {k: Slots(*(t[f"{k}.{n}"] for n in Slots.FIELDS)) for k in ("top", "random")}
        p = meta["progress"]
        return cls(meta["settings"]["sae"], meta["settings"], int(p["tokens"]), int(p["docs"]), bool(p["complete"]),
                   t["counts"], t["token_counts"], slots["top"], slots["random"],
                   {int(k): v for k, v in meta["titles"].items()}, {int(k): v for k, v in meta["vocab"].items()},
                   {int(k): v for k, v in meta.get("token_bytes", {}).items()})  # absent in older files


# ---------------------------------------------------------------------------------------------------
# collecting
# ---------------------------------------------------------------------------------------------------
def hash_keys(doc: np.ndarray, pos: np.ndarray, feature: np.ndarray, seed: int = 0) -> np.ndarray:
    """A uniform pseudo-random key in [0, 1) for every (document, position, feature): splitmix64."""
    def mix(x: np.ndarray) -> np.ndarray:
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        x = mix(np.full(len(doc), seed, np.uint64))
        for part in (doc, pos, feature):
            x = mix(x ^ np.asarray(part).astype(np.uint64))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class _Rows:
    """The documents behind one chunk of ordinary-token activations."""

    order: np.ndarray  # [R] each row's place in the document stream
    docs: np.ndarray  # [R] its document index in the source
    ids: np.ndarray  # [R, T] token ids, -1 at special positions and padding
    n_tokens: np.ndarray  # [R] ordinary tokens per row
    tok_row: np.ndarray  # [n] row of every ordinary token, in the order of the activations
    tok_pos: np.ndarray  # [n] its position in the row


class _Collector:
    """One SAE's running state: feeds chunks of activations into a TopContexts."""

    def __init__(self, name: str, sae: SparseAutoencoder, hook: str, state: TopContexts, folder: Path | None):
        self.name, self.sae, self.hook, self.state, self.folder = name, sae, hook, state, folder
        self.seed = int(state.settings["seed"])
        self.chunk = max(64, (1 << 26) // sae.n_features)  # tokens encoded at once: a [chunk, F] pre-activation <= 256 MiB

    def wants(self, budget: int) -> bool:
        return not self.state.complete and self.state.tokens < budget

    @torch.no_grad()
    def update(self, x: torch.Tensor, rows: _Rows, budget: int, keep: np.ndarray) -> None:
        """x [n, d]: activations of the chunk's ordinary tokens; only rows the state has not seen, up to the
        budget, and only tokens where `keep` [n] (massive positions are left out, `sae.data.massive`)."""
        s = self.state
        fresh = rows.order >= s.docs
        before = np.cumsum(np.where(fresh, rows.n_tokens, 0)) - np.where(fresh, rows.n_tokens, 0)
        take = fresh & (s.tokens + before < budget)  # documents up to the one that reaches the budget
        if not take.any():
            return
        tok = np.flatnonzero(take[rows.tok_row] & keep)
        t, f, v = self._active(x, tok)
        F = s.n_features
        s.counts += np.bincount(f, minlength=F)
        ids = rows.ids[rows.tok_row[tok], rows.tok_pos[tok]]
        s.token_counts += np.bincount(ids, minlength=len(s.token_counts))[: len(s.token_counts)]
        s.tokens += int(rows.n_tokens[take].sum())
        s.docs = int(rows.order[take].max()) + 1
        if not len(t):
            return
        row, pos = rows.tok_row[t], rows.tok_pos[t]
        lookup = _Lookup(row, pos, f, v, rows.ids.shape[1], F)
        # top: each (row, feature)'s maximum, first position on ties
        key = row * F + f
        order = np.lexsort((pos, -v, key))
        first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
        cand = first[v[first] > s.top.threshold()[f[first]]]
        self._merge(s.top, cand, v[cand].astype(np.float64), row, pos, f, v, rows, lookup)
        # random: activating tokens with the largest hash keys
        keys = hash_keys(rows.docs[row], pos, f, self.seed)
        cand = np.flatnonzero(keys > s.random.threshold()[f])
        self._merge(s.random, cand, keys[cand], row, pos, f, v, rows, lookup)

    def _active(self, x: torch.Tensor, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token index into the chunk, feature, activation) of every non-zero activation of tokens `tok`,
        `self.chunk` tokens at a time: TopK through `encode_sparse`; threshold SAEs through `encode` on the
        chunk and its non-zeros (what their `encode_sparse` computes anyway, without its top-m sort)."""
        dev = self.sae.W_enc.device
        out_t, out_f, out_v = [], [], []
        for s in range(0, len(tok), self.chunk):
            part = torch.from_numpy(tok[s : s + self.chunk])
            xb = x[part].to(dev, self.sae.W_enc.dtype)
            if self.sae.activation == "topk":
                vals, idx = self.sae.encode_sparse(xb)
                r, c = (vals > 0).nonzero(as_tuple=True)
                f, v = idx[r, c], vals[r, c]
            else:
                dense = self.sae.encode(xb)  # [chunk, F], at most 256 MiB
                r, f = dense.nonzero(as_tuple=True)
                v = dense[r, f]
            out_t.append(part[r.cpu()].numpy())
            out_f.append(f.cpu().numpy())
            out_v.append(v.float().cpu().numpy())
        return np.concatenate(out_t), np.concatenate(out_f).astype(np.int64), np.concatenate(out_v)

    def _merge(self, slots: Slots, cand, score, row, pos, f, v, rows: _Rows, lookup: "_Lookup") -> None:
        if not len(cand):
            return
        before, after = self.state.window
        cols = pos[cand, None] + np.arange(-before, after + 1)  # [c, W]
        inside = (cols >= 0) & (cols < rows.ids.shape[1])
        r = np.broadcast_to(row[cand, None], cols.shape)
        ids = np.where(inside, rows.ids[r, cols.clip(0, rows.ids.shape[1] - 1)], -1).astype(np.int32)
        acts = np.where(ids >= 0, lookup(r, cols, np.broadcast_to(f[cand, None], cols.shape)), 0.0)
        slots.merge(f[cand], {"score": score, "doc": rows.docs[row[cand]], "pos": pos[cand], "value": v[cand],
                              "tokens": ids, "acts": acts.astype(np.float32)})


class _Lookup:
    """The activation of feature f at (row, position), from the chunk's non-zero activations (0 elsewhere)."""

    def __init__(self, row, pos, f, v, width: int, n_features: int):
        self.width, self.F = width, n_features
        key = (row * width + pos) * n_features + f
        order = np.argsort(key)
        self.key, self.v = key[order], v[order]

    def __call__(self, row, col, f) -> np.ndarray:
        q = (row * self.width + col.clip(0, self.width - 1)) * self.F + f
        at = np.searchsorted(self.key, q).clip(0, len(self.key) - 1)  # never empty: called with candidates
        return np.where(self.key[at] == q, self.v[at], 0.0)


def ordered_documents(dataset: Any, shuffle: bool, seed: int) -> Iterator[tuple[int, str, str]]:
    """(doc index, title, text) in stream order: corpus order, or with `shuffle` a seeded permutation of
    the documents (read into memory), so that a token budget samples the whole corpus, not its first titles."""
    docs = iter_documents(dataset)
    if not shuffle:
        return ((i, title, text) for i, (title, text) in enumerate(docs))
    docs = list(docs)
    return ((int(i), *docs[i]) for i in np.random.default_rng(seed).permutation(len(docs)))


def _document_rows(docs: Iterator[tuple[int, str, str]], batcher, titles: dict[int, str]) -> Iterator[tuple]:
    """(place in the stream, doc index, ids with -1 at special positions, ordinary positions) per document,
    tokenised as the stream does."""
    special = batcher.special.numpy()
    for place, (i, title, text) in docs:
        ids = np.asarray(batcher.encode(text, batcher.context), np.int64)
        ordinary = ~np.isin(ids, special)
        if title:
            titles[i] = title
        yield place, i, np.where(ordinary, ids, -1), np.flatnonzero(ordinary)


def _next_rows(rows: Iterator, n: int) -> _Rows:
    """The documents that make up the next n ordinary tokens of the stream."""
    got, order, docs, ids, pos = 0, [], [], [], []
    while got < n:
        place, i, row_ids, ordinary = next(rows)
        order.append(place), docs.append(i), ids.append(row_ids), pos.append(ordinary)
        got += len(ordinary)
    if got != n:
        raise SAEError(f"internal: the token stream and the activations disagree ({got} vs {n} tokens)")
    T = max(len(r) for r in ids)
    mat = np.full((len(ids), T), -1, np.int64)
    for j, r in enumerate(ids):
        mat[j, : len(r)] = r
    counts = np.array([len(p) for p in pos])
    return _Rows(np.array(order, np.int64), np.array(docs, np.int64), mat, counts, np.repeat(np.arange(len(ids)), counts),
                 np.concatenate(pos) if pos else np.zeros(0, np.int64))


def fingerprint(sae: SparseAutoencoder) -> str:
    """A short hash of an SAE's weights (a strided sample of every tensor): resumes must match it."""
    h = hashlib.sha256(f"{sae.d_in}x{sae.n_features}x{sae.d_out}{sae.activation}{sae.k}".encode())
    step = max(1, sae.n_features // 512)
    for t in (sae.W_enc[:, ::step], sae.W_dec[::step], sae.b_enc, sae.threshold, sae.b_dec):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _window(window: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(window, int):
        before = window * 3 // 4  # a causal model: what precedes a token is what made it fire
        w = (before, window - 1 - before)
    else:
        w = tuple(int(x) for x in window)
    if len(w) != 2 or min(w) < 0:
        raise ContextsError(f"window must be a total width >= 1 or (before, after) >= 0, not {window!r}")
    return w  # type: ignore[return-value]


def collect_contexts(
    saes: dict[str, Any],
    *,
    model: Any = "embedded",
    tokenizer: Any = None,
    dataset: Any = "embedded-train",
    tokens: int = DEFAULT_TOKENS,
    n_top: int = 20,
    n_random: int = 5,
    window: int | tuple[int, int] = DEFAULT_WINDOW,
    shuffle: bool = True,
    out: dict[str, str | Path] | None = None,
    resume: bool = False,
    progress: bool = True,
    context: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    checkpoint_s: float = 120.0,
) -> dict[str, TopContexts]:
    """Top contexts of several SAEs (name -> SparseAutoencoder or spec for `sae.load`) in one pass:
    one forward per token batch serves every SAE, at one site or several. `out` maps names to folders
    (saved at checkpoints and at the end); see `top_contexts` for the rest."""
    from sae.eval.evaluate import resolve_saes, sae_sites
    from sae.lm.sites import load_model, model_name

    if tokens < 1 or n_top < 1 or n_random < 0 or batch_size < 1:
        raise ContextsError(f"tokens, n_top and batch_size must be positive and n_random >= 0 "
                            f"(got {tokens}, {n_top}, {batch_size}, {n_random})")
    before, after = _window(window)
    resolved = resolve_saes(saes)
    if isinstance(model, (str, Path)):
        lm, tokenizer, label = load_model(str(model), device=device)
    else:
        if tokenizer is None:
            raise ContextsError("pass tokenizer= with a model object (or a model name)")
        lm, label = model, model_name(model)
    hooks = {name: sae_sites(s, name)[0].hook for name, s in resolved}
    # every ordinary position, so chunks line up with the document rows; _run leaves massive ones out
    stream = ActivationStream(lm, tokenizer, source=[], hooks=list(dict.fromkeys(hooks.values())), shuffle=False,
                              context=context, seq_batch_size=batch_size, massive_factor=0, progress=False)
    for name, s in resolved:
        if s.d_in != stream.dims()[hooks[name]]:
            raise ShapeError(f"{name} reads d_in={s.d_in} but {hooks[name]} of {label} has width "
                             f"{stream.dims()[hooks[name]]}")
        if device is not None:
            s.to(device)
    vocab_size = max(len(tokenizer), int(getattr(lm.config, "vocab_size", 0) or 0))
    shuffle = shuffle and not (isinstance(dataset, str) and dataset.startswith("hf:"))  # streamed: read in order
    collectors = []
    for name, s in resolved:
        settings = {"schema": SCHEMA, "sae": name, "fingerprint": fingerprint(s), "n_features": s.n_features,
                    "model": label, "dataset": describe_source(dataset), "context": stream.context,
                    "n_top": n_top, "n_random": n_random, "window": [before, after], "seed": seed, "shuffle": shuffle}
        folder = Path(out[name]) if out and name in out else None
        state = _start_state(settings, vocab_size, folder, resume)
        collectors.append(_Collector(name, s, hooks[name], state, folder))
    _run(collectors, stream, tokenizer, dataset, tokens, progress, checkpoint_s)
    return {c.name: c.state for c in collectors}


def _start_state(settings: dict, vocab_size: int, folder: Path | None, resume: bool) -> TopContexts:
    if resume and folder is not None and (folder / STATE_FILE).is_file():
        state = TopContexts.load(folder)
        if state.settings != settings:
            diff = sorted(k for k in settings if state.settings.get(k) != settings[k])
            raise ContextsError(f"{folder} holds contexts made with other settings ({', '.join(diff)}); "
                                "use another folder or start anew without resume")
        return state
    F, (before, after) = settings["n_features"], settings["window"]
    width = before + after + 1
    return TopContexts(settings["sae"], settings, 0, 0, False, np.zeros(F, np.int64), np.zeros(vocab_size, np.int64),
                       Slots.empty(F, settings["n_top"], width), Slots.empty(F, settings["n_random"], width), {}, {})


def _run(collectors: list[_Collector], stream: ActivationStream, tokenizer, dataset, budget: int, progress: bool,
         checkpoint_s: float) -> None:
    from tqdm.auto import tqdm

    active = [c for c in collectors if c.wants(budget)]
    if not active:
        return
    start = min(c.state.docs for c in active)
    titles: dict[int, str] = {}
    docs = ordered_documents(dataset, collectors[0].state.settings["shuffle"], collectors[0].seed)
    for_stream, for_rows = tee(islice(enumerate(docs), start, None))
    stream.source = (text for _, (_, _, text) in for_stream)
    rows = _document_rows(for_rows, stream.batcher, titles)
    done = min(c.state.tokens for c in active)
    bar = tqdm(total=budget, initial=done, unit="tok", desc="contexts", disable=not progress)
    last_save = time.monotonic()
    exhausted = True
    try:
        for chunk in stream.chunks():
            n = next(iter(chunk.values())).shape[0]
            batch = _next_rows(rows, n)
            keep = ~massive_positions(chunk.values(), torch.ones(n, dtype=torch.bool)).numpy()
            for c in active:
                if c.wants(budget):
                    c.update(chunk[c.hook], batch, budget, keep)
            now = min(c.state.tokens for c in active)
            bar.update(max(now - done, 0))
            done = now
            if not any(c.wants(budget) for c in active):
                exhausted = False
                break
            if time.monotonic() - last_save > checkpoint_s:
                _finish(active, titles, tokenizer)
                last_save = time.monotonic()
    finally:
        bar.close()
    for c in active:
        c.state.complete = exhausted and c.state.tokens < budget
    _finish(active, titles, tokenizer)


def _finish(collectors: list[_Collector], titles: dict[int, str], tokenizer) -> None:
    """Attach titles, token texts and the bytes of byte pieces for what the windows reference, then save where a
    folder is set."""
    for c in collectors:
        s = c.state
        docs = np.unique(np.concatenate([s.top.doc.ravel(), s.random.doc.ravel()]))
        s.titles = {int(d): titles.get(int(d), s.titles.get(int(d), "")) for d in docs if d >= 0}
        s.titles = {d: t for d, t in s.titles.items() if t}
        used = np.zeros(len(s.token_counts), bool)  # a presence mask: linear, unlike unique's sort
        for slots in (s.top, s.random):
            ids = slots.tokens[slots.tokens >= 0]
            used[ids[ids < len(used)]] = True
        new = [int(i) for i in np.flatnonzero(used) if int(i) not in s.vocab]
        s.vocab.update(zip(new, tokenizer.batch_decode([[i] for i in new])))
        s.token_bytes.update(_token_bytes(tokenizer, [i for i in new if "\ufffd" in s.vocab[i]]))
        if c.folder is not None:
            s.save(c.folder)


def _token_bytes(tokenizer, ids: list[int]) -> dict[int, str]:
    """Hex bytes of byte-level BPE tokens (GPT-2's byte-to-character alphabet: SmolLM2, Llama 3); tokens of
    other tokenizers are left out."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    return {i: bytes(byte_of[c] for c in t).hex() for i, t in zip(ids, tokenizer.convert_ids_to_tokens(ids))
            if t and all(c in byte_of for c in t)}


def top_contexts(
    sae: Any,
    *,
    model: Any = "embedded",
    dataset: Any = "embedded-train",
    tokens: int = DEFAULT_TOKENS,
    n_top: int = 20,
    n_random: int = 5,
    window: int | tuple[int, int] = DEFAULT_WINDOW,
    shuffle: bool = True,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    tokenizer: Any = None,
    context: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    checkpoint_s: float = 120.0,
) -> TopContexts:
    """Stream `tokens` ordinary tokens of `dataset` through `model` (whole documents, in a seeded random
    order unless shuffle=False or the source is a streamed hf: dataset; the last document may pass the
    budget) and keep, for every feature of `sae`, its `n_top` top documents and `n_random`
    random activating tokens with a `window` (total width, or (before, after)) of token activations.

    sae: a SparseAutoencoder (its meta says where it reads) or a spec for `sae.load`. model: "embedded",
    an HF folder / hub name, or a model object with `tokenizer`. out: a folder for the result and its
    checkpoints; resume=True continues from it (same SAE and settings) instead of starting anew.
    """
    name = getattr(getattr(sae, "meta", None), "name", None) or (str(sae) if isinstance(sae, (str, Path)) else "sae")
    result = collect_contexts({name: sae}, model=model, tokenizer=tokenizer, dataset=dataset, tokens=tokens,
                              n_top=n_top, n_random=n_random, window=window, shuffle=shuffle,
                              out={name: out} if out else None,
                              resume=resume, progress=progress, context=context, batch_size=batch_size, seed=seed,
                              device=device, checkpoint_s=checkpoint_s)
    return result[name]


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def folder_name(spec: str) -> str:
    """A folder name for an SAE spec: `demo:L15R-8x` -> `demo_L15R-8x`."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(spec).rstrip("/")) or "sae"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sae.contexts",
        description="Top-activating contexts of every feature of one or more SAEs (one pass through the model "
        "for all of them): top documents, random activating tokens, firing counts. Resumable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sae", nargs="+", help="SAE names (demo:L15R-8x, L15R-8x) or folders")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder; with several SAEs one subfolder per SAE (named after the spec)")
    p.add_argument("--model", default="embedded", help="the model the SAEs read: embedded or an HF folder / hub name")
    p.add_argument("--dataset", default="embedded-train", help="text source (see sae.data.text): embedded-train, a file, hf:...")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="ordinary tokens to stream (whole documents)")
    p.add_argument("--n-top", type=int, default=20, help="top contexts (documents) kept per feature")
    p.add_argument("--n-random", type=int, default=5, help="random activating contexts kept per feature")
    p.add_argument("--window", type=int, nargs=2, default=list(DEFAULT_WINDOW), metavar=("BEFORE", "AFTER"),
                   help="tokens kept before and after a context's own token")
    p.add_argument("--context", type=int, help="tokens per document (default: 1024 or the model's maximum)")
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward")
    p.add_argument("--seed", type=int, default=0, help="seed of the document order and the random contexts' hash")
    p.add_argument("--corpus-order", action="store_true",
                   help="read the documents in corpus order (default: a seeded random order, so that a token budget "
                   "samples the whole corpus; streamed hf: sources are always read in order)")
    p.add_argument("--device", help="device for the model and SAEs (default: cpu)")
    p.add_argument("--resume", action="store_true", help="continue from a state saved in --out (same SAEs and settings)")
    p.add_argument("--checkpoint-s", type=float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = {spec: args.out if len(args.sae) == 1 else args.out / folder_name(spec) for spec in args.sae}
    result = collect_contexts({spec: spec for spec in args.sae}, model=args.model, dataset=args.dataset,
                              tokens=args.tokens, n_top=args.n_top, n_random=args.n_random, window=tuple(args.window),
                              shuffle=not args.corpus_order, out=out, resume=args.resume, progress=not args.quiet,
                              context=args.context, batch_size=args.batch_size, seed=args.seed, device=args.device,
                              checkpoint_s=args.checkpoint_s)
    if not args.quiet:
        for spec, ctx in result.items():
            fired = int((ctx.counts > 0).sum())
            print(f"{spec}: {ctx.tokens:,} tokens from {ctx.docs:,} documents; {fired:,} of {ctx.n_features:,} "
                  f"features fired; saved in {out[spec]}")
    return 0
