"""The per-feature quantities of the atlas, computed for all features at once: the logit lens, nearest
decoder directions in the same SAE (those in the others, with parents and children, are
`geometry.matching.pair_links`), activation-quantile bins from the contexts' histograms, and context
windows as display tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geometry.similarity import top_k_cosine
from sae.interp.store import HIST_EDGES, TopContexts


@dataclass
class LogitLens:
    """Top and bottom tokens of every decoder direction through the model's final norm and unembedding."""

    top_ids: np.ndarray  # [F, n] int64, best first
    top_values: np.ndarray  # [F, n] float32
    bottom_ids: np.ndarray  # [F, n] int64, most negative first
    bottom_values: np.ndarray  # [F, n] float32


@torch.no_grad()
def logit_lens(W_dec: torch.Tensor, norm_weight: torch.Tensor | None, W_U: torch.Tensor, n: int = 10,
               chunk: int = 1024) -> LogitLens:
    """W_dec: [F, d] decoder rows; norm_weight: [d] the final RMSNorm's gain (None: no norm); W_U: [V, d]
    the unembedding. Each row's logits are W_U @ (gain * row): the direct effect of adding the feature's
    direction to the last residual stream, the norm's per-token scale left out (it is common to all tokens)."""
    gain = norm_weight.float() if norm_weight is not None else torch.ones(W_dec.shape[1])
    U = W_U.float().T.contiguous()  # [d, V]
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, W_dec.shape[0], chunk):
        logits = (W_dec[start:start + chunk].float() * gain) @ U  # [chunk, V]
        top, bottom = logits.topk(n, dim=1), logits.topk(n, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    cat = [torch.cat(p).numpy() for p in zip(*parts)]
    return LogitLens(cat[0].astype(np.int64), cat[1], cat[2].astype(np.int64), cat[3])


def nearest_in_self(W_dec: torch.Tensor, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """([F, k] ids, [F, k] cosines) of every row's k nearest other rows, best first."""
    top = top_k_cosine(W_dec, W_dec, k=min(k + 1, W_dec.shape[0])).a_to_b
    idx, cos = top.indices.numpy(), top.values.numpy()
    others = idx != np.arange(len(idx))[:, None]
    keep = np.argsort(~others, axis=1, kind="stable")[:, :k]  # drop the row itself, keep the order
    return np.take_along_axis(idx, keep, 1), np.take_along_axis(cos, keep, 1)


def quantile_bins(hist: np.ndarray, n_bins: int = 5) -> list[tuple[float, float, float]]:
    """(lo, hi, share) of up to `n_bins` runs of adjacent histogram bins holding about equal shares of a
    feature's firings (hist: [len(HIST_EDGES) - 1] counts); [] for a feature that never fired."""
    total = hist.sum()
    if not total:
        return []
    nz = np.flatnonzero(hist)
    cdf = np.cumsum(hist) / total
    cuts = np.unique(np.searchsorted(cdf, np.arange(1, n_bins) / n_bins - 1e-9, side="left"))  # last bin of each run
    bins, start = [], int(nz[0])
    for end in [*cuts[cuts < nz[-1]].tolist(), int(nz[-1])]:
        if end < start:
            continue
        share = float(hist[start:end + 1].sum() / total)
        if share > 0:
            bins.append((float(HIST_EDGES[start]), float(HIST_EDGES[end + 1]), share))
        start = end + 1
    return bins


class TokenTexts:
    """The display text of every token id of one SAE's contexts (`TopContexts.vocab`), and which ids are
    byte pieces of a character (their text has U+FFFD; `TopContexts.token_bytes` holds their bytes)."""

    def __init__(self, ctx: TopContexts):
        n = max([*ctx.vocab, *ctx.token_bytes, -1]) + 1
        self.text = [ctx.vocab.get(i, f"<{i}>") for i in range(n)]
        self.piece = np.zeros(n, bool)
        self.piece[list(ctx.token_bytes)] = True
        self.bytes = {i: bytes.fromhex(h) for i, h in ctx.token_bytes.items()}


def display_windows(tt: TokenTexts, ids: np.ndarray, acts: np.ndarray, centre: int) -> list[tuple[list[str], list[float], int]]:
    """`display_tokens` of every row of ids [R, W] and acts [R, W], in one numpy pass over the rows: a row
    without byte pieces only drops its pads; the others are merged by `display_tokens`."""
    keep = ids >= 0
    slow = (tt.piece[np.where(keep, ids, 0)] & keep).any(1).tolist()
    padded = (~keep).any(1).tolist()
    centres = keep[:, :centre].sum(1).tolist()
    text, out = tt.text, []
    for r, (row, values) in enumerate(zip(ids.tolist(), acts.tolist())):
        if slow[r]:
            out.append(display_tokens(tt, ids[r], acts[r], centre))
        elif padded[r]:
            out.append(([text[i] for i in row if i >= 0], [a for i, a in zip(row, values) if i >= 0], centres[r]))
        else:
            out.append((list(map(text.__getitem__, row)), values, centre))
    return out


def display_tokens(tt: TokenTexts, ids: np.ndarray, acts: np.ndarray, centre: int) -> tuple[list[str], list[float], int]:
    """A context window (ids [W], -1 = pad; acts [W]) as texts to show: pads dropped, and the byte pieces of
    one character (byte-level BPE) merged into that character, with the largest activation of its pieces.
    Returns (texts, acts, centre)."""
    keep = ids >= 0
    if not tt.piece[ids[keep]].any():  # the usual case: every token is whole text
        return [tt.text[i] for i in ids[keep].tolist()], acts[keep].tolist(), int(keep[:centre].sum())
    texts: list[str] = []
    values: list[float] = []
    pending, pending_act, new_centre = b"", 0.0, 0
    for i, (t, a) in enumerate(zip(ids.tolist(), acts.tolist())):
        if t < 0:
            continue
        if i == centre:
            new_centre = len(texts)
        piece = tt.bytes[t] if t in tt.bytes else tt.text[t].encode()
        pending, pending_act = pending + piece, max(pending_act, a) if pending else a
        try:
            text = pending.decode()
        except UnicodeDecodeError:
            if len(pending) < 4:
                continue  # wait for the rest of the character
            text = pending.decode(errors="replace")
        texts.append(text)
        values.append(pending_act)
        pending = b""
    if pending:
        texts.append(pending.decode(errors="replace"))
        values.append(pending_act)
    return texts, values, min(new_centre, max(len(texts) - 1, 0))
