"""DGDE's live controls (``AttackSpec.live_search``): with "live" on, moving the query-budget or
maximum-pixels slider continues the kept search (:class:`~napari_medadv.core.anytime.SearchRun`)
from its current solution — its perturbed pixels, L0 and probability shown after each new
solution (:class:`.anytime.AnytimeDisplay`, the Plots dock through ``Session.step``) — or, for a
budget or target the search already went past, shows the solution it found there (one forward, no
search). What is shown always equals a cold run with the sliders' settings and the dock's seed.
Latest value wins: a newer move stops the running search after its current solution (it stays
where it got) and continues from there. Any other change (image, model, another parameter, seed)
starts a new search.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from napari_medadv.core.anytime import FramePacer, SearchRun

from ..results import show_outcome
from ..session import Session, Shown
from ..workers import Job, report_error
from .anytime import AnytimeDisplay, LiveRuns
from .jobs import _frame_with_readouts, headline

if TYPE_CHECKING:
    import napari
    from qtpy.QtWidgets import QCheckBox

    from .jobs import JobBar


def search_job(run: SearchRun, max_queries: int, max_pixels: int | None, pacer: FramePacer | None, stop):
    """Worker generator: ``(queries, budget, (history record, frame or None))`` per new solution;
    returns the outcome a cold run with these settings gives, or None when stopped first."""
    outcome = run.outcome_at(max_queries, max_pixels)
    if outcome is not None:
        return outcome  # searched past already: one forward for its prediction
    yield 0, max_queries, None
    gen = run.steps(max_queries, max_pixels)
    try:
        for step in gen:
            record = {"step": step.step, "loss": None, **step.metrics}
            frame = None
            if pacer is not None and pacer.due():
                frame = pacer.build(lambda: _frame_with_readouts(run, step))
            yield step.step, max_queries, (record, frame)
            if stop.is_set():
                return None
    finally:
        gen.close()
    return run.outcome_at(max_queries, max_pixels)


class LiveSearch(LiveRuns):
    """The live query-budget / maximum-pixels sliders of gradient-free attacks with a kept search.

    ``attack()``, ``params()``, ``seed()``, ``key()`` and ``context()`` are the dock's, as for
    :class:`.live_iter.LiveIterative`."""

    def __init__(self, viewer: napari.Viewer, session: Session, toggle: QCheckBox, jobs: JobBar, *,
                 attack: Callable[[], str], params: Callable[[], dict], seed: Callable[[], int | None],
                 key: Callable[[], tuple], context: Callable[[], tuple], say: Callable[[str], None]):
        self.viewer, self.session, self.toggle, self.jobs = viewer, session, toggle, jobs
        self._attack, self._params, self._seed, self._key, self._context = attack, params, seed, key, context
        self._say = say
        self.run: SearchRun | None = None
        self._run_key: tuple | None = None
        self._source = None
        self._job: Job | None = None
        self._stop: threading.Event | None = None
        self._display: AnytimeDisplay | None = None
        self._pending: tuple | None = None  # (max_queries, max_pixels) waiting for the running job
        self._t0: float | None = None
        self.last_latency: float | None = None  # slider move -> first frame or the result on screen
        self.last_searched = False  # the latest move continued the search (else: a kept solution)

    def shutdown(self) -> None:
        self.cancel()


    def _live_names(self) -> tuple[str, ...]:
        from napari_medadv.core.attacks import ATTACKS

        return ATTACKS.get_spec(self._attack()).live_search

    def full_key(self) -> tuple:
        """What the search depends on: inputs, model, attack, the parameters but the live ones, seed."""
        live = self._live_names()
        params = tuple(sorted((k, repr(v)) for k, v in self._params().items() if k not in live))
        return (*self._key(), id(self.session.model), self._attack(), params, self._seed())

    def settings(self) -> tuple[int, int | None]:
        from napari_medadv.core.attacks import ATTACKS

        p = self._params()
        spec = ATTACKS.get_spec(self._attack())
        default = next(q.default for q in spec.params if q.name == "max_queries")
        return int(p.get("max_queries", default)), p.get("max_pixels")

    # ------------------------------------------------------------------ slider
    def submit(self) -> None:
        """A (debounced) move of a live control, or live switched on: latest value wins."""
        if not self.toggle.isChecked() or self.session.model is None or not self._live_names():
            return
        self._t0 = time.perf_counter()
        self._pending = self.settings()
        if self.busy:
            self._stop_running()  # it returns after its current solution; on_finish starts the next
            return
        self._start_next()

    def cancel(self) -> None:
        self._pending = None
        self._stop_running()

    def invalidate(self, *_) -> None:
        """The image, ground truth or region changed: the kept search no longer applies."""
        self.cancel()
        self.run, self._run_key = None, None


    def _search_for(self, key: tuple):
        """The kept search for ``key`` (a new one, and fresh plots, when anything changed)."""
        if self.run is not None and self._run_key == key:
            return self.run
        src, labels, roi, target = self._context()
        model = self.session.model
        model.check_image(src.image.array, src.case, src.image.channel_names)
        live = self._live_names()
        params = {k: v for k, v in self._params().items() if k not in live}
        seed = self._seed()
        self.run = SearchRun(src.image, model, self._attack(), params=params, labels=labels, target=target,
                             roi=roi, seed=0 if seed is None else seed)
        self._run_key, self._source = key, (src, roi)
        self.session.run_started.emit(self._attack())
        return self.run

    def _start_next(self) -> None:
        if self._pending is None:
            return
        max_queries, max_pixels = self._pending
        self._pending = None
        key = self.full_key()
        try:
            run = self._search_for(key)
        except Exception as e:
            report_error(e, "live DGDE")
            self.toggle.setChecked(False)
            return
        src, roi = self._source
        name = self._attack()
        self._stop = stop = threading.Event()
        self._display = display = AnytimeDisplay(self.viewer, self.session, self.jobs, src, roi)
        searched = {"any": False}

        def on_step(payload):
            if payload is None:
                searched["any"] = True
                return
            record, frame = payload
            self.session.step.emit(name, record)
            if frame is not None:
                display.show(frame)

        def on_done(outcome):
            display.finish()
            self.last_searched = searched["any"]
            if outcome is not None and run is self.run and self._pending is None:
                self._show(outcome, src, roi)

        def on_finish():
            if not display.stopped:
                display.finish()
            self._job = None
            self._start_next()

        self._job = Job(search_job, run, max_queries, max_pixels, display.pacer, stop,
                        desc=f"live {name}: {max_queries} queries", on_yield=on_step, on_done=on_done,
                        on_finish=on_finish, activity=False).start()

    def _show(self, outcome, src, roi) -> None:
        show_outcome(self.viewer, src, outcome, live=True)
        if self._t0 is not None:
            self.last_latency, self._t0 = time.perf_counter() - self._t0, None
        self.session.set_shown(Shown(src, outcome, live=True, history=list(outcome.result.history), roi=roi))
        r = self.run
        state = ("search over: nothing more can be removed" if r is not None and r.finished
                 else f"{r.search.state.queries} queries searched" if r is not None and r.search is not None else "")
        self._say(f"live {outcome.attack} on {src.case}: {outcome.params.get('max_queries')} queries"
                  f"{'' if outcome.params.get('max_pixels') is None else ', ≤ %d pixels' % outcome.params['max_pixels']}"
                  f" — {headline(outcome)} · {state}")
