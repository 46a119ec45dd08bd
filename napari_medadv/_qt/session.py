"""State the docks of one viewer share (the loaded models, the last result), with psygnal signals.

No Qt widgets here: the docks connect to these signals; everything is emitted from the main thread
(worker results arrive there through napari's worker signals).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psygnal import Signal

from .gc_freeze import freeze_when_set_up
from .results import forget_deferred, is_artifact
from .workers import Job

if TYPE_CHECKING:
    import napari

    from napari_medadv.core.models.base import LoadedModel
    from napari_medadv.core.outcome import AttackOutcome

    from .layers import Source


@dataclass
class Shown:
    """The result currently on screen for a source: what the readouts and exports use."""

    source: Source
    outcome: AttackOutcome
    live: bool = False
    transfer: AttackOutcome | None = None  # the same adversarial image evaluated on model B
    history: list[dict] = field(default_factory=list)
    roi: Any = "auto"  # the region the run used (mask, "auto" or None): a matched artifact reuses it


@dataclass(frozen=True)
class Choices:
    """What the Attack dock has selected, as layer names (the other docks read it from here).

    ``roi``: a layer name, ``"auto"`` (the image's non-zero support) or None (everywhere);
    ``target``: the target combo's value (``"value:1"``, ``"mask:LAYER"``, ``"class:NAME"``) or None.
    """

    image: str | None = None
    labels: str | None = None
    roi: str | None = "auto"
    target: str | None = None


class Session:
    """One per viewer: ``Session.of(viewer)``. The docks talk through it, never to each other."""

    model_changed = Signal(object)  # LoadedModel | None
    transfer_model_changed = Signal(object)  # LoadedModel | None (model B, evaluation only)
    result_changed = Signal(object)  # Shown
    metrics_changed = Signal(object)  # Shown (metrics filled in after the images, in live mode)
    step = Signal(str, object)  # attack name, history record (one per iteration, live plots)
    run_started = Signal(str)  # attack name
    frame = Signal(object)  # Shown: a running attack's current iterate on the layers (readouts filled)
    sweep_changed = Signal(object)  # dict: eps list + per-ε rows
    matched_changed = Signal(object)  # Matched | None (an MR artifact at the attack's image quality)
    choices_changed = Signal(object)  # Choices (image, ground truth, region, target picked in the Attack dock)
    device_changed = Signal(str)  # the models were moved to this device (e.g. 'cpu' after a GPU OOM)

    _sessions: dict[int, Session] = {}

    def __init__(self, viewer: napari.Viewer):
        self._viewer = weakref.ref(viewer)
        self.model: LoadedModel | None = None
        self.transfer_model: LoadedModel | None = None
        self.shown: Shown | None = None
        self.last_attack: Shown | None = None  # the latest *attack* result (not an MR artifact)
        self.matched = None  # napari_medadv._qt.matched.Matched | None
        self._move_job = None  # a running device move (move_models)
        self.sweep: dict | None = None
        self.choices = Choices()

    @classmethod
    def of(cls, viewer: napari.Viewer) -> Session:
        key = id(viewer)
        s = cls._sessions.get(key)
        if s is None or s.viewer is not viewer:
            s = cls(viewer)
            cls._sessions[key] = s
            weakref.finalize(viewer, cls._sessions.pop, key, None)
            weakref.finalize(viewer, forget_deferred, key)
            window = getattr(getattr(viewer, "window", None), "_qt_window", None)
            if window is not None:  # hidden layers' pending live data (35 MB a BraTS channel) goes with it
                window.destroyed.connect(functools.partial(forget_deferred, key))
            freeze_when_set_up(viewer, s)  # shorter full garbage collections (see gc_freeze)
        return s

    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer()

    def set_model(self, model: LoadedModel | None) -> None:
        self.model = model
        self.model_changed.emit(model)

    def set_choices(self, choices: Choices) -> None:
        if choices != self.choices:
            self.choices = choices
            self.choices_changed.emit(choices)

    def move_models(self, device: str, then: Callable[[], None] | None = None) -> None:
        """Move model A and model B to ``device`` (e.g. 'cpu' after a GPU out-of-memory error), then
        announce it (``device_changed``) and call ``then``. The move runs on the torch lane, as one
        task between the others: never while a live frame or a run uses the model, and a large
        model's copy does not hold the Qt thread (nor start an OpenMP team there)."""
        todo = [(m, setter) for m, setter in ((self.model, self.set_model),
                                              (self.transfer_model, self.set_transfer_model))
                if m is not None and str(m.device) != device and m.device.type != device]

        def moved(_=None) -> None:
            for model, setter in todo:
                setter(model)
            self.device_changed.emit(device)
            if then is not None:
                then()

        if not todo:
            moved()
            return
        # kept: the worker's signals reach the Job's bound methods only while it lives
        self._move_job = Job(_move, [m for m, _ in todo], device, desc=f"moving the model to {device}",
                             on_done=moved).start()

    def set_transfer_model(self, model: LoadedModel | None) -> None:
        self.transfer_model = model
        self.transfer_model_changed.emit(model)

    def set_shown(self, shown: Shown) -> None:
        self.shown = shown
        if not is_artifact(shown.outcome.attack):
            self.last_attack = shown
            if self.matched is not None and self.matched.attack.source.case == shown.source.case:
                self.set_matched(None)  # the attack changed: the match no longer holds
        self.result_changed.emit(shown)

    def set_matched(self, matched) -> None:
        self.matched = matched
        self.matched_changed.emit(matched)


def _move(models: list, device: str) -> None:
    for model in models:
        model.to(device)
    if device == "cpu":
        try:
            import torch

            torch.cuda.empty_cache()
        except (ImportError, RuntimeError):
            pass
