"""The kept contexts of an SAE's features (`TopContexts`, `Slots`), their table and decoding, and their file.

A saved state is one safetensors file (`contexts.safetensors`: every array, with the settings, the progress,
the titles, the token texts and the bytes of byte pieces as JSON in its header; one atomic write, never
unpickled), beside contexts.json (settings and progress, for people) and firing.csv.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sae.errors import SAEError, SAEFileError
from sae.io import atomic_path, write_json, write_text

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "sae.interp.contexts/1"
STATE_FILE = "contexts.safetensors"
MARK = ("«", "»")  # around a context's own token in `text`
# the activation histogram's bins: half-octaves from 2^-10 to 2^12 (smaller values count in the first
# bin, larger in the last); fixed, so histograms of a streamed pass add up and compare across features
HIST_EDGES = 2.0 ** (np.arange(-20, 25) / 2)
HISTOGRAM = "log2/2:-10..12"  # recorded in the settings: states without it come from an older version


def hist_bins(values: np.ndarray) -> np.ndarray:
    """The histogram bin (0 .. len(HIST_EDGES) - 2) of every activation value."""
    return (np.searchsorted(HIST_EDGES, values, side="right") - 1).clip(0, len(HIST_EDGES) - 2)


class ContextsError(SAEError, ValueError):
    """Bad options, or a saved state that does not belong to this SAE / these settings."""


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
    hist: np.ndarray | None = None  # [F, len(HIST_EDGES) - 1] int64 firings per activation bin (None: older file)

    @property
    def n_features(self) -> int:
        return len(self.counts)

    @property
    def window(self) -> tuple[int, int]:
        before, after = self.settings["window"]
        return int(before), int(after)

    @property
    def firing(self) -> pd.DataFrame:
        """DataFrame (feature, count, frequency): activating tokens per feature over `tokens`."""
        import pandas as pd

        return pd.DataFrame({"feature": np.arange(self.n_features), "count": self.counts,
                             "frequency": self.counts / max(self.tokens, 1)})

    def token_text(self, ids: Iterable[int]) -> list[str]:
        """The text of every token id, `<id>` for ids outside `vocab`."""
        return [self.vocab.get(int(i), f"<{int(i)}>") for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a run of tokens decoded together: a character split into byte pieces comes out whole."""
        ids = [int(i) for i in ids]
        raw = b"".join(bytes.fromhex(self.token_bytes[i]) if i in self.token_bytes else t.encode()
                       for i, t in zip(ids, self.token_text(ids)))
        return raw.decode(errors="replace")

    def table(self, features: Iterable[int] | None = None) -> pd.DataFrame:
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
        if self.hist is not None:
            tensors["hist"] = self.hist
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
        """tokens, docs, complete: how far the pass got."""
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
                   {int(k): v for k, v in meta.get("token_bytes", {}).items()}, t.get("hist"))  # absent in older files
