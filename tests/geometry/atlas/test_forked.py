"""geometry.atlas.forked: a map over forked workers that inherit closures and memory."""

from __future__ import annotations

import os

import numpy as np
import pytest

from geometry.atlas.forked import forked_map


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_order_from_a_closure(workers):
    table = np.arange(1000) ** 2  # in the parent's memory, read by the workers

    with forked_map(lambda i: (int(table[i]), os.getpid()), range(0, 1000, 37), workers) as results:
        done_meanwhile = sum(range(100))  # the caller works while the workers run
        got = list(results)
    assert done_meanwhile == 4950
    assert [v for v, _ in got] == [i * i for i in range(0, 1000, 37)]
    pids = {p for _, p in got}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)


def test_an_error_in_a_worker_reaches_the_caller():
    def fail(i):
        if i == 3:
            raise ValueError("item 3")
        return i

    with pytest.raises(ValueError, match="item 3"), forked_map(fail, range(6), 2) as results:
        list(results)
