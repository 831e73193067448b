"""Run one task per row block, in-process or on Ray, and hand each block's result back as it finishes.

Metric code writes a *block task*: a module-level function ``task(start, stop, *arrays, **params)`` that
reads rows ``start:stop`` of its inputs (and whatever else of them it needs, read-only) and returns a
small result. A runner cuts ``range(n_rows)`` into blocks of ``block_size`` rows, runs the task once per
block and yields ``BlockResult``s; the caller merges them (writing disjoint rows, or merging states).

- ``LocalRunner``: plain numpy in this process, blocks in order. No Ray needed; used by tests and as the
  fallback when Ray is not initialised.
- ``RayRunner``: the big inputs go to the object store once (``ray.put``; tasks read them zero-copy), one
  Ray task per block, at most ``max_in_flight`` submitted at a time, results yielded in completion order
  (``ray.wait``) so merging overlaps computing.

Both record ``RunStats``: wall time, the summed time spent inside tasks and, on request, each task's peak
allocation (tracemalloc, which sees numpy buffers) so callers can report Ray's share of the wall time and
show that memory per task does not grow with N.
"""

from __future__ import annotations

import contextlib
import os
import time
import tracemalloc
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from embedeval.engine import kernels
from embedeval.engine.validate import check_block_size

BlockTask = Callable[..., Any]


def row_blocks(n_rows: int, block_size: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` pairs cutting ``range(n_rows)`` into blocks of ``block_size`` (last may be short)."""
    block_size = check_block_size(block_size)
    return [(s, min(s + block_size, n_rows)) for s in range(0, n_rows, block_size)]


@dataclass(frozen=True)
class TaskStats:
    """What one block task cost: seconds inside the task and, if measured, memory."""

    seconds: float
    peak_alloc_bytes: int = -1  # peak of memory allocated inside the task (tracemalloc); -1: not measured
    uss_bytes: int = -1  # the worker's private memory (psutil USS) when the task ended; -1: not measured


@dataclass
class RunStats:
    """Cumulative timing of a runner: wall time of ``map_blocks`` calls vs time spent inside tasks."""

    slots: int = 1  # tasks that can run at the same time
    wall_s: float = 0.0
    task_s: float = 0.0
    n_tasks: int = 0
    max_task_s: float = 0.0
    peak_alloc_bytes: int = -1
    peak_uss_bytes: int = -1

    def add_task(self, stats: TaskStats) -> None:
        self.task_s += stats.seconds
        self.n_tasks += 1
        self.max_task_s = max(self.max_task_s, stats.seconds)
        self.peak_alloc_bytes = max(self.peak_alloc_bytes, stats.peak_alloc_bytes)
        self.peak_uss_bytes = max(self.peak_uss_bytes, stats.uss_bytes)

    @property
    def overhead_share(self) -> float:
        """Share of the available task time (wall x slots) not spent inside tasks: scheduling, transfer,
        merging on the driver, idle slots. 0 for a perfectly busy pool."""
        capacity = self.wall_s * self.slots
        return max(0.0, 1.0 - self.task_s / capacity) if capacity > 0 else 0.0

    def summary(self) -> str:
        mib = 1024 * 1024
        mem = f", peak alloc/task {self.peak_alloc_bytes / mib:.1f} MiB" if self.peak_alloc_bytes >= 0 else ""
        return (f"{self.n_tasks} tasks on {self.slots} slot(s): wall {self.wall_s:.3f}s, in tasks "
                f"{self.task_s:.3f}s, overhead share {self.overhead_share:.1%}{mem}")


@dataclass(frozen=True)
class BlockResult:
    start: int
    stop: int
    value: Any


@dataclass(frozen=True)
class Shared:
    """An array placed once where tasks can read it (the object store for Ray, the array itself locally).

    Reuse it across ``map_blocks`` calls (e.g. the data matrix across k-means iterations) to avoid
    re-sending it.
    """

    handle: Any
    shape: tuple[int, ...]
    dtype: np.dtype


def run_block_task(task: BlockTask, start: int, stop: int, params: Mapping[str, Any], measure_memory: bool,
                   *arrays: np.ndarray) -> tuple[Any, TaskStats]:
    """Call ``task`` on one block and time it (the body of every task, local or remote)."""
    if measure_memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        value = task(start, stop, *arrays, **params)
        seconds = time.perf_counter() - t0
        peak = -1
        uss = -1
        if measure_memory:
            peak = tracemalloc.get_traced_memory()[1]
            uss = _process_uss()
    finally:
        if measure_memory:
            tracemalloc.stop()
    return value, TaskStats(seconds=seconds, peak_alloc_bytes=peak, uss_bytes=uss)


def _process_uss() -> int:
    try:
        import psutil
    except ImportError:  # psutil is optional; memory then comes from tracemalloc only
        return -1
    return int(psutil.Process(os.getpid()).memory_full_info().uss)


class TileRunner(ABC):
    """Runs a block task over the row blocks of a problem; see the module docstring."""

    def __init__(self, slots: int, measure_memory: bool) -> None:
        self.measure_memory = measure_memory
        self.stats = RunStats(slots=slots)

    def reset_stats(self) -> None:
        self.stats = RunStats(slots=self.stats.slots)

    @abstractmethod
    def put(self, array: np.ndarray) -> Shared:
        """Place ``array`` where tasks can read it; pass the result to ``map_blocks`` in ``arrays``."""

    @abstractmethod
    def map_calls(self, fn: Callable[..., Any], calls: Iterator[tuple[Any, ...]] | Sequence[tuple[Any, ...]],
                  params: Mapping[str, Any] | None = None) -> Iterator[tuple[int, Any]]:
        """Run ``fn(*call, **params)`` for every call; yield ``(call number, value)`` as calls finish.

        ``calls`` may be a lazy iterator: at most ``max_in_flight`` calls are submitted at once, so the
        driver never holds more than that many pending arguments or results. Each call is timed into
        ``stats`` like a block task.
        """

    def put_object(self, value: Any) -> Any:
        """Place a value once for many calls (Ray: an object ref; locally: the value itself)."""
        return value

    def place(self, source: Any) -> Any:
        """A block source every call can read: in-memory blocks go to the object store once (Ray)."""
        return source

    def map_blocks(self, task: BlockTask, n_rows: int, block_size: int,
                   arrays: Sequence[np.ndarray | Shared] = (),
                   params: Mapping[str, Any] | None = None) -> Iterator[BlockResult]:
        """Run ``task(start, stop, *arrays, **params)`` for every block of ``block_size`` rows of
        ``range(n_rows)``; yield results as tasks finish (order not guaranteed; ``start`` says which).

        ``arrays`` are read-only inside tasks. Plain arrays are placed for this call only; pass
        ``Shared`` handles from ``put`` to reuse a placement. ``params`` must be small (sent per task).
        """
        blocks = row_blocks(n_rows, block_size)
        handles = [(a if isinstance(a, Shared) else self.put(a)).handle for a in arrays]
        calls = ((task, start, stop, *handles) for start, stop in blocks)
        for i, value in self.map_calls(_call_block_task, calls, params):
            yield BlockResult(blocks[i][0], blocks[i][1], value)


def _call_block_task(task: BlockTask, start: int, stop: int, *arrays: Any, **params: Any) -> Any:
    """``map_blocks``' call: a block task is a call whose first two arguments are its row range."""
    return task(start, stop, *arrays, **params)


class LocalRunner(TileRunner):
    """Runs blocks one after another in this process.

    BLAS uses its own thread count unless ``blas_threads`` is set (1 reproduces a Ray task's float32
    GEMM bits exactly; results of the exact reductions do not depend on it).
    """

    def __init__(self, measure_memory: bool = False, blas_threads: int | None = None,
                 backend: "kernels.Backend | None" = None) -> None:
        super().__init__(slots=1, measure_memory=measure_memory)
        self.blas_threads = blas_threads
        self.backend = backend

    def put(self, array: np.ndarray) -> Shared:
        return Shared(handle=array, shape=array.shape, dtype=array.dtype)

    def map_calls(self, fn: Callable[..., Any], calls: Iterator[tuple[Any, ...]] | Sequence[tuple[Any, ...]],
                  params: Mapping[str, Any] | None = None) -> Iterator[tuple[int, Any]]:
        t0 = time.perf_counter()
        before = kernels.current()
        params = {**(params or {}), **({"_backend": self.backend} if self.backend is not None else {})}
        try:
            for i, call in enumerate(calls):
                with _blas_limit(self.blas_threads):
                    value, stats = run_call(fn, params, self.measure_memory, *call)
                self.stats.add_task(stats)
                yield i, value
        finally:
            kernels.use_backend(before)
            self.stats.wall_s += time.perf_counter() - t0


def run_call(fn: Callable[..., Any], params: Mapping[str, Any], measure_memory: bool,
             *call: Any) -> tuple[Any, TaskStats]:
    """Call ``fn(*call, **params)`` and time it (the body of every generic call, local or remote; the
    call's arguments travel as top-level task arguments, so Ray resolves object refs among them).
    ``params["_backend"]``, when given, selects the GEMM backend for the call (``engine.kernels``)."""
    params = dict(params)
    backend = params.pop("_backend", None)
    if backend is not None:
        kernels.use_backend(backend)
    return run_block_task(lambda _s, _e, *args, **kw: fn(*args, **kw), 0, 0, params, measure_memory, *call)


def _blas_limit(threads: int | None):  # noqa: ANN202 - a context manager
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


_REMOTE_CALL: Any = None


def _remote_call() -> Any:
    global _REMOTE_CALL
    if _REMOTE_CALL is None:
        import ray

        _REMOTE_CALL = ray.remote(run_call)
    return _REMOTE_CALL


class RayRunner(TileRunner):
    """One Ray task per block over a running Ray (``ray.init`` is the caller's job).

    ``num_cpus_per_task`` CPUs are reserved per task (Ray then limits the task's BLAS threads to that
    many); ``max_in_flight`` bounds submitted-but-unfinished tasks (default: twice the cluster's task
    slots) so the driver never holds more than that many pending results.
    """

    def __init__(self, num_cpus_per_task: float = 1.0, max_in_flight: int | None = None,
                 measure_memory: bool = False, num_gpus_per_task: float = 0.0,
                 backend: "kernels.Backend | None" = None) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayRunner needs a running Ray: call ray.init() first, or use LocalRunner")
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        slots = max(1, int(cpus // num_cpus_per_task))
        self.num_cpus_per_task = num_cpus_per_task
        self.num_gpus_per_task = num_gpus_per_task
        self.backend = backend
        if num_gpus_per_task > 0:  # one task per GPU share: the GPUs bound the slots
            slots = min(slots, max(1, int(float(ray.cluster_resources().get("GPU", 0)) // num_gpus_per_task)))
        self.max_in_flight = 2 * slots if max_in_flight is None else int(max_in_flight)
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1; got {max_in_flight}")
        super().__init__(slots=slots, measure_memory=measure_memory)

    def put(self, array: np.ndarray) -> Shared:
        import ray

        return Shared(handle=ray.put(array), shape=array.shape, dtype=array.dtype)

    def map_calls(self, fn: Callable[..., Any], calls: Iterator[tuple[Any, ...]] | Sequence[tuple[Any, ...]],
                  params: Mapping[str, Any] | None = None) -> Iterator[tuple[int, Any]]:
        import ray

        remote = _remote_call().options(num_cpus=self.num_cpus_per_task, num_gpus=self.num_gpus_per_task)
        params = {**(params or {}), **({"_backend": self.backend} if self.backend is not None else {})}
        pending: dict[Any, int] = {}
        todo = enumerate(calls)
        t0 = time.perf_counter()

        def submit_one() -> bool:
            nxt = next(todo, None)
            if nxt is None:
                return False
            pending[remote.remote(fn, params, self.measure_memory, *nxt[1])] = nxt[0]
            return True

        try:
            while len(pending) < self.max_in_flight and submit_one():
                pass
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready[0])
                value, stats = ray.get(ready[0])
                self.stats.add_task(stats)
                submit_one()
                yield i, value
        finally:
            self.stats.wall_s += time.perf_counter() - t0
            for ref in pending:
                ray.cancel(ref)

    def put_object(self, value: Any) -> Any:
        import ray

        return ray.put(value)

    def place(self, source: Any) -> Any:
        """ArrayBlocks -> RefBlocks (one object per block), recursively through selections and shifts."""
        import ray

        from embedeval.engine.sources import ArrayBlocks, Centred, RefBlocks, Selection

        if isinstance(source, ArrayBlocks):
            refs = [ray.put(np.ascontiguousarray(source.load(b))) for b in range(source.n_blocks)]
            return RefBlocks(refs, source.n, source.dim, source.offsets)
        if isinstance(source, Selection):
            placed = self.place(source.base)
            return source if placed is source.base else Selection(placed, source.rows)
        if isinstance(source, Centred):
            placed = self.place(source.base)
            return source if placed is source.base else Centred(placed, source.shift)
        return source


def default_runner() -> TileRunner:
    """Ray when it is initialised (the score job's case), else the in-process runner."""
    try:
        import ray
    except ImportError:  # ray is a dependency, but keep the numpy path importable without it
        return LocalRunner()
    return RayRunner() if ray.is_initialized() else LocalRunner()


def merge_in_block_order(results: Iterator[BlockResult], merge: Callable[[Any, Any], Any],
                         initial: Any) -> Any:
    """Fold block results with ``merge`` in ascending block order, whatever order they arrive in.

    States whose merge is not bitwise associative (float sums) then give the same bits on every runner;
    results that arrive early wait in a buffer (at most one small state per finished block).
    """
    buffered: dict[int, tuple[int, Any]] = {}
    state = initial
    expected = 0
    for result in results:
        buffered[result.start] = (result.stop, result.value)
        while expected in buffered:
            stop, value = buffered.pop(expected)
            state = merge(state, value)
            expected = stop
    if buffered:
        raise RuntimeError(f"blocks did not tile the rows: {len(buffered)} result(s) left unmerged")
    return state
