"""Parents, children, families and one-to-one assignment, all read off the top-k neighbour lists
(`pair_links`: each feature's nearest features in another SAE, its parent and children there).

Indices here are rows of the two (live) matrices given to `top_k_cosine`; `compare` maps them back to
feature ids. An edge (a, b) is in the candidate graph when b is among a's top-k or a among b's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching

from geometry.similarity import Neighbors, top_k_cosine

FAMILY_TYPES = ("1:1", "split", "merge", "tangled", "novel", "lost")


def candidate_edges(nb: Neighbors, min_cos: float = -np.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (a, b, cos) pairs from both neighbour lists with cos >= min_cos."""
    n_b = nb.b_to_a.values.shape[0]
    a1 = np.repeat(np.arange(nb.a_to_b.values.shape[0]), nb.a_to_b.values.shape[1])
    b1, c1 = nb.a_to_b.indices.numpy().ravel(), nb.a_to_b.values.numpy().ravel()
    b2 = np.repeat(np.arange(n_b), nb.b_to_a.values.shape[1])
    a2, c2 = nb.b_to_a.indices.numpy().ravel(), nb.b_to_a.values.numpy().ravel()
    a, b, c = np.concatenate([a1, a2]), np.concatenate([b1, b2]), np.concatenate([c1, c2])
    keep = (a >= 0) & (b >= 0) & (c >= min_cos)
    a, b, c = a[keep], b[keep], c[keep]
    _, first = np.unique(a.astype(np.int64) * n_b + b, return_index=True)
    return a[first], b[first], c[first]


def mutual_nearest(nb: Neighbors) -> np.ndarray:
    """[n_b] bool: B row j's best A row has j as its best B row."""
    best_a = nb.b_to_a.indices[:, 0].numpy()
    best_b_of = nb.a_to_b.indices[:, 0].numpy()
    ok = best_a >= 0
    out = np.zeros(len(best_a), bool)
    out[ok] = best_b_of[best_a[ok]] == np.arange(len(best_a))[ok]
    return out


def saturated(top_values, cut: float) -> int:
    """Rows whose k-th neighbour still reaches the cut: their edge lists may be truncated (raise k)."""
    return int((top_values[:, -1] >= cut).sum()) if top_values.shape[1] else 0


def families(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Connected components of the bipartite graph with edges (a, b); returns family ids per A row and
    per B row and a table (family, type, n_a, n_b), typed 1:1, split (1:n), merge (n:1), tangled (n:m),
    novel (0:1), lost (1:0)."""
    graph = coo_matrix((np.ones(len(a)), (a, n_a + b)), shape=(n_a + n_b, n_a + n_b))
    _, label = connected_components(graph, directed=False)
    # Renumber families by first appearance: A rows first, then B rows.
    _, first, label = np.unique(label, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    label = order[label]
    count_a = np.bincount(label[:n_a], minlength=label.max() + 1)
    count_b = np.bincount(label[n_a:], minlength=label.max() + 1)
    kind = np.select(
        [(count_a == 1) & (count_b == 1), (count_a == 1) & (count_b > 1), (count_a > 1) & (count_b == 1),
         (count_a > 1) & (count_b > 1), count_a == 0],
        ["1:1", "split", "merge", "tangled", "novel"],
        "lost",
    )
    table = pd.DataFrame({"family": np.arange(len(kind)), "type": kind, "n_a": count_a, "n_b": count_b})
    return label[:n_a], label[n_a:], table


def assignment(a, b, cos, n_a: int, n_b: int, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of A rows to B rows maximising the summed cosine, where leaving a row
    unmatched is worth tau: a sparse min-cost full matching with cost 2 - cos on candidate edges and a
    private dummy column per A row at cost 2 - tau (all costs >= 1 - tau > 0, as the solver needs).
    Only edges with cos > tau can be chosen, so only those are passed. Returns matched (a, b, cos)."""
    keep = cos > tau
    a, b, cos = a[keep], b[keep], cos[keep]
    rows = np.concatenate([a, np.arange(n_a)])
    cols = np.concatenate([b, n_b + np.arange(n_a)])
    cost = np.concatenate([2.0 - cos.astype(np.float64), np.full(n_a, 2.0 - tau)])
    match = min_weight_full_bipartite_matching(csr_matrix((cost, (rows, cols)), shape=(n_a, n_b + n_a)))[1]
    real = np.flatnonzero(match < n_b)
    keys = a.astype(np.int64) * n_b + b  # look the matched pairs' cosines up among the edges
    order = np.argsort(keys)
    at = order[np.searchsorted(keys[order], real.astype(np.int64) * n_b + match[real])]
    return real, match[real], cos[at].astype(np.float32)


@dataclass
class CrossLinks:
    """One SAE's features against another's decoder rows: top matches, and the parent / children at `cut`."""

    match_ids: np.ndarray  # [F, k] nearest features of the other SAE, best first
    match_cos: np.ndarray  # [F, k]
    parent: np.ndarray  # [F] the other (narrower) SAE's best match where cos >= cut, else -1
    children: list[list[tuple[int, float]]]  # per feature: the other (wider) SAE's features whose best match it is


def pair_links(W_a: torch.Tensor, W_b: torch.Tensor, cut: float, k: int = 5) -> tuple[CrossLinks, CrossLinks]:
    """A's links into B and B's into A, from one exact top-k pass both ways. The narrower SAE's features
    have children (the wider SAE's features whose best match they are, at cos >= cut), the wider one's a
    parent (their best match, at cos >= cut); at equal widths neither."""
    nb = top_k_cosine(W_a, W_b, k=min(k, W_a.shape[0], W_b.shape[0]))
    return (_links(nb.a_to_b, nb.b_to_a, W_a.shape[0], W_b.shape[0], cut),
            _links(nb.b_to_a, nb.a_to_b, W_b.shape[0], W_a.shape[0], cut))


def _links(mine, theirs, F: int, G: int, cut: float) -> CrossLinks:
    idx, cos = mine.indices.numpy(), mine.values.numpy()
    parent = np.where(cos[:, 0] >= cut, idx[:, 0], -1) if G < F else np.full(F, -1)
    children: list[list[tuple[int, float]]] = [[] for _ in range(F)]
    if G > F:
        best, best_cos = theirs.indices.numpy()[:, 0], theirs.values.numpy()[:, 0]
        for j in np.flatnonzero(best_cos >= cut)[np.argsort(-best_cos[best_cos >= cut], kind="stable")]:
            children[best[j]].append((int(j), float(best_cos[j])))
    return CrossLinks(idx, cos, parent, children)
