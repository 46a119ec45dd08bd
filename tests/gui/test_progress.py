"""The docks' progress bar is drawn with the window's next paint: QProgressBar.setValue repaints at
once, and in a napari window every repaint recomposes the whole window through OpenGL."""

from napari_medadv._qt.progress import ProgressBar


class _Counting(ProgressBar):
    paints = 0

    def paintEvent(self, event):  # noqa: N802
        type(self).paints += 1
        super().paintEvent(event)


def test_set_value_schedules_the_paint_instead_of_painting(qtbot):
    bar = _Counting()
    qtbot.addWidget(bar)
    bar.setRange(0, 10)
    bar.show()
    qtbot.waitExposed(bar)
    qtbot.wait(50)
    seen = []
    bar.valueChanged.connect(seen.append)
    before = _Counting.paints
    bar.setValue(7)
    assert _Counting.paints == before  # a plain QProgressBar has painted here already
    assert bar.value() == 7 and seen == [7] and bar.text() == "70%" and bar.updatesEnabled()
    qtbot.waitUntil(lambda: _Counting.paints > before, timeout=2000)  # then drawn by the event loop
    bar.setUpdatesEnabled(False)  # a caller's own choice survives
    bar.setValue(8)
    assert not bar.updatesEnabled() and bar.value() == 8
