"""A map over forked worker processes: the workers inherit the parent's memory (the SAEs' arrays, the
contexts, closures), so nothing but the items and the results is pickled."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

_FN: Callable[[Any], Any] | None = None  # what the workers of the running forked_map call


def _call(item: Any) -> Any:
    return _FN(item)


@contextmanager
def forked_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int | None = None) -> Iterator[Iterator[Any]]:
    """Every item submitted to `workers` forked processes (default: one per CPU) on entry; yields the
    iterator of `fn(item)` in order, so the caller can work meanwhile. `fn` may be a closure. With one
    worker, or where fork does not exist, the items are mapped lazily in this process. Not reentrant."""
    global _FN
    items = list(items)
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        yield map(fn, items)
        return
    _FN = fn
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            yield pool.map(_call, items)
    finally:
        _FN = None
