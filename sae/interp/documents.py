"""The documents behind a stream of ordinary-token activations: their order, and for every chunk of
activations the documents, token ids and positions it came from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sae.data.text import TokenBatcher, iter_documents
from sae.errors import SAEError


@dataclass
class Rows:
    """The documents behind one chunk of ordinary-token activations."""

    order: np.ndarray  # [R] each row's place in the document stream
    docs: np.ndarray  # [R] its document index in the source
    ids: np.ndarray  # [R, T] token ids, -1 at special positions and padding
    n_tokens: np.ndarray  # [R] ordinary tokens per row
    tok_row: np.ndarray  # [n] row of every ordinary token, in the order of the activations
    tok_pos: np.ndarray  # [n] its position in the row


def ordered_documents(dataset: Any, shuffle: bool, seed: int) -> Iterator[tuple[int, str, str]]:
    """(doc index, title, text) in stream order: corpus order, or with `shuffle` a seeded permutation of
    the documents (read into memory), so that a token budget samples the whole corpus, not its first titles."""
    docs = iter_documents(dataset)
    if not shuffle:
        return ((i, title, text) for i, (title, text) in enumerate(docs))
    docs = list(docs)
    return ((int(i), *docs[i]) for i in np.random.default_rng(seed).permutation(len(docs)))


def document_rows(docs: Iterator[tuple[int, tuple[int, str, str]]], batcher: TokenBatcher,
                  titles: dict[int, str]) -> Iterator[tuple]:
    """(place in the stream, doc index, ids with -1 at special positions, ordinary positions) per document,
    tokenised as the stream does."""
    special = batcher.special.numpy()
    for place, (i, title, text) in docs:
        ids = np.asarray(batcher.encode(text, batcher.context), np.int64)
        ordinary = ~np.isin(ids, special)
        if title:
            titles[i] = title
        yield place, i, np.where(ordinary, ids, -1), np.flatnonzero(ordinary)


def next_rows(rows: Iterator, n: int) -> Rows:
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
    return Rows(np.array(order, np.int64), np.array(docs, np.int64), mat, counts, np.repeat(np.arange(len(ids)), counts),
                 np.concatenate(pos) if pos else np.zeros(0, np.int64))
