"""Running core work off the Qt thread: napari workers, a progress bridge and latest-value-wins.

Both run their functions on the torch lane (:mod:`~napari_medadv._qt.lane`), the viewer's one
thread for PyTorch work; a :class:`Job`'s napari worker only relays its progress and result."""

from __future__ import annotations

import functools
import inspect
import queue
import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QObject, Signal

from napari_medadv.core.errors import MedadvError
from napari_medadv.core.errors import internal_error_line, write_error_log

from .lane import FRAME, JOB, LANE

_NOTHING = object()


def is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


#: what each core remedy (``MedadvError.fix``) is in the docks
GUI_FIXES = {
    "trust_code": " — tick 'trust model code' in the Model dock",
    "device_cpu": " — choose device 'cpu' in the Model dock",
    "weights": " — fill in 'weights' in the Model dock",
    "untargeted": " — set the target to 'none'",
    "channels": " — give the image channels in the model's input order under 'channels' in the Model dock",
}


def report_error(exc: BaseException, what: str, on_oom: Callable[[], None] | None = None) -> None:
    """A worker error as a napari notification (the viewer and the inputs stay as they were).

    A GPU out-of-memory error offers the CPU: with ``on_oom`` the notification has a
    "Use the CPU" button that calls it."""
    if is_out_of_memory(exc):
        msg = f"{what}: the GPU ran out of memory. Move the model to the CPU and press Run again?"
        if on_oom is None:
            show_warning(msg + " (Model dock: device 'cpu', Load)")
            return
        from napari.utils.notifications import Notification, notification_manager

        notification_manager.dispatch(Notification(msg, severity="warning",
                                                   actions=[("Use the CPU", lambda *_: on_oom())]))
        return
    if isinstance(exc, (MedadvError, ValueError)):
        hint = GUI_FIXES.get(getattr(exc, "fix", None), "")
        show_error(f"{what} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}{hint}")
        return
    # anything else is a bug (ours or the model's): one line, the traceback in a log file
    show_error(f"{what} failed: {internal_error_line(exc, write_error_log(exc, f'napari-medadv: {what}'))}")


class _Failed:
    """An exception raised by a :class:`Job`'s function, carried to the Qt thread as its return value.

    Not an Exception subclass: superqt re-raises a returned exception into ``errored``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


def _failures_returned(func: Callable) -> Callable:
    """``func`` with an exception it raises returned as :class:`_Failed` instead.

    napari's ``create_worker`` connects ``errored`` (which carries the exception) to a
    ``partial(lambda task_status_id, function: ...)`` that takes no argument of its own. PyQt
    drops the extra argument; PySide6 passes it, so every failed job also raised ``TypeError:
    <lambda>() takes 2 positional arguments but 3 were given`` in the Qt event loop (an extra
    error notification in napari, a failed GUI test). A failure that never reaches ``errored``
    behaves the same under every binding."""
    if inspect.isgeneratorfunction(func):
        @functools.wraps(func)
        def gen(*args, **kwargs):
            try:
                return (yield from func(*args, **kwargs))
            except Exception as exc:
                return _Failed(exc)

        return gen

    @functools.wraps(func)
    def call(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            return _Failed(exc)

    return call


_DONE = object()


def on_lane(func: Callable, stop: threading.Event, priority: int = JOB) -> Callable:
    """A generator function for a napari worker that runs ``func`` on the torch lane.

    The worker thread only waits: it yields what ``func`` (a generator function, or a plain one)
    yields on the lane and returns its return value (or raises its exception). Once ``stop`` is
    set the lane closes ``func``'s generator at its next step."""

    @functools.wraps(func)
    def relay(*args, **kwargs):
        items: queue.SimpleQueue = queue.SimpleQueue()
        task = LANE.submit(func, *args, priority=priority, on_yield=items.put, stop=stop, **kwargs)
        task.future.add_done_callback(lambda _: items.put(_DONE))
        try:
            while (item := items.get()) is not _DONE:
                yield item
        finally:  # the worker was quit: the lane stops the task at its next step
            if not task.future.done():
                stop.set()
        return task.future.result()

    del relay.__wrapped__  # a generator function in its own right (inspect must not unwrap to func)
    return relay


class _NoActivity:
    """What :class:`Job` calls on its progress bar, for a job whose dock shows its own progress.

    napari's ``progress`` animates an activity spinner in the status bar for as long as one is
    open; under software OpenGL (Xvfb, remote desktops, VMs) each spinner frame re-composites the
    whole window, which took 20-25 % of the CPU from a 20 s Attack-dock run on 2 cores."""

    def __init__(self, total: int = 0, desc: str = ""):
        self.total, self.n, self.desc = total, 0, desc

    def refresh(self) -> None:
        pass

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        pass


class Job:
    """A napari generator worker with a progress bar in the activity dock and a Cancel.

    ``func`` is a generator function yielding ``(done, total, payload)``; ``on_yield`` gets the
    payload, ``on_done`` the generator's return value (not called when cancelled or failed:
    a Cancel pressed while the generator was returning still counts as a cancel, so a
    cancelled job never touches the layers).

    ``hooks=True`` also passes ``should_stop`` (true once Cancel is pressed) and ``report(done,
    total, payload)`` (progress from inside a blocking core call, thread-safe) as keyword
    arguments, for core functions that take ``callback``/``should_stop`` rather than yield.

    ``activity=False``: no bar in napari's activity dock (nor its spinner) — for jobs whose dock
    shows the progress itself (:class:`_NoActivity`).
    """

    def __init__(self, func: Callable, *args, desc: str, on_yield: Callable | None = None,
                 on_done: Callable | None = None, on_finish: Callable | None = None,
                 on_cancel: Callable | None = None, on_oom: Callable | None = None, total: int = 0,
                 hooks: bool = False, activity: bool = True, **kwargs):
        self.desc = desc
        self.pbar = progress(total=total, desc=desc) if activity else _NoActivity(total, desc)
        self.cancelled = False
        self.finished = False
        self._stop = threading.Event()
        self._on_done = on_done
        self._on_cancel = on_cancel
        self._on_oom = on_oom
        self._cancel_reported = False
        if hooks:
            kwargs["should_stop"] = self._stop.is_set
            kwargs["report"] = self.report
        self.worker = create_worker(_failures_returned(on_lane(func, self._stop)), *args, _start_thread=False,
                                    _ignore_errors=True, **kwargs)
        self._on_yield = on_yield
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.aborted.connect(self._aborted)
        # on_finish runs inside _finished, not as a second connection: a signal from the worker
        # thread reaches each connection as its own queued event, so between the two the job could
        # already say it is not running while the dock had not yet re-enabled its buttons
        self._on_finish = on_finish
        self.worker.finished.connect(self._finished)

    def start(self) -> Job:
        self.worker.start()
        return self

    def cancel(self) -> None:
        self.cancelled = True
        self._stop.set()
        self.worker.quit()

    def report(self, done: int, total: int, payload=None) -> None:
        """Progress from inside a blocking core call (queued to Qt); the more urgent lane work
        (a live-ε frame) runs here meanwhile."""
        self.worker.yielded.emit((done, total, payload))
        LANE.breathe()

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the worker has finished (returned, failed or cancelled)."""
        return not self.finished

    def _yielded(self, item) -> None:
        done, total, _ = item
        if total and self.pbar.total != total:
            self.pbar.total = total
        self.pbar.n = min(int(done), int(total or done))
        self.pbar.refresh()
        if self._on_yield is not None:
            _unless_deleted(self._on_yield, item[2])

    def _errored(self, exc) -> None:
        report_error(exc, self.desc, self._on_oom)

    def _returned(self, value) -> None:
        if isinstance(value, _Failed):
            report_error(value.exc, self.desc, self._on_oom)
        elif self.cancelled:  # cancelled while returning: drop the result, like an abort
            self._aborted()
        elif self._on_done is not None:
            _unless_deleted(self._on_done, value)

    def _aborted(self) -> None:
        self.pbar.set_description(f"{self.desc} (cancelled)")
        if self._on_cancel is not None and not self._cancel_reported:
            self._cancel_reported = True
            _unless_deleted(self._on_cancel)

    def _finished(self) -> None:
        if self.cancelled and not self._cancel_reported:
            self._aborted()  # superqt emits neither 'returned' nor 'aborted' when the generator returned
        self.finished = True
        self.pbar.close()
        if self._on_finish is not None:
            _unless_deleted(self._on_finish)
        # napari's window keeps every worker it ever started (its task-status list, with the
        # worker's quit as the cancel callback), and with it the slots connected to the worker:
        # this job's bound methods. The callbacks are the dock's closures over a run (its frames,
        # their outcomes: 300 MB each at BraTS size), so they go once the job is over.
        self._on_done = self._on_cancel = self._on_finish = self._on_yield = self._on_oom = None


def _unless_deleted(callback: Callable, *args) -> None:
    """``callback(*args)``, except when it reaches a Qt widget that was deleted meanwhile: a job
    outlives the dock that started it when the viewer is closed while it runs (the lane finishes
    the step it is in), and its callbacks then find the dock's widgets gone. PyQt says "... has
    been deleted", PySide "... already deleted"; any other error propagates."""
    try:
        callback(*args)
    except RuntimeError as e:
        if "deleted" not in str(e):
            raise


class _Relay(QObject):
    """Carries a finished future from the worker thread to the Qt thread (queued signal)."""

    done = Signal(object)


class LatestWins:
    """Run ``func(value)`` on the torch lane at ``priority``; while one runs, newer values replace
    the pending one (latest value wins — never a queue of stale jobs). ``on_result(value, result)``
    runs on the Qt thread. ``func`` may be a generator function: the lane then runs it in steps,
    taking more urgent work (the next frame) between two steps.

    Lane tasks rather than a napari worker per call: slider updates come by the hundred, and a
    fresh pool task per update grew the resident memory (≈0.6 MB per update in the RSS
    benchmark) where the lane's one thread does not."""

    def __init__(self, func: Callable[[Any], Any], on_result: Callable[[Any, Any], None], what: str,
                 on_error: Callable[[BaseException], None] | None = None, priority: int = FRAME):
        self.func = func
        self.on_result = on_result
        self.what = what
        self.on_error = on_error
        self.priority = priority
        self._pending: Any = _NOTHING
        self._busy = False
        self._relay = _Relay()
        self._relay.done.connect(self._finished)
        self.n_started = 0
        self.n_skipped = 0

    @property
    def busy(self) -> bool:
        return self._busy

    def submit(self, value) -> None:
        if self._pending is not _NOTHING:
            self.n_skipped += 1
        self._pending = value
        if not self._busy:
            self._start()

    def _start(self) -> None:
        value, self._pending = self._pending, _NOTHING
        self._busy = True
        self.n_started += 1
        future = LANE.submit(self.func, value, priority=self.priority).future
        future.add_done_callback(lambda f: self._relay.done.emit((value, f)))

    def _finished(self, item) -> None:
        value, future = item
        self._busy = False
        exc = future.exception()
        if exc is not None:
            self._pending = _NOTHING
            if self.on_error is not None:
                self.on_error(exc)
            else:
                report_error(exc, self.what)
        else:
            self.on_result(value, future.result())
        if self._pending is not _NOTHING and not self._busy:
            self._start()

    def clear(self) -> None:
        """Drop the pending value (the running job, if any, still reports)."""
        self._pending = _NOTHING

    def shutdown(self) -> None:
        self._pending = _NOTHING
