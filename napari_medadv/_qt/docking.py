"""Our docks share one tab stack when they are opened one by one.

napari's Plugins menu adds each dock widget to the right-hand area *below* the docks already there
(``Window.add_dock_widget`` without ``tabify``). Our docks are tall forms: four of them stacked
make the window taller than a laptop screen (measured: 1613 px of canvas height asked for with
Model, Attack, Readouts and Plots opened in turn). So each of our docks, when first shown, joins
the tab stack of another of our docks in the same area; napari's own docks and other plugins'
are left where they are. ``medadv demo`` arranges its docks itself (:func:`placed`).
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

#: a widget property: the caller placed this dock itself (no automatic tabbing)
PLACED = "medadv_placed"

_OURS: weakref.WeakSet[QWidget] = weakref.WeakSet()


def scrolling(owner: QWidget, form: QWidget) -> QScrollArea:
    """``form`` in a vertical scroll area that fills ``owner`` (a dock's widget): the dock's minimum
    height is then the scroll area's, not the form's, so our docks, stacked or tabbed on the right,
    do not make the window taller than a laptop screen (``medadv demo`` on a 1366×768 screen asked
    for 967 px: the Plots and Model forms are 445 and 388 px tall at least). The scroll area is as
    wide as the form needs: never clipped sideways, no horizontal bar."""
    scroll = QScrollArea()
    scroll.setWidget(form)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    fit_width(scroll)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    owner.installEventFilter(_FitOnShow(scroll, owner))  # styled by napari once docked: measure again
    return scroll


def fit_width(scroll: QScrollArea) -> None:
    """The scroll area as wide as its form needs, with room for the vertical bar."""
    scroll.setMinimumWidth(scroll.widget().minimumSizeHint().width()
                           + scroll.verticalScrollBar().sizeHint().width() + 4)


class _FitOnShow(QObject):
    def __init__(self, scroll: QScrollArea, parent: QObject):
        super().__init__(parent)
        self.scroll = scroll

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Show:
            fit_width(self.scroll)
        return False


def placed(widget: QWidget) -> QWidget:
    """Mark ``widget`` as arranged by its caller (before adding it as a dock)."""
    widget.setProperty(PLACED, True)
    return widget


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock widget holding ``widget``, if any."""
    w = widget.parentWidget()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def tab_with_ours(widget: QWidget) -> bool:
    """Put ``widget``'s dock into the tab stack of another of our visible docks in the same area of
    the same window, in front; False when there is none (or the dock floats or was placed)."""
    try:
        if widget.property(PLACED):
            return False
        dock = dock_of(widget)
        if dock is None or dock.isFloating():
            return False
        win = dock.parentWidget()
        if not isinstance(win, QMainWindow):
            return False
        area = win.dockWidgetArea(dock)
    except RuntimeError:  # deleted meanwhile (a closed viewer)
        return False
    for other in list(_OURS):
        try:
            od = None if other is widget else dock_of(other)
            if (od is None or od is dock or od.parentWidget() is not win or od.isFloating()
                    or not od.isVisible() or win.dockWidgetArea(od) != area):
                continue
        except RuntimeError:  # another viewer's widget, deleted with its window
            continue
        win.tabifyDockWidget(od, dock)
        dock.show()
        dock.raise_()
        return True
    return False


class _FirstShow(QObject):
    """Tabs its widget at the widget's first show: the dock is in the window by then. napari has
    already laid out the docks stacked (the window grows to fit them), so the window then gets
    back the height it had when the widget was made. A dock not yet in a window is tried once
    more after the event loop's turn."""

    def __init__(self, widget: QWidget, height: int | None):
        super().__init__(widget)
        self.height = height

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Show:
            obj.removeEventFilter(self)
            dock = dock_of(obj)
            if dock is not None and isinstance(dock.parentWidget(), QMainWindow):
                self._tab(obj)
            else:
                ref = weakref.ref(obj)
                QTimer.singleShot(0, lambda: (w := ref()) is not None and self._tab(w))
        return False

    def _tab(self, widget: QWidget) -> None:
        if not tab_with_ours(widget) or self.height is None:
            return
        window = dock_of(widget).parentWidget()
        win, height = weakref.ref(window), self.height
        _PENDING[window] = height  # a dock made before this runs returns to this height, not the grown one
        # after the event loop's turn: the window's minimum size is that of the tabbed layout then
        QTimer.singleShot(0, lambda: _shrink(win(), height))


#: window -> the height a scheduled shrink returns it to
_PENDING: weakref.WeakKeyDictionary[QWidget, int] = weakref.WeakKeyDictionary()


def _shrink(win: QWidget | None, height: int) -> None:
    try:
        if win is None:
            return
        if _PENDING.get(win) == height:
            del _PENDING[win]
        if win.height() > height and not (win.isMaximized() or win.isFullScreen()):
            win.resize(win.width(), height)  # Qt keeps it at least the new minimum
    except RuntimeError:  # deleted meanwhile
        pass


def tab_on_first_show(widget: QWidget, viewer=None) -> None:
    """Register ``widget`` as one of our docks: on its first show it joins the others' tabs, and
    ``viewer``'s window keeps the height it has now."""
    _OURS.add(widget)
    win = getattr(getattr(viewer, "window", None), "_qt_window", None)
    height = _PENDING.get(win, win.height()) if isinstance(win, QWidget) else None
    widget.installEventFilter(_FirstShow(widget, height))
