"""A result goes onto the layers over a few event-loop turns (JobBar.apply_gradually): every update
runs, in order, then the continuation; an update slower than a turn's budget gets a turn of its
own, so the event loop is handed back between slow updates; a failing update reports and calls
``failed`` instead (the live worker waiting for the frame is released)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.gui


def _steps(log, n, sleep=0.0, fail_at=None):
    for i in range(n):
        if sleep:
            time.sleep(sleep)
        if i == fail_at:
            raise RuntimeError("layer removed meanwhile")
        log.append(i)
        yield f"layer {i}"


def test_all_updates_run_in_order_then_the_continuation(qtbot):
    from napari_medadv._qt.attack.jobs import TURN_BUDGET_S, JobBar

    bar = JobBar()
    log, done = [], []
    bar.apply_gradually(_steps(log, 4, sleep=TURN_BUDGET_S + 0.01), lambda: done.append(list(log)))
    assert log == [0] and bar.applying  # a slow update: the loop is handed back after it
    qtbot.waitUntil(lambda: bool(done), timeout=5000)
    assert done == [[0, 1, 2, 3]] and not bar.applying


def test_a_failing_update_calls_failed_not_then(qtbot, monkeypatch):
    from napari_medadv._qt.attack import jobs

    errors = []
    monkeypatch.setattr(jobs, "report_error", lambda e, what: errors.append((str(e), what)))
    bar = jobs.JobBar()
    log, done, failed = [], [], []
    bar.apply_gradually(_steps(log, 4, fail_at=2), lambda: done.append(1), failed=lambda: failed.append(1))
    qtbot.waitUntil(lambda: bool(failed), timeout=5000)
    assert log == [0, 1] and not done and errors == [("layer removed meanwhile", "showing the result")]
    assert not bar.applying
