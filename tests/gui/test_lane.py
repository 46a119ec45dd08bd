"""The torch lane: one thread, most urgent first, generators in steps, breathe, stop, errors."""

from __future__ import annotations

import threading
import time

import pytest

from napari_medadv._qt.lane import FRAME, JOB, READOUTS, SSIM, TorchLane


@pytest.fixture
def lane():
    return TorchLane("test lane")


def _hold(lane: TorchLane) -> threading.Event:
    """Occupy the lane until the returned event is set (so tasks queue up behind it)."""
    release, started = threading.Event(), threading.Event()

    def block():
        started.set()
        release.wait(10)

    lane.submit(block, priority=FRAME)
    assert started.wait(10)
    return release


def test_every_task_runs_on_the_one_lane_thread_most_urgent_first(lane):
    order, threads = [], set()

    def note(name):
        order.append(name)
        threads.add(threading.current_thread().name)

    release = _hold(lane)
    tasks = [lane.submit(note, name, priority=p)
             for name, p in [("job", JOB), ("ssim", SSIM), ("frame", FRAME), ("readouts", READOUTS)]]
    release.set()
    for t in tasks:
        t.future.result(10)
    assert order == ["frame", "readouts", "ssim", "job"]
    assert threads == {"test lane"}


def test_generators_run_in_steps_and_more_urgent_work_goes_between(lane):
    order = []
    gate = threading.Event()

    def slow():
        for i in range(3):
            order.append(f"ssim {i}")
            if i == 0:
                gate.set()
                frame_queued.wait(10)
            yield
        return "ssim done"

    frame_queued = threading.Event()
    task = lane.submit(slow, priority=SSIM)
    assert gate.wait(10)
    frame = lane.submit(order.append, "frame", priority=FRAME)
    frame_queued.set()
    assert task.future.result(10) == "ssim done"
    frame.future.result(10)
    assert order == ["ssim 0", "frame", "ssim 1", "ssim 2"]


def test_same_priority_generators_take_turns(lane):
    order = []

    def gen(name):
        for i in range(2):
            order.append(f"{name}{i}")
            yield i

    release = _hold(lane)
    a = lane.submit(gen, "a", priority=JOB)
    b = lane.submit(gen, "b", priority=JOB)
    release.set()
    a.future.result(10), b.future.result(10)
    assert order == ["a0", "b0", "a1", "b1"]


def test_breathe_runs_more_urgent_work_inside_a_blocking_task(lane):
    order = []
    queued, started = threading.Event(), threading.Event()

    def blocking_job():
        order.append("job start")
        started.set()
        queued.wait(10)
        lane.breathe()  # what Job.report does from a core callback
        order.append("job end")
        return "job"

    task = lane.submit(blocking_job, priority=JOB)
    assert started.wait(10)
    frame = lane.submit(order.append, "frame", priority=FRAME)
    later = lane.submit(order.append, "other job", priority=JOB)
    queued.set()
    assert task.future.result(10) == "job"
    frame.future.result(10), later.future.result(10)
    assert order == ["job start", "frame", "job end", "other job"]  # only the more urgent task ran inline
    lane.breathe()  # off the lane: nothing to do, no error


def test_yields_reach_on_yield_stop_closes_the_generator_and_errors_reach_the_future(lane):
    seen, closed = [], threading.Event()
    stop = threading.Event()

    def gen():
        try:
            for i in range(1000):
                if i == 2:
                    stop.set()
                yield i
        finally:
            closed.set()

    task = lane.submit(gen, on_yield=seen.append, stop=stop)
    assert task.future.result(10) is None and closed.is_set()
    assert seen == [0, 1, 2]

    def fails():
        raise ValueError("broken model")

    with pytest.raises(ValueError, match="broken model"):
        lane.submit(fails).future.result(10)
    assert lane.call(lambda x: x + 1, 1) == 2  # the lane survived the failure


def test_a_failing_on_yield_fails_its_task_not_the_lane(lane):
    def gen():
        yield 1
        yield 2

    def broken(_):
        raise RuntimeError("relay gone")

    with pytest.raises(RuntimeError, match="relay gone"):
        lane.submit(gen, on_yield=broken).future.result(10)
    assert lane.call(lambda: "alive") == "alive"


def test_the_lane_lets_go_of_its_last_result(lane):
    """Waiting for the next task, the lane holds no finished task: its future's result (a
    BraTS-size outcome is 600 MB) goes once the caller has it."""
    import gc
    import weakref

    class Result:
        pass

    refs = []

    def make():
        r = Result()
        refs.append(weakref.ref(r))
        return r

    lane.submit(make).future.result()
    deadline = time.monotonic() + 10
    while refs[0]() is not None and time.monotonic() < deadline:  # the lane thread finishing its turn
        gc.collect()
        time.sleep(0.01)
    assert refs[0]() is None


def test_the_lane_gives_memory_back_once_idle_after_a_job(monkeypatch):
    """Once per job, and only once the lane has been idle a while after it: the trim holds the
    allocator's arena, and right after a job the Qt thread is putting its result on the layers."""
    from napari_medadv._qt import lane as lane_mod

    calls = []

    def give_back():  # other tests' lanes may still be waiting to give theirs back
        if threading.current_thread().name == "idle test lane":
            calls.append(time.monotonic())
        return False

    monkeypatch.setattr(lane_mod, "give_back", give_back)
    monkeypatch.setattr(lane_mod, "worth_giving_back", lambda **kw: True)  # memory is scarce: at once
    monkeypatch.setattr(lane_mod, "IDLE_TRIM_S", 0.3)
    lane = lane_mod.TorchLane("idle test lane")
    lane.submit(lambda: 1, priority=lane_mod.FRAME).future.result(timeout=10)
    time.sleep(0.5)
    assert calls == []  # no job, nothing to give back

    def job():
        yield 1
        yield 2
        return 3

    assert lane.submit(job).future.result(timeout=10) == 3
    done = time.monotonic()
    for _ in range(3):  # the result's readouts and frames keep the lane busy: not yet
        time.sleep(0.1)
        lane.call(lambda: None, priority=lane_mod.READOUTS)
    assert calls == []
    last = time.monotonic()
    deadline = last + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) == 1 and calls[0] - last >= 0.25 and calls[0] - done >= 0.5
    time.sleep(0.5)
    assert len(calls) == 1  # once per job (not after each of its steps, nor again while idle)


def test_the_lane_keeps_the_memory_a_while_when_the_system_has_plenty(monkeypatch):
    """A re-run soon after a job would fault the given-back pages in again (seconds at BraTS size):
    while memory is plentiful the lane gives it back only after a longer idle time, and at once
    when memory becomes scarce meanwhile."""
    from napari_medadv._qt import lane as lane_mod

    calls, asked, scarce = [], [], []

    def give_back():
        if threading.current_thread().name == "keep test lane":
            calls.append(time.monotonic())
        return False

    def worth_giving_back(free):
        if threading.current_thread().name == "keep test lane":
            asked.append(time.monotonic())
            assert free == 123  # the heap's free bytes, read once per idle spell
        return bool(scarce)

    heap_reads = []

    def heap_free_bytes():
        if threading.current_thread().name == "keep test lane":
            heap_reads.append(time.monotonic())
        return 123

    monkeypatch.setattr(lane_mod, "give_back", give_back)
    monkeypatch.setattr(lane_mod, "worth_giving_back", worth_giving_back)
    monkeypatch.setattr(lane_mod, "heap_free_bytes", heap_free_bytes)
    monkeypatch.setattr(lane_mod, "IDLE_TRIM_S", 0.2)
    monkeypatch.setattr(lane_mod, "IDLE_KEEP_S", 2.0)
    lane = lane_mod.TorchLane("keep test lane")
    lane.call(lambda: 1)  # a job
    done = time.monotonic()
    deadline = done + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert asked and asked[0] - done >= 0.15  # first looked at after the short idle time
    assert len(calls) == 1 and calls[0] - done >= 1.9  # given back only after the long one
    assert len(asked) >= 3 and len(heap_reads) == 1  # what is available looked at each time, the heap once
    lane.call(lambda: 2)  # a re-run: the clock starts again
    again = time.monotonic()
    time.sleep(0.5)
    assert len(calls) == 1 and asked[-1] > again
    scarce.append(True)  # another program takes the memory: given back at the next look
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) == 2 and calls[1] - again < 1.7  # not waiting for the long idle time
