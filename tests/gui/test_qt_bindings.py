"""What made the GUI differ between Qt bindings (issue 19): each test runs under whichever binding
qtpy picks (``QT_API=pyqt5|pyqt6|pyside6``); CI runs tests/gui under all three."""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.gui

WAIT = 60_000


def test_pytest_qt_uses_the_binding_napari_uses(qapp):
    """pytest-qt prefers PySide6, qtpy PyQt5: with both installed the tests ran two Qt libraries in
    one process and aborted (tests/conftest.py makes pytest-qt follow qtpy)."""
    import qtpy
    from pytestqt.qt_compat import qt_api

    assert qt_api.pytest_qt_api == qtpy.API_NAME.lower()
    assert type(qapp).__module__.split(".")[0] == qtpy.API_NAME


def test_binding_keeps_references_to_none_true_and_false(qapp):
    """PySide6 6.12.0 on Python < 3.12 drops a reference to None on every call of a method that
    returns nothing (and to True/False on each signal emit): after a few minutes of napari the
    interpreter aborts with 'deallocating None'. The ``pyside6`` extra excludes that release."""
    from qtpy.QtCore import QObject, Signal
    from qtpy.QtWidgets import QCheckBox, QComboBox

    class Relay(QObject):
        done = Signal(object)

    combo, check, relay = QComboBox(), QCheckBox(), Relay()
    combo.addItem("none", None)
    relay.done.connect(lambda value: None)
    constants = (None, True, False)
    before = [sys.getrefcount(c) for c in constants]
    for _ in range(200):
        check.setChecked(False)
        combo.currentData()
        relay.done.emit(None)
    lost = [b - sys.getrefcount(c) for b, c in zip(before, constants)]
    assert max(lost) < 50, f"the Qt binding dropped references to None/True/False: {lost}"


def test_a_failing_job_is_one_notification_under_every_binding(make_napari_viewer, qtbot, monkeypatch):
    """A job that raises reaches the user as one error notification and nothing else.

    napari's ``create_worker`` connects ``errored`` to a callable that takes no argument; under
    PySide6 every failed job then also raised TypeError in the Qt event loop (pytest-qt fails the
    test on it). Job returns the failure instead of raising it through ``errored``."""
    import napari_medadv._qt.workers as wk

    make_napari_viewer()  # napari's task status for workers is wired only with a current viewer
    messages: list[str] = []
    monkeypatch.setattr(wk, "show_error", messages.append)
    done, finished = [], []

    def failing(n):
        yield 0, n, None
        raise ValueError("the model refused the image")

    job = wk.Job(failing, 2, desc="failing job", total=2, on_done=done.append,
                 on_finish=lambda: finished.append(True)).start()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT)
    assert messages == ["failing job failed: the model refused the image"]
    assert done == [] and finished == [True]

    def returning(n):
        yield 0, n, None
        return n * 2

    job = wk.Job(returning, 3, desc="returning job", total=1, on_done=done.append).start()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT)
    assert done == [6] and len(messages) == 1
