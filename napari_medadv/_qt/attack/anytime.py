"""A running attack on screen: each frame the worker built (:class:`~napari_medadv.core.anytime.FramePacer`:
the iterate a step evaluated, with its own prediction and readouts) goes onto the result layers
one layer per event-loop turn, the Readouts dock follows (``Session.frame``), and the worker is
asked for the next frame only once this one is on screen — never a queue of frames. A cancelled
run puts the layers back as they were before its first frame."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_medadv.core.anytime import FramePacer

from ..results import iter_show_outcome, restore_results, snapshot_results
from ..session import Session, Shown

if TYPE_CHECKING:
    import napari

    from ..layers import Source
    from .jobs import JobBar


def _until(steps, stop):
    """``steps`` (a layer-update generator) until ``stop()`` is true."""
    for name in steps:
        yield name
        if stop():
            steps.close()
            return


class AnytimeDisplay:
    """The frames of one run of the Attack dock (``pacer`` goes to the worker)."""

    def __init__(self, viewer: napari.Viewer, session: Session, jobs: JobBar, source: Source, roi):
        self.viewer, self.session, self.jobs, self.source, self.roi = viewer, session, jobs, source, roi
        self.pacer = FramePacer()
        self._snapshot: dict | None = None
        self.stopped = False
        self.shown = 0  # frames that reached the screen
        self.last: Shown | None = None

    def show(self, frame) -> None:
        """A frame from the worker (Qt thread)."""
        if self.stopped or frame is None:
            return
        if self._snapshot is None:
            self._snapshot = snapshot_results(self.viewer, self.source)
        steps = iter_show_outcome(self.viewer, self.source, frame, live=True)
        self.jobs.apply_gradually(_until(steps, lambda: self.stopped), lambda: self._on_screen(frame),
                                  failed=self.pacer.want.set)  # the worker is not left waiting for it

    def _on_screen(self, frame) -> None:
        if self.stopped:
            return
        self.shown += 1
        self.last = Shown(self.source, frame, live=True, roi=self.roi)
        self.session.frame.emit(self.last)
        self.pacer.want.set()

    def finish(self) -> None:
        """The run returned: its result replaces the frames (no more frames, nothing to undo).
        The last frame and the snapshot are let go (the dock keeps its latest display: at BraTS
        size a frame's outcome is 300 MB, the snapshot the previous result's arrays)."""
        self.stopped = True
        self._snapshot = None
        self.last = None

    def cancel(self) -> None:
        """The run was cancelled or failed: the layers as they were before its first frame."""
        self.stopped = True
        self.last = None
        if self._snapshot is not None:
            restore_results(self.viewer, self._snapshot)
            self._snapshot = None
            if self.session.shown is not None:
                self.session.frame.emit(self.session.shown)  # the readouts of what is on screen again


class LiveRuns:
    """What the live controls share (:class:`.live_iter.LiveIterative`, :class:`.live_search.LiveSearch`):
    at most one running job, which a newer move stops after its current step — its frames no
    longer reach the layers, and its ``on_finish`` starts what waits."""

    _job = None
    _stop = None  # threading.Event the job checks after each step
    _display: AnytimeDisplay | None = None

    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.running

    def _stop_running(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._display is not None:
            self._display.finish()
