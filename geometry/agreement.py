"""How much two dictionaries agree, as one-to-one matchings of their rows (Paulo & Belrose, arXiv
2501.16615; Song et al., arXiv 2505.20254).

The optimal one-to-one matching pairs every live row of the smaller side with a distinct row of the
other, maximising the summed cosine. From it:
- PW-MCC: the mean cosine of the matched pairs;
- the shared fraction: the share of the smaller side's live rows whose matched partner is at cosine
  >= tau.

Exact where the cosine matrix fits (`dense_limit` entries): scipy's dense `linear_sum_assignment`.
Larger (the Llama Scope shape, 32K x 128K) the matching is solved on the exact top-k candidate graph
(`matching.candidate_edges`), each row with a private way out at cosine -1 so that a full matching
always exists. Every candidate-graph matching is also a full matching, so its PW-MCC is a lower bound on
the optimum, and `pw_mcc_upper` (each row's best cosine, one-to-one or not) is an upper bound; both are
reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from geometry.matching import candidate_edges
from geometry.options import GeometryError
from geometry.similarity import Neighbors

DENSE_LIMIT = 10**8  # cosine-matrix entries (800 MB as float64) solved exactly


@dataclass
class Agreement:
    fraction: float  # smaller side's live rows matched at cos >= tau, over their number
    pw_mcc: float  # mean cosine of the one-to-one matching of all of them
    pw_mcc_upper: float  # mean of each of their best cosines: no one-to-one matching does better
    tau: float
    n_shared: int
    n_rows: int  # live rows of the smaller side
    exact: bool  # dense optimum (True) or the candidate graph's (a lower bound)

    def as_dict(self) -> dict:
        return asdict(self)


def agreement(a: torch.Tensor, b: torch.Tensor, tau: float = 0.7, nb: Neighbors | None = None,
              dense_limit: int = DENSE_LIMIT) -> Agreement:
    """a: [n_a, d], b: [n_b, d] unit rows (live features only); nb: their top-k neighbours both ways
    (needed only when n_a * n_b > dense_limit)."""
    flip = a.shape[0] > b.shape[0]
    small, large = (b, a) if flip else (a, b)
    if small.shape[0] * large.shape[0] <= dense_limit:
        cos = (small.double() @ large.double().T).numpy()
        rows, cols = linear_sum_assignment(cos, maximize=True)
        matched, best = cos[rows, cols], cos.max(1)
        exact = True
    else:
        if nb is None:
            raise GeometryError("agreement above dense_limit needs the top-k neighbours (nb)")
        matched, best = _sparse_matching(nb.swapped() if flip else nb, small.shape[0], large.shape[0])
        exact = False
    shared = int((matched >= tau).sum())
    return Agreement(shared / len(matched), float(matched.mean()), float(best.mean()), tau, shared, len(matched), exact)


def _sparse_matching(nb: Neighbors, n_small: int, n_large: int) -> tuple[np.ndarray, np.ndarray]:
    """(matched cosine of every small-side row, its best cosine) on the candidate graph of `nb` (small
    side first). Costs 2 - cos on candidate edges and 3 (cos -1) on each row's private dummy column: all
    positive, as the solver needs."""
    ea, eb, ec = candidate_edges(nb)
    rows = np.concatenate([ea, np.arange(n_small)])
    cols = np.concatenate([eb, n_large + np.arange(n_small)])
    cost = np.concatenate([2.0 - ec.astype(np.float64), np.full(n_small, 3.0)])
    match = min_weight_full_bipartite_matching(csr_matrix((cost, (rows, cols)), shape=(n_small, n_large + n_small)))[1]
    lookup = dict(zip((ea.astype(np.int64) * n_large + eb).tolist(), ec.tolist()))
    matched = np.array([lookup.get(i * n_large + int(j), -1.0) if j < n_large else -1.0 for i, j in enumerate(match)])
    return matched, nb.a_to_b.values[:, 0].double().numpy()
