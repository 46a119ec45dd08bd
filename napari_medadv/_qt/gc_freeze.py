"""Shorter event-loop stalls from Python's garbage collector: what exists when the viewer is set
up is frozen out of the full collections, until something of it may become garbage.

Why. With napari, Qt and PyTorch imported a viewer holds about 600 000 objects the cyclic
garbage collector tracks. A full collection walks them all: 390-450 ms on the Qt thread, and
adding a run's result layers (many new objects) triggers one in the middle of a dock run,
the longest stall of the first run at BraTS size (``benchmarks/bench_gui.py --case brats-size
--only stall``: 646 ms, 317 ms with the freeze). ``gc.freeze()`` moves every tracked object to a
generation the collector never walks; the collections that follow look at new objects only.

The price. A frozen object that becomes garbage in a reference cycle is not freed: napari's
layers are such objects (a removed layer is freed by the cycle collector only). So the freeze is
undone as soon as anything frozen may die: a layer removed, the model replaced, the viewer
closed; only the next viewer set up freezes again. Layers and results made after the freeze are
never frozen.
"""

from __future__ import annotations

import gc
import itertools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari

_state = {"armed": 0, "frozen": False, "model_frozen": False}  # armed: the arming viewer's token (0: none)
_tokens = itertools.count(1)


def is_frozen() -> bool:
    return _state["frozen"]


def freeze_when_set_up(viewer: napari.Viewer, session: Any) -> None:  # session: the viewer's Session
    """At the next event-loop turn (the docks are built by then), collect once and freeze what
    is left; a removed layer, a replaced model or the viewer's window closing unfreezes (see the
    module's note). Once until then: later calls (other docks, other viewers) do nothing.

    The viewer's callbacks carry its token: a closed viewer whose window is destroyed late (its
    deletion waits for the event loop) must not undo the freeze of the viewer set up after it."""
    from qtpy.QtCore import QTimer

    if _state["armed"]:
        return
    token = _state["armed"] = next(_tokens)

    def freeze() -> None:
        if _state["armed"] != token or _state["frozen"] or gc.get_freeze_count() or not gc.isenabled():
            return  # disarmed meanwhile, or someone else manages the collector: leave it be
        gc.collect()
        gc.freeze()
        _state["frozen"] = True
        _state["model_frozen"] = session.model is not None or session.transfer_model is not None

    def mine(*_) -> None:
        if _state["armed"] == token:
            unfreeze()

    def model_changed(*_) -> None:
        if _state["model_frozen"]:
            mine()

    viewer.layers.events.removed.connect(mine)
    session.model_changed.connect(model_changed)
    session.transfer_model_changed.connect(model_changed)
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)  # napari's QMainWindow
    if window is not None:
        window.destroyed.connect(mine)
    QTimer.singleShot(0, freeze)


def unfreeze(*_) -> None:
    """Back to ordinary collections (the frozen objects are walked, and freed, again); the next
    viewer set up may freeze again."""
    if _state["frozen"]:
        gc.unfreeze()
        _state["frozen"] = False
    _state["armed"] = 0
    _state["model_frozen"] = False
