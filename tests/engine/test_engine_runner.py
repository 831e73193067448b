"""Runners: blocks cover the rows exactly once, results merge the same on Ray and in-process."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedeval.engine.runner import BlockResult, LocalRunner, RayRunner, merge_in_block_order, row_blocks
from embedeval.engine.sums import PearsonSums


@pytest.fixture(autouse=True)
def _ship_this_module_by_value() -> None:
    """Ray workers cannot import test modules: send this module's task functions by value."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def sum_rows_task(start: int, stop: int, x: np.ndarray, *, scale: float) -> float:
    return float(x[start:stop].sum()) * scale


def fail_task(start: int, stop: int, x: np.ndarray) -> None:
    raise ValueError(f"bad block {start}")


@pytest.mark.parametrize("n,b", [(0, 5), (1, 5), (97, 10), (97, 97), (97, 200), (100, 10)])
def test_row_blocks_cover_rows_once(n: int, b: int) -> None:
    blocks = row_blocks(n, b)
    covered = np.concatenate([np.arange(s, e) for s, e in blocks]) if blocks else np.zeros(0)
    assert np.array_equal(covered, np.arange(n))
    assert all(0 < e - s <= b for s, e in blocks)


def test_row_blocks_rejects_bad_block_size() -> None:
    with pytest.raises(ValueError, match="block_size"):
        row_blocks(10, 0)


def test_local_runner_runs_every_block_in_order_and_times_them() -> None:
    x = np.arange(97, dtype=np.float64)
    r = LocalRunner(measure_memory=True)
    results = list(r.map_blocks(sum_rows_task, 97, 10, [x], {"scale": 2.0}))
    assert [res.start for res in results] == list(range(0, 97, 10))
    assert sum(res.value for res in results) == 2.0 * x.sum()
    assert r.stats.n_tasks == 10 and r.stats.wall_s >= r.stats.task_s > 0
    assert r.stats.peak_alloc_bytes >= 0
    assert 0.0 <= r.stats.overhead_share <= 1.0


@pytest.mark.slow
def test_ray_runner_matches_local_and_bounds_in_flight(ray_local: None) -> None:
    x = np.random.default_rng(0).standard_normal(1000)
    ray_runner = RayRunner(max_in_flight=1, measure_memory=True)
    shared = ray_runner.put(x)
    for _ in range(2):  # the shared placement is reused across calls
        got = {res.start: res.value for res in ray_runner.map_blocks(sum_rows_task, 1000, 64, [shared], {"scale": 1.0})}
        want = {res.start: res.value for res in LocalRunner().map_blocks(sum_rows_task, 1000, 64, [x], {"scale": 1.0})}
        assert got == want
    assert ray_runner.stats.n_tasks == 2 * 16
    assert ray_runner.stats.peak_alloc_bytes >= 0
    assert "tasks on" in ray_runner.stats.summary()


@pytest.mark.slow
def test_ray_runner_surfaces_task_errors(ray_local: None) -> None:
    with pytest.raises(Exception, match="bad block"):
        list(RayRunner().map_blocks(fail_task, 10, 5, [np.zeros(10)]))


def test_local_runner_surfaces_task_errors() -> None:
    with pytest.raises(ValueError, match="bad block 0"):
        list(LocalRunner().map_blocks(fail_task, 10, 5, [np.zeros(10)]))


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(9))), st.integers(0, 2**31 - 1))
def test_merge_in_block_order_is_independent_of_arrival_order(order: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(90) * 10.0 ** rng.integers(-8, 8, 90)
    y = rng.standard_normal(90)
    blocks = [BlockResult(s, s + 10, PearsonSums.from_values(x[s:s + 10], y[s:s + 10])) for s in range(0, 90, 10)]
    in_order = merge_in_block_order(iter(blocks), PearsonSums.merge, PearsonSums.zeros())
    shuffled = merge_in_block_order(iter([blocks[i] for i in order]), PearsonSums.merge, PearsonSums.zeros())
    assert in_order == shuffled  # bit for bit


def test_merge_in_block_order_detects_gaps() -> None:
    with pytest.raises(RuntimeError, match="unmerged"):
        merge_in_block_order(iter([BlockResult(10, 20, 1)]), lambda a, b: a + b, 0)
