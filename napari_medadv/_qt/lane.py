"""The torch lane: one thread for all of the viewer's PyTorch work, most urgent first.

Why one thread. PyTorch's CPU build parallelises with OpenMP, and libgomp keeps one team of
worker threads per thread that ever ran a parallel region. Once the teams together hold more
threads than there are cores, libgomp throttles its spin-waits for *every* team, and each small
op then pays for waking its workers: ``benchmarks/bench_threads.py`` measured a live-ε update at
16.7 ms alone and 30-31 ms (in the first thread too) once a second thread had run one parallel
op. The viewer used to run torch from napari's worker pool (preparation, dock runs) and three
latest-value-wins threads (images, readouts, SSIM); now they all hand their work to this thread,
so there is one team, as in the core benchmarks.

What one thread must not do is make a slider move wait behind a long job, so the lane runs
tasks by priority (:data:`FRAME` < :data:`READOUTS` < :data:`SSIM` < :data:`JOB`) and in steps:

- a task whose function returns a generator is run one ``next`` at a time; between two steps
  the lane takes any more urgent task first, and same-priority generators take turns;
- a task that blocks for long (a core call with a progress callback) calls :func:`breathe` from
  that callback: the more urgent pending tasks run there, inline, on the same thread.

Nothing here imports Qt: results come back as :class:`concurrent.futures.Future` objects, and
the callers (:class:`~napari_medadv._qt.workers.Job`, ``LatestWins``) carry them to the Qt thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import GeneratorType

from napari_medadv.core.allocator import give_back, heap_free_bytes, worth_giving_back

#: priorities, most urgent first
FRAME, READOUTS, SSIM, JOB = 0, 1, 2, 3
#: seconds the lane waits, idle, after a job before it gives the freed memory back (see _loop)
IDLE_TRIM_S = 1.0
#: ... and how long it keeps that memory for the next job while the system has plenty available
#: (``core.allocator.worth_giving_back``)
IDLE_KEEP_S = 30.0


class Task:
    """One piece of lane work: ``future`` gets the function's (or generator's) return value;
    ``on_yield`` (lane thread) gets each value a generator yields; once ``stop`` is set the
    generator is closed at its next step and the future resolves to None."""

    __slots__ = ("fn", "args", "kwargs", "priority", "future", "on_yield", "stop", "gen")

    def __init__(self, fn: Callable, args, kwargs, priority: int, on_yield: Callable | None,
                 stop: threading.Event | None):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.priority = priority
        self.future: Future = Future()
        self.on_yield = on_yield
        self.stop = stop
        self.gen: GeneratorType | None = None

    def step(self) -> bool:
        """Run one step; True when the task has more steps."""
        if self.future.done():
            return False
        try:
            if self.stop is not None and self.stop.is_set():
                if self.gen is not None:
                    self.gen.close()
                self.future.set_result(None)
                return False
            if self.gen is None:
                out = self.fn(*self.args, **self.kwargs)
                if not isinstance(out, GeneratorType):
                    self.future.set_result(out)
                    return False
                self.gen = out
            item = next(self.gen)
            if self.on_yield is not None:
                self.on_yield(item)
        except StopIteration as stop:
            self.future.set_result(stop.value)
            return False
        except BaseException as exc:  # noqa: BLE001 — carried to the caller through the future
            if self.gen is not None:
                self.gen.close()
            self.future.set_exception(exc)
            return False
        return True


class TorchLane:
    """A daemon thread running :class:`Task` steps, most urgent (lowest priority number) first."""

    def __init__(self, name: str = "medadv torch"):
        self.name = name
        self._cv = threading.Condition()
        self._heap: list[tuple[int, int, Task]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._running: list[int] = []  # priorities of the tasks running now (nested by breathe)

    def submit(self, fn: Callable, *args, priority: int = JOB, on_yield: Callable | None = None,
               stop: threading.Event | None = None, **kwargs) -> Task:
        task = Task(fn, args, kwargs, priority, on_yield, stop)
        with self._cv:
            self._push(task)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cv.notify()
        return task

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the lane, waited for (inline when already on it)."""
        if self.on_lane():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).future.result()

    def on_lane(self) -> bool:
        return threading.current_thread() is self._thread

    def breathe(self) -> None:
        """From inside a long lane task: run the pending tasks more urgent than it, here and now.

        A no-op off the lane, so core callbacks may call it wherever they run."""
        if not self.on_lane() or not self._running:
            return
        limit = self._running[-1]
        while True:
            with self._cv:
                if not self._heap or self._heap[0][0] >= limit:
                    return
                task = heapq.heappop(self._heap)[2]
            self._run_step(task)

    @staticmethod
    def _worth_giving_back(free: int | None) -> bool:
        try:
            return worth_giving_back(free=free)
        except Exception:  # noqa: BLE001 - the lane must outlive an unreadable /proc: give it back
            return True

    def _push(self, task: Task) -> None:
        heapq.heappush(self._heap, (task.priority, next(self._seq), task))

    def _run_step(self, task: Task) -> None:
        self._running.append(task.priority)
        try:
            more = task.step()
        finally:
            self._running.pop()
        if more:
            with self._cv:
                self._push(task)  # behind the tasks of its priority already waiting: they take turns

    def _next(self, idle_s: float | None) -> Task | None:
        """The most urgent task, waited for; None once the lane has been idle for ``idle_s``
        seconds (None: wait as long as it takes)."""
        with self._cv:
            while not self._heap:
                if idle_s is None:
                    self._cv.wait()
                elif not self._cv.wait(idle_s) and not self._heap:
                    return None
            return heapq.heappop(self._heap)[2]

    def _loop(self) -> None:
        idle_s = None  # once a job is over: how long to stay idle before the heap is looked at
        kept, free = 0.0, None  # seconds idle since then; the heap's free bytes then
        while True:
            task = self._next(idle_s)
            if task is None:
                # a job's temporaries were freed: with the heap set up (core.allocator) their
                # pages go back now. Not right after the job: malloc_trim holds the allocator's one
                # arena for 0.1-0.25 s at BraTS size, and the Qt thread, putting the result on the
                # layers then, would wait for every allocation (a 134 ms stall, measured). And only
                # once memory is scarce or the lane has been idle a while: a re-run would fault the
                # pages in again (seconds at BraTS size). What the system has available is read
                # again every IDLE_TRIM_S (another program may take it meanwhile); the heap's free
                # bytes once per job (mallinfo2 walks the free lists holding that lock: 38 ms for
                # 100 000 free blocks; the small tasks between hardly change them)
                kept += idle_s
                if kept < IDLE_KEEP_S and not self._worth_giving_back(free := heap_free_or(free)):
                    continue
                give_back()
                idle_s, free = None, None
                continue
            self._run_step(task)
            kept = 0.0
            if task.priority == JOB and task.future.done():
                idle_s, free = IDLE_TRIM_S, None
            # not kept while waiting for the next one: a finished task's future holds its result
            # (a BraTS-size outcome is 600 MB), which would outlive even the viewer it was for
            task = None


def heap_free_or(known: int | None) -> int | None:
    """The heap's free bytes: ``known`` when already read this idle spell, else read now (None when
    they cannot be read: then the memory goes back)."""
    if known is not None:
        return known
    try:
        return heap_free_bytes()
    except Exception:  # noqa: BLE001 - as above
        return None


#: the viewer's one lane (a process has one OpenMP runtime, so one lane serves every viewer)
LANE = TorchLane()
