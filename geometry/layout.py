"""2-D layouts of feature directions (UMAP, cosine, fixed seed) for the feature map and neighbourhoods."""

from __future__ import annotations

import warnings

import numpy as np

from geometry.options import GeometryError


def umap_2d(x: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, metric: str = "cosine",
            knn: tuple[np.ndarray, np.ndarray] | None = None, n_epochs: int | None = None) -> tuple[np.ndarray, dict]:
    """2-D UMAP of the rows of x (or of a precomputed kNN graph (indices, distances) over them, self first);
    returns the layout [n, 2] and the parameters used. A fixed seed gives the same layout every time."""
    import umap

    n = len(x)
    if n < 4:
        raise GeometryError(f"a 2-D layout needs at least 4 points, got {n}")
    k = min(n_neighbors, n - 1)
    params = {"method": "umap", "umap_version": umap.__version__, "n_neighbors": k, "min_dist": min_dist,
              "metric": metric, "random_state": seed, "n_epochs": n_epochs, "init": "spectral",
              "precomputed_knn": knn is not None}
    kw = {}
    if knn is not None:
        kw["precomputed_knn"] = (knn[0][:, :k], knn[1][:, :k], None)
    reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, metric=metric, random_state=seed,
                        n_epochs=n_epochs, **kw)
    with warnings.catch_warnings():  # seed => no parallelism; small inputs => spectral-init notes
        warnings.simplefilter("ignore")
        xy = reducer.fit_transform(np.asarray(x, np.float32))
    return np.asarray(xy, np.float64), params
