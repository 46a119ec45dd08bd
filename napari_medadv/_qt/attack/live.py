"""Live ε for the Attack dock: FGSM's gradient sign is computed once per (image, ground truth,
region, model) in a worker (:class:`~napari_medadv.core.live.LiveEps`); after that every
slider move is one forward pass, run latest-value-wins (:class:`~napari_medadv._qt.workers.LatestWins`),
and the readouts follow from a second such worker once the images are on screen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QCheckBox

from napari_medadv.core.live import LiveEps

from ..results import flush_deferred, show_outcome, source_ranges
from ..lane import FRAME, READOUTS, SSIM
from ..session import Session, Shown
from ..workers import Job, LatestWins, report_error
from .jobs import headline

if TYPE_CHECKING:
    import napari

    from ..layers import Source

LIVE_DEBOUNCE_MS = 10
FLUSH_MS = 400  # hidden result layers catch up once the slider rests


def prepare_live_job(source: Source, model, labels, roi):
    yield 0, 1, None
    source_ranges(source)  # here, not on the Qt thread at the first frame
    return LiveEps(source.image, model, labels=labels, roi=roi)


class LivePreview:
    """The live-ε machinery behind the dock's "live ε" check box (``toggle``).

    ``eps()`` is the slider's ε, ``key()`` the layer choices a gradient sign holds for (the model
    is added here), ``context()`` the (source, labels, roi, target) to prepare from, ``say(text)``
    the status line and ``before_show()`` runs before a frame replaces the result layers."""

    def __init__(self, viewer: napari.Viewer, session: Session, toggle: QCheckBox, parent: QObject, *,
                 eps: Callable[[], float], key: Callable[[], tuple], context: Callable[[], tuple],
                 say: Callable[[str], None], before_show: Callable[[], None],
                 applies: Callable[[], bool] = lambda: True):
        self.viewer = viewer
        self.session = session
        self.toggle = toggle
        self._eps, self._key, self._context = eps, key, context
        self._say, self._before_show = say, before_show
        self._applies = applies  # the selected attack has FGSM's fast ε path
        self._live = None  # (key, source, LiveEps)
        self._job: Job | None = None
        self._t0: dict[float, float] = {}
        self.last_latency: float | None = None  # slider move -> its images on screen, seconds
        self.last_readouts_latency: float | None = None  # slider move -> readouts (not SSIM) shown
        self.last_ssim_latency: float | None = None  # slider move -> SSIM shown

        self.debounce = QTimer(parent)
        self.debounce.setSingleShot(True)
        self.debounce.setInterval(LIVE_DEBOUNCE_MS)
        self.flush = QTimer(parent)
        self.flush.setSingleShot(True)
        self.flush.setInterval(FLUSH_MS)
        # all three on the torch lane, most urgent first: a frame, then its readouts, then SSIM
        # (filtered passes over the image) in slabs, so the next slider move never waits for it;
        # the Readouts dock shows SSIM as pending meanwhile
        self.images = LatestWins(self._compute, self._show, "live ε", on_error=self._error, priority=FRAME)
        self.metrics = LatestWins(self._metrics_compute, self._metrics_show, "live ε readouts", priority=READOUTS)
        self.ssim = LatestWins(self._ssim_compute, self._ssim_show, "live ε SSIM", priority=SSIM)

        self.toggle.toggled.connect(self._toggled)
        self.debounce.timeout.connect(self.submit)
        self.flush.timeout.connect(lambda: flush_deferred(self.viewer))

    @property
    def busy(self) -> bool:
        return bool((self._job is not None and self._job.running) or self.images.busy or self.metrics.busy
                    or self.ssim.busy)

    def eps_changed(self) -> None:
        if self.toggle.isChecked():
            self.debounce.start()

    def invalidate(self, *_) -> None:
        """The image, ground truth, region or model changed: the gradient sign is prepared again."""
        self._live = None
        self.images.clear()
        if self.toggle.isChecked():
            self.debounce.start()

    def cancel(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
        self.images.clear()
        self.metrics.clear()
        self.ssim.clear()

    def shutdown(self) -> None:
        self.images.shutdown()
        self.metrics.shutdown()
        self.ssim.shutdown()

    def _toggled(self, on: bool) -> None:
        if on:
            self.debounce.start()
        else:
            self.images.clear()

    def submit(self) -> None:
        """Debounced slider: prepare FGSM once per (image, labels, region, model), then submit ε."""
        if not self.toggle.isChecked() or self.session.model is None or not self._applies():
            return
        key = (*self._key(), id(self.session.model))
        if self._live is not None and self._live[0] == key:
            eps = self._eps()
            self._t0[eps] = time.perf_counter()
            self.images.submit((self._live[1], self._live[2], eps))
            return
        if self._job is not None and self._job.running:
            return  # preparing; the latest ε is submitted when it is ready
        try:
            src, labels, roi, _ = self._context()
            self.session.model.check_image(src.image.array, src.case, src.image.channel_names)
        except Exception as e:
            report_error(e, "live ε")
            self.toggle.setChecked(False)
            return
        self._say(f"live ε: computing the gradient sign on {src.case} (one forward + backward) …")

        def ready(live):
            self._live = (key, src, live)
            self._say(f"live ε on {src.case}: drag the slider (one forward per update)")
            self.submit()

        def failed():
            if self._live is None:
                self.toggle.setChecked(False)

        self._job = Job(prepare_live_job, src, self.session.model, labels, roi,
                        desc="live ε: gradient sign", total=1, on_done=ready, on_finish=failed).start()

    @staticmethod
    def _compute(job):
        src, live, eps = job
        return src, live, live.outcome(eps, metrics=False)

    def _show(self, job, res) -> None:
        src, live, outcome = res
        if self._live is None or self._live[2] is not live:
            return  # the inputs changed meanwhile: drop the stale frame
        self._before_show()
        show_outcome(self.viewer, src, outcome, live=True)
        self.flush.start()
        t0 = self._t0.pop(job[2], None)
        if t0 is not None:
            self.last_latency = time.perf_counter() - t0
        shown = Shown(src, outcome, live=True, roi=live.roi)
        self.session.set_shown(shown)
        self.metrics.submit((shown, live, t0))

    def _error(self, exc) -> None:
        report_error(exc, "live ε")
        self.toggle.setChecked(False)

    @staticmethod
    def _metrics_compute(job):
        shown, live, _ = job
        live.readouts(shown.outcome)  # everything but SSIM: Dice from bincounts, analytic PSNR/norms
        return shown

    def _metrics_show(self, job, shown) -> None:
        if self.session.shown is shown:
            self.session.metrics_changed.emit(shown)
            if job[2] is not None:
                self.last_readouts_latency = time.perf_counter() - job[2]
            self._say(f"live ε = {100 * shown.outcome.result.eps:.1f} % on {shown.source.case} — "
                      f"{headline(shown.outcome)}")
            self.ssim.submit(job)

    @staticmethod
    def _ssim_compute(job):
        shown, live, _ = job
        yield from live.add_ssim_steps(shown.outcome)  # the lane runs a newer frame between two slabs
        return shown

    def _ssim_show(self, job, shown) -> None:
        if self.session.shown is shown:
            self.session.metrics_changed.emit(shown)
            if job[2] is not None:
                self.last_ssim_latency = time.perf_counter() - job[2]
