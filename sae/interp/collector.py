"""One SAE's side of the top-context pass: encode a chunk of activations, keep every feature's top
documents and random activating tokens (`Collector`); the seeded hash behind the random sample (`hash_keys`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sae.interp.documents import Rows
from sae.interp.store import Slots, TopContexts, hist_bins
from sae.model import SparseAutoencoder


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


class Collector:
    """One SAE's running state: feeds chunks of activations into a TopContexts."""

    def __init__(self, name: str, sae: SparseAutoencoder, hook: str, state: TopContexts, folder: Path | None):
        self.name, self.sae, self.hook, self.state, self.folder = name, sae, hook, state, folder
        self.seed = int(state.settings["seed"])
        self.chunk = max(64, (1 << 26) // sae.n_features)  # tokens encoded at once: a [chunk, F] pre-activation <= 256 MiB

    def wants(self, budget: int) -> bool:
        """Whether the state still takes tokens: the corpus has not run out and the budget is not reached."""
        return not self.state.complete and self.state.tokens < budget

    @torch.no_grad()
    def update(self, x: torch.Tensor, rows: Rows, budget: int, keep: np.ndarray) -> None:
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
        if s.hist is not None:
            nb = s.hist.shape[1]
            s.hist += np.bincount(f * nb + hist_bins(v), minlength=F * nb).reshape(F, nb)
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
        `self.chunk` tokens at a time through `encode_sparse` (a [chunk, F] pre-activation, at most 256 MiB)."""
        dev = self.sae.W_enc.device
        out_t, out_f, out_v = [], [], []
        for s in range(0, len(tok), self.chunk):
            part = torch.from_numpy(tok[s : s + self.chunk])
            xb = x[part].to(dev, self.sae.W_enc.dtype)
            vals, idx = self.sae.encode_sparse(xb)
            r, c = (vals > 0).nonzero(as_tuple=True)
            f, v = idx[r, c], vals[r, c]
            out_t.append(part[r.cpu()].numpy())
            out_f.append(f.cpu().numpy())
            out_v.append(v.float().cpu().numpy())
        return np.concatenate(out_t), np.concatenate(out_f).astype(np.int64), np.concatenate(out_v)

    def _merge(self, slots: Slots, cand, score, row, pos, f, v, rows: Rows, lookup: "_Lookup") -> None:
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
